"""Which spanmetrics naming a source holds, detected from its metric names, never assumed.

Four namings are in use, and any exporter namespace may stand in front of them:

- the old spanmetrics processor: `calls_total` with the span name in `operation`,
  `latency_bucket/_sum/_count` in milliseconds;
- the spanmetrics connector without a namespace: `calls_total` (or `calls` without
  metric suffixes) and `duration_{milliseconds,seconds}_bucket` (or `duration_bucket`,
  in the connector's default milliseconds), span name in `span_name`;
- the connector with its `traces.span.metrics` namespace:
  `traces_span_metrics_calls_total`, `traces_span_metrics_duration_{milliseconds,seconds}_*`;
- this project's: the same behind the `llm` exporter namespace,
  `llm_traces_span_metrics_calls_total` and `..._duration_seconds_*`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from proveai_agent.watch.promql import MetricsSource

logger = logging.getLogger(__name__)

OURS = "llm_traces_span_metrics_"
NAMESPACE = "traces_span_metrics_"
NAMES_SELECTOR = (
    '{__name__=~".*(calls|calls_total|latency_bucket|duration_bucket'
    '|duration_milliseconds_bucket|duration_seconds_bucket)"}'
)
_CALLS = re.compile(r"((?:[a-zA-Z_:][a-zA-Z0-9_:]*_)?)(calls_total|calls)")
_HISTOGRAMS = (
    ("duration_seconds", 1.0, "connector"),
    ("duration_milliseconds", 0.001, "connector"),
    ("duration", 0.001, "connector"),
    ("latency", 0.001, "processor"),
)


@dataclass(frozen=True, slots=True)
class Scheme:
    """The names and units of one spanmetrics naming, as found in a source.

    Args:
        prefix: what stands before `calls_total`, e.g. "llm_traces_span_metrics_" or "".
        calls: the calls counter's name.
        duration: the histogram's base name (without _bucket), or None without one.
        span_label: the label that holds the span name ("span_name" or "operation").
        to_seconds: the factor from the histogram's unit to seconds.
        origin: "connector" or "processor", the collector component that made it.
    """

    prefix: str
    calls: str
    duration: str | None
    span_label: str
    to_seconds: float
    origin: str
    service_label: str = "service_name"
    status_label: str = "status_code"
    error_status: str = "STATUS_CODE_ERROR"

    @property
    def name(self) -> str:
        """How the overview names it: the prefix without its last underscore, e.g.
        "llm_traces_span_metrics", or the calls counter's name when there is no prefix."""
        return self.prefix.rstrip("_") or self.calls

    @property
    def duration_bucket(self) -> str | None:
        return f"{self.duration}_bucket" if self.duration else None

    @property
    def duration_sum(self) -> str | None:
        return f"{self.duration}_sum" if self.duration else None

    @property
    def duration_count(self) -> str | None:
        return f"{self.duration}_count" if self.duration else None

    def errors(self, selector: str = "") -> str:
        """The calls counter restricted to error spans, with optional extra matchers."""
        extra = f",{selector}" if selector else ""
        return f'{self.calls}{{{self.status_label}="{self.error_status}"{extra}}}'


def _rank(scheme: Scheme) -> tuple[int, int, str]:
    if scheme.prefix == OURS:
        family = 0
    elif scheme.prefix.endswith(NAMESPACE):
        family = 1
    elif scheme.origin == "connector":
        family = 2
    else:
        family = 3
    return (family, 0 if scheme.duration else 1, scheme.prefix)


def scheme_from_names(names: Iterable[str]) -> Scheme | None:
    """The preferred spanmetrics naming among these metric names, or None if none is there.

    A `calls` counter counts only with a duration histogram of the same prefix next to
    it, or under a `traces_span_metrics_` prefix, so that an unrelated `*_calls_total`
    is not taken for span metrics.
    """
    present = set(names)
    found: dict[str, Scheme] = {}
    for name in sorted(present):
        match = _CALLS.fullmatch(name)
        if match is None:
            continue
        prefix = match.group(1)
        if prefix in found and found[prefix].calls.endswith("calls_total"):
            continue
        scheme = _with_histogram(prefix, name, present)
        if scheme is not None:
            found[prefix] = scheme
    if not found:
        return None
    chosen = min(found.values(), key=_rank)
    if len(found) > 1:
        others = sorted(s.name for s in found.values() if s is not chosen)
        logger.debug("spanmetrics %s chosen over %s", chosen.name, ", ".join(others))
    return chosen


def _with_histogram(prefix: str, calls: str, present: set[str]) -> Scheme | None:
    for base, to_seconds, origin in _HISTOGRAMS:
        if f"{prefix}{base}_bucket" in present:
            label = "operation" if origin == "processor" else "span_name"
            return Scheme(prefix, calls, f"{prefix}{base}", label, to_seconds, origin)
    if prefix.endswith(NAMESPACE):
        return Scheme(prefix, calls, None, "span_name", 1.0, "connector")
    return None


async def detect(source: MetricsSource, now: float, lookback_s: float = 3600) -> Scheme | None:
    """The spanmetrics naming present in `source` between `now - lookback_s` and `now`.

    One request (the label values of `__name__`, restricted to candidate names).

    Raises:
        SourceError: when the source does not answer.
    """
    names = await source.metric_names(NAMES_SELECTOR, now - lookback_s, now)
    return scheme_from_names(names)
