"""Capped counter and histogram families that hide a new series' first value for one scrape.

Prometheus (and VictoriaMetrics fed by its remote_write) cannot see the increase that a
counter's first sample already holds. So a new series is exposed as zero until a scrape by
a scraper (Prometheus, vmagent) has seen it — or until `hold_s` passed, when none scrapes —
and only then with its real value. A person reading /metrics with curl uses up nothing.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

logger = logging.getLogger(__name__)

OVERFLOW = "__overflow__"
SCRAPER_AGENTS = ("Prometheus/", "vm_promscrape", "vmagent", "VictoriaMetrics")


class _Clock:
    """Counts scrapes so that series know whether a zero of theirs was exposed."""

    def __init__(self) -> None:
        self.scrapes = 0


class Family:
    """Common part of a capped metric family keyed by a tuple of label values."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        clock: _Clock,
        cap: int,
        hold_s: float,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.cap = cap
        self.hold_s = hold_s
        self.overflowed = 0
        self._clock = clock
        self._overflow_key = tuple(OVERFLOW for _ in self.labelnames)
        # key -> [scrape number when created, creation time, hidden?]
        self._born: dict[tuple[str, ...], list[float]] = {}

    def _admit(self, key: tuple[str, ...]) -> tuple[str, ...]:
        if key in self._born:
            return key
        if len(self._born) >= self.cap and key != self._overflow_key:
            self.overflowed += 1
            if self.overflowed == 1:
                logger.warning(
                    "%s reached its cap of %d label sets; further ones count as %s",
                    self.name,
                    self.cap,
                    OVERFLOW,
                )
            key = self._overflow_key
            if key in self._born:
                return key
        self._born[key] = [self._clock.scrapes, time.monotonic()]
        self._create(key)
        return key

    def _create(self, key: tuple[str, ...]) -> None:
        raise NotImplementedError

    def collect(self, scrape: int, now: float) -> Metric:
        raise NotImplementedError

    def _visible(self, key: tuple[str, ...], scrape: int, now: float) -> bool:
        born = self._born[key]
        if born[0] < 0:
            return True
        if scrape > born[0] + 1 or now - born[1] >= self.hold_s:
            born[0] = -1
            return True
        return False

    def __len__(self) -> int:
        return len(self._born)


class CounterFamily(Family):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._values: dict[tuple[str, ...], float] = {}

    def _create(self, key: tuple[str, ...]) -> None:
        self._values[key] = 0.0

    def ensure(self, key: tuple[str, ...]) -> None:
        """Create the series at zero without counting anything."""
        self._admit(key)

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        key = self._admit(key)
        self._values[key] += amount

    def value(self, key: tuple[str, ...]) -> float | None:
        return self._values.get(key)

    def collect(self, scrape: int, now: float) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, value in self._values.items():
            family.add_metric(key, value if self._visible(key, scrape, now) else 0.0)
        return family


class HistogramFamily(Family):
    def __init__(self, *args: object, buckets: Sequence[float], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.buckets = tuple(float(b) for b in buckets if not math.isinf(b))
        # key -> [count per bucket (last is +Inf), sum]
        self._values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def _create(self, key: tuple[str, ...]) -> None:
        self._values[key] = ([0] * (len(self.buckets) + 1), [0.0])

    def observe(self, key: tuple[str, ...], value: float) -> None:
        key = self._admit(key)
        counts, total = self._values[key]
        counts[bisect_left(self.buckets, value)] += 1
        total[0] += value

    def observe_all(self, key: tuple[str, ...], values: Sequence[float]) -> None:
        """Observe each of `values` for one label set, in order."""
        key = self._admit(key)
        counts, total = self._values[key]
        buckets = self.buckets
        running = total[0]
        for value in values:
            counts[bisect_left(buckets, value)] += 1
            running += value
        total[0] = running

    def count(self, key: tuple[str, ...]) -> int | None:
        entry = self._values.get(key)
        return sum(entry[0]) if entry else None

    def collect(self, scrape: int, now: float) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [_bound(b) for b in self.buckets] + ["+Inf"]
        for key, (counts, total) in self._values.items():
            visible = self._visible(key, scrape, now)
            running = 0
            cumulative = []
            for bound, n in zip(bounds, counts, strict=True):
                running += n if visible else 0
                cumulative.append((bound, running))
            family.add_metric(key, cumulative, total[0] if visible else 0.0)
        return family


def _bound(value: float) -> str:
    return repr(value) if not value.is_integer() else f"{value:.1f}"


class Registry:
    """The families of one exposition, collected together on each scrape."""

    def __init__(self, cap: int, hold_s: float) -> None:
        self.cap = cap
        self.hold_s = hold_s
        self._clock = _Clock()
        self._families: list[Family] = []
        self._next_is_scrape = True

    def counter(
        self, name: str, documentation: str, labelnames: Sequence[str]
    ) -> CounterFamily:
        family = CounterFamily(
            name, documentation, labelnames, self._clock, self.cap, self.hold_s
        )
        self._families.append(family)
        return family

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> HistogramFamily:
        family = HistogramFamily(
            name, documentation, labelnames, self._clock, self.cap, self.hold_s, buckets=buckets
        )
        self._families.append(family)
        return family

    def scraped_by(self, user_agent: str) -> None:
        """Say who reads the next exposition: only a scraper's read moves hidden series on."""
        self._next_is_scrape = user_agent.startswith(SCRAPER_AGENTS)

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector protocol: one scrape of every family."""
        if self._next_is_scrape:
            self._clock.scrapes += 1
        self._next_is_scrape = True
        scrape = self._clock.scrapes
        now = time.monotonic()
        for family in self._families:
            yield family.collect(scrape, now)
        overflow = CounterMetricFamily(
            "proveai_series_overflow",
            "Label sets that went to the overflow series because a family reached its cap",
            labels=("metric",),
        )
        for family in self._families:
            overflow.add_metric((family.name,), float(family.overflowed))
        yield overflow
