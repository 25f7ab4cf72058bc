"""Metric detectors: error-rate spikes and latency regressions per service and span name.

Each detector compares the current window (the last `window_s` before `now`) with a
robust baseline: the same statistic over the `baseline_s` that end where the current
window starts, one point every `baseline_step_s`, summarised by its median and its
median absolute deviation (MAD). With σ = 1.4826 × MAD (the MAD scaled to a standard deviation):

- error spike: the error ratio (error calls / calls) fires above
  max(error_ratio_min, median + error_mad_k × σ), and only with at least
  `error_min_errors` failed calls in the window: one failure among a dozen calls is a
  ratio above any threshold, not a spike;
- latency regression: p95 (from the histogram buckets) or mean latency (from _sum and
  _count) fires above max(latency_factor × median, median + latency_mad_k × σ). The mean
  catches requests slower than the top bucket, where p95 is stuck at the top finite bound.
  p95 alone fires only when the mean rose at least `latency_tail_mean_factor` times too:
  inside coarse buckets p95 jumps when the share of calls above a bucket edge crosses 5 %.
  Either fires only when the distribution moved, not a few outliers: at some bucket bound,
  the share of the window's calls at or below it must lie below the baseline period's by
  at least max(`latency_min_shift`, `latency_shift_k` × √(p(1−p)(1/n + 1/m))), p the
  share over both periods, n and m their calls (the second term is `latency_shift_k`
  standard errors of the difference of two shares: what chance reaches with samples that
  small), and by at least `latency_min_slow_calls` calls. One timeout among a hundred
  fast calls moves the mean; it hardly moves the distribution.

Nothing fires with fewer than `min_calls` calls or less than `min_rps` in the current
window, or with fewer than `min_baseline_points` baseline windows that had that much
traffic. Severity grows with current / threshold.

A signal's evidence: statistic, current, baseline_median, baseline_mad, baseline_points,
threshold, ratio_to_threshold, window_s, baseline_s, baseline_start/_end, traffic (calls,
rps, and errors), `query` (the current value for this service and span alone, to verify a
fix with) and `queries` (the exact PromQL that was run); a latency signal adds
`statistics`, the same numbers for both p95 and the mean.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from proveai_agent.config import DetectorConfig
from proveai_agent.signals import Signal
from proveai_agent.watch.promql import Labels, MetricsSource, matrix, quote, vector
from proveai_agent.watch.schemes import Scheme

TRIGGER = "anomaly_detection"
MAD_TO_SIGMA = 1.4826
SEVERITIES = ((4.0, "critical"), (2.0, "high"), (1.3, "medium"))


@dataclass(slots=True)
class Baseline:
    """The baseline of one statistic: its points' median and MAD."""

    median: float
    mad: float
    points: int

    @property
    def sigma(self) -> float:
        return MAD_TO_SIGMA * self.mad


def robust_baseline(values: list[float]) -> Baseline:
    """Median and median absolute deviation of the baseline points."""
    data = np.asarray(values, dtype=float)
    median = float(np.median(data))
    mad = float(np.median(np.abs(data - median)))
    return Baseline(median, mad, int(data.size))


def severity(ratio: float) -> str:
    """critical, high, medium or low from current / threshold (above 1 when firing)."""
    for floor, name in SEVERITIES:
        if ratio >= floor:
            return name
    return "low"


@dataclass(slots=True)
class _Queries:
    """The PromQL one evaluation runs, all grouped by service and span name."""

    calls: str
    errors: str
    calls_rate: str
    errors_rate: str
    p95: str | None
    mean: str | None
    buckets: str | None
    base_buckets: str | None

    @classmethod
    def build(cls, scheme: Scheme, window_s: int, baseline_s: int) -> _Queries:
        by = f"{scheme.service_label}, {scheme.span_label}"
        w = f"{window_s}s"
        p95 = mean = buckets = base_buckets = None
        if scheme.duration:
            buckets = f"sum by ({by}, le) (increase({scheme.duration_bucket}[{w}]))"
            span_s = max(window_s, baseline_s - window_s)
            base_buckets = (
                f"sum by ({by}, le) (increase({scheme.duration_bucket}[{span_s}s] offset {w}))"
            )
            p95 = (
                f"histogram_quantile(0.95, sum by ({by}, le) "
                f"(rate({scheme.duration_bucket}[{w}])))"
            )
            mean = (
                f"sum by ({by}) (rate({scheme.duration_sum}[{w}])) "
                f"/ sum by ({by}) (rate({scheme.duration_count}[{w}]))"
            )
        return cls(
            calls=f"sum by ({by}) (increase({scheme.calls}[{w}]))",
            errors=f"sum by ({by}) (increase({scheme.errors()}[{w}]))",
            calls_rate=f"sum by ({by}) (rate({scheme.calls}[{w}]))",
            errors_rate=f"sum by ({by}) (rate({scheme.errors()}[{w}]))",
            p95=p95,
            mean=mean,
            buckets=buckets,
            base_buckets=base_buckets,
        )


@dataclass(slots=True)
class _Data:
    """What the source answered: current values per key, baseline points per key."""

    calls: dict[Labels, float | None]
    errors: dict[Labels, float | None]
    p95: dict[Labels, float | None]
    mean: dict[Labels, float | None]
    base_rate: dict[Labels, list[tuple[float, float]]]
    base_errors: dict[Labels, list[tuple[float, float]]]
    base_p95: dict[Labels, list[tuple[float, float]]]
    base_mean: dict[Labels, list[tuple[float, float]]]
    buckets: dict[Labels, list[tuple[float, float]]]
    """Per key, (upper bound in the scheme's unit, cumulative count) in the window."""
    base_buckets: dict[Labels, list[tuple[float, float]]]
    """The same over the whole baseline period."""


async def _fetch(
    source: MetricsSource, scheme: Scheme, q: _Queries, now: float, config: DetectorConfig
) -> _Data:
    labels = (scheme.service_label, scheme.span_label)
    start, end = now - config.baseline_s, now - config.window_s

    async def instant(promql: str | None) -> dict[Labels, float | None]:
        return vector(await source.query(promql, now), labels) if promql else {}

    async def ranged(promql: str | None) -> dict[Labels, list[tuple[float, float]]]:
        if not promql:
            return {}
        return matrix(
            await source.query_range(promql, start, end, config.baseline_step_s), labels
        )

    async def buckets(promql: str | None) -> dict[Labels, list[tuple[float, float]]]:
        found: dict[Labels, list[tuple[float, float]]] = {}
        if not promql:
            return found
        rows = vector(await source.query(promql, now), (*labels, "le"))
        for (service, span, le), count in rows.items():
            try:
                bound = float(le)
            except ValueError:
                continue
            found.setdefault((service, span), []).append((bound, count or 0.0))
        for rows_of_key in found.values():
            rows_of_key.sort()
        return found

    calls, errors, p95, mean, counts, base_counts = await asyncio.gather(
        instant(q.calls),
        instant(q.errors),
        instant(q.p95),
        instant(q.mean),
        buckets(q.buckets),
        buckets(q.base_buckets),
    )
    base_rate, base_errors, base_p95, base_mean = await asyncio.gather(
        ranged(q.calls_rate), ranged(q.errors_rate), ranged(q.p95), ranged(q.mean)
    )
    return _Data(
        calls,
        errors,
        p95,
        mean,
        base_rate,
        base_errors,
        base_p95,
        base_mean,
        counts,
        base_counts,
    )


async def evaluate(
    source: MetricsSource, scheme: Scheme, now: float, config: DetectorConfig
) -> list[Signal]:
    """Run the metric detectors once, as of `now` (the detector's clock, epoch seconds).

    Raises:
        SourceError: when the source does not answer; `source.error` says so too.
    """
    q = _Queries.build(scheme, config.window_s, config.baseline_s)
    data = await _fetch(source, scheme, q, now, config)
    signals: list[Signal] = []
    for key in sorted(data.calls):
        calls = data.calls[key] or 0.0
        rps = calls / config.window_s
        if calls < config.min_calls or rps < config.min_rps:
            continue
        busy = _busy_times(data.base_rate.get(key, []), config)
        context = _Context(source, scheme, q, now, config, key, calls, rps)
        errors = data.errors.get(key) or 0.0
        signal = _error_spike(context, errors, busy, data.base_errors.get(key, []))
        if signal is not None:
            signals.append(signal)
        signal = _latency_regression(context, data, busy)
        if signal is not None:
            signals.append(signal)
    return signals


def _busy_times(rates: list[tuple[float, float]], config: DetectorConfig) -> dict[float, float]:
    """Baseline windows with enough traffic to count, as timestamp → calls per second."""
    return {
        ts: rate
        for ts, rate in rates
        if rate >= config.min_rps and rate * config.window_s >= config.min_calls
    }


@dataclass(slots=True)
class _Context:
    source: MetricsSource
    scheme: Scheme
    queries: _Queries
    now: float
    config: DetectorConfig
    key: Labels
    calls: float
    rps: float

    def matchers(self) -> str:
        service, span = self.key
        return (
            f"{self.scheme.service_label}={quote(service)},"
            f"{self.scheme.span_label}={quote(span)}"
        )

    def evidence(
        self, statistic: str, current: float, base: Baseline, threshold: float
    ) -> dict[str, Any]:
        return {
            "statistic": statistic,
            "current": current,
            "baseline_median": base.median,
            "baseline_mad": base.mad,
            "baseline_points": base.points,
            "threshold": threshold,
            "ratio_to_threshold": _ratio(current, threshold),
            "window_s": self.config.window_s,
            "baseline_s": self.config.baseline_s,
            "baseline_start": self.now - self.config.baseline_s,
            "baseline_end": self.now - self.config.window_s,
            "traffic": {"calls": self.calls, "rps": self.rps},
            "source": self.source.name,
            "spanmetrics": self.scheme.name,
        }


def _ratio(current: float, threshold: float) -> float | None:
    """current / threshold; None for a zero threshold (any value above it is critical)."""
    return current / threshold if threshold > 0 else None


def _severity(evidence: dict[str, Any]) -> str:
    ratio = evidence["ratio_to_threshold"]
    return "critical" if ratio is None else severity(ratio)


def _error_spike(
    ctx: _Context,
    errors: float,
    busy: dict[float, float],
    base_errors: list[tuple[float, float]],
) -> Signal | None:
    config = ctx.config
    error_rates = dict(base_errors)
    points = [error_rates.get(ts, 0.0) / rate for ts, rate in busy.items()]
    if len(points) < config.min_baseline_points:
        return None
    base = robust_baseline(points)
    current = errors / ctx.calls
    threshold = max(config.error_ratio_min, base.median + config.error_mad_k * base.sigma)
    # increase() extrapolates to the window's edges: counts are not whole numbers.
    if current <= threshold or errors < config.error_min_errors - 1e-9:
        return None

    service, span = ctx.key
    w = f"{config.window_s}s"
    evidence = ctx.evidence("error_ratio", current, base, threshold)
    evidence["traffic"]["errors"] = errors
    evidence["query"] = (
        f"(sum(increase({ctx.scheme.errors(ctx.matchers())}[{w}])) or vector(0)) "
        f"/ sum(increase({ctx.scheme.calls}{{{ctx.matchers()}}}[{w}]))"
    )
    evidence["queries"] = {
        "current": [ctx.queries.errors, ctx.queries.calls],
        "baseline": [ctx.queries.errors_rate, ctx.queries.calls_rate],
    }
    return Signal(
        kind="error_spike",
        failure_class="ERROR_SPIKE",
        trigger=TRIGGER,
        service=service,
        span_name=span,
        at=ctx.now,
        severity=_severity(evidence),
        summary=(
            f"{service} / {span}: error ratio {current:.1%} over {w} "
            f"(baseline median {base.median:.1%}, threshold {threshold:.1%}, "
            f"{errors:.0f} of {ctx.calls:.0f} calls)"
        ),
        evidence=evidence,
    )


def _latency_regression(ctx: _Context, data: _Data, busy: dict[float, float]) -> Signal | None:
    if ctx.queries.p95 is None or ctx.queries.mean is None:
        return None
    to_s = ctx.scheme.to_seconds
    found: dict[str, dict[str, Any]] = {}
    for statistic, current, points in (
        ("p95_s", data.p95.get(ctx.key), data.base_p95.get(ctx.key, [])),
        ("mean_s", data.mean.get(ctx.key), data.base_mean.get(ctx.key, [])),
    ):
        values = [value * to_s for ts, value in points if ts in busy]
        if current is None or len(values) < ctx.config.min_baseline_points:
            continue
        base = robust_baseline(values)
        threshold = max(
            ctx.config.latency_factor * base.median,
            base.median + ctx.config.latency_mad_k * base.sigma,
        )
        found[statistic] = ctx.evidence(statistic, current * to_s, base, threshold)

    firing = {s: e for s, e in found.items() if e["current"] > e["threshold"]}
    # p95 is interpolated inside coarse buckets: when the share of calls just above a bucket
    # edge crosses 5 % it jumps far with no real change. The exact mean must move too
    # before p95 alone counts.
    mean = found.get("mean_s")
    if "p95_s" in firing and "mean_s" not in firing and mean is not None:
        floor = ctx.config.latency_tail_mean_factor * mean["baseline_median"]
        if mean["current"] < floor:
            del firing["p95_s"]
    if not firing:
        return None
    shift = _shift(ctx, data.buckets.get(ctx.key, []), data.base_buckets.get(ctx.key, []))
    if shift is not None and not shift["moved"]:
        return None
    statistic = max(firing, key=lambda s: firing[s]["ratio_to_threshold"] or math.inf)
    evidence = dict(firing[statistic])
    evidence["statistics"] = found
    if shift is not None:
        evidence["shift"] = shift
    evidence["query"] = _latency_query(ctx, statistic)
    evidence["queries"] = {
        "current": [ctx.queries.p95, ctx.queries.mean, ctx.queries.calls],
        "baseline": [ctx.queries.p95, ctx.queries.mean, ctx.queries.calls_rate],
    }

    service, span = ctx.key
    label = "p95" if statistic == "p95_s" else "mean"
    return Signal(
        kind="latency_regression",
        failure_class="LATENCY_REGRESS",
        trigger=TRIGGER,
        service=service,
        span_name=span,
        at=ctx.now,
        severity=_severity(evidence),
        summary=(
            f"{service} / {span}: {label} latency {evidence['current']:.3g}s over "
            f"{ctx.config.window_s}s (baseline median {evidence['baseline_median']:.3g}s, "
            f"threshold {evidence['threshold']:.3g}s)"
        ),
        evidence=evidence,
    )


def _shift(
    ctx: _Context, window: list[tuple[float, float]], baseline: list[tuple[float, float]]
) -> dict[str, Any] | None:
    """How far the window's latency distribution moved up from the baseline period's.

    At each finite bucket bound, the drop of the share of calls at or below it, against
    what chance allows there; the bound where the drop is largest against that is
    reported. None when either period has no buckets to compare.
    """
    window_total = _total(window)
    base_total = _total(baseline)
    if not window_total or not base_total:
        return None
    config = ctx.config
    base_below = {bound: count / base_total for bound, count in baseline}
    best: dict[str, Any] | None = None
    for bound, count in window:
        if math.isinf(bound) or bound not in base_below:
            continue
        expected = base_below[bound]
        share = count / window_total
        pooled = (expected * base_total + count) / (base_total + window_total)
        noise = math.sqrt(pooled * (1.0 - pooled) * (1 / window_total + 1 / base_total))
        required = max(config.latency_min_shift, config.latency_shift_k * noise)
        drop = expected - share
        if best is None or drop / required > best["shift"] / best["required"]:
            best = {
                "shift": drop,
                "required": required,
                "bound_s": bound * ctx.scheme.to_seconds,
                "share_at_or_below": share,
                "baseline_share_at_or_below": expected,
                "slower_calls": drop * window_total,
            }
    if best is None:
        return None
    # increase() extrapolates, so a share of exactly 10 % may read as 9.99999 %.
    best["moved"] = (
        best["shift"] >= best["required"] - 1e-9
        and best["slower_calls"] >= config.latency_min_slow_calls - 1e-9
    )
    return best


def _total(buckets: list[tuple[float, float]]) -> float:
    return next((count for bound, count in buckets if math.isinf(bound)), 0.0)


def _latency_query(ctx: _Context, statistic: str) -> str:
    """The current value of `statistic` for this service and span alone, in seconds."""
    scheme, m, w = ctx.scheme, ctx.matchers(), f"{ctx.config.window_s}s"
    if statistic == "p95_s":
        bucket = f"{scheme.duration_bucket}{{{m}}}[{w}]"
        expr = f"histogram_quantile(0.95, sum by (le) (rate({bucket})))"
    else:
        expr = (
            f"sum(rate({scheme.duration_sum}{{{m}}}[{w}])) "
            f"/ sum(rate({scheme.duration_count}{{{m}}}[{w}]))"
        )
    return expr if scheme.to_seconds == 1.0 else f"({expr}) * {scheme.to_seconds:g}"
