"""Drift detector: slow degradation over hours or days against a week-long baseline.

Four statistics per service, each a ratio of two counter increases:

- latency_mean_s: mean span duration (duration _sum / _count), every span of the service;
- error_ratio: error calls / calls;
- output_tokens_per_call: `llm_gen_ai_tokens_total{gen_ai_token_type="output"}` / calls
  with gen_ai_operation_name="chat";
- mean_score, per evaluation name: `llm_gen_ai_evaluation_score_sum` / `_count`.

The recent value is the statistic over the last `recent_s` (6 h) before `now`. The
baseline points are the statistic over `baseline_step_s` (1 h), one per step across the
`baseline_s` (7 days) that end where the recent period starts, summarised by their
median and MAD (σ = 1.4826 × MAD). The hourly points spread over whole days, so daily
seasonality widens the MAD band instead of firing at every peak. Only the bad direction
fires, and only past both a floor and the MAD band:

- latency and tokens rise above max(factor × median, median + mad_k × σ);
- the error ratio rises above median + max(error_ratio_rise, error_mad_k × σ);
- a mean score falls below median − max(score_drop_min, score_mad_k × σ).

The recent value is a 6-hour average, so a jump in the last hour alone fires only when
it moves that average past the threshold; sudden changes are the reactive detectors'.
A period counts (the recent one, or a baseline hour) only with at least `min_count`
calls or scores; nothing fires with fewer than `min_baseline_points` baseline hours.
Without span metrics (no scheme) only the score means are checked: tokens per call need
the calls counter too.

A signal is advisory, severity at most medium (from current / threshold for a rise,
drop / allowed drop for a score). Its evidence: statistic, current, baseline_median,
baseline_mad, baseline_points, threshold, ratio_to_threshold (drop and drop_threshold
too for a score), window_s and recent_s (the recent period), recent_start/_end,
baseline_s, baseline_step_s, baseline_start/_end, traffic (calls, and errors) or scores,
evaluation for a score, source, spanmetrics, `query` (the recent value for this service,
and evaluation, alone) and `queries` (the exact PromQL that was run).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from proveai_agent.config import TrendConfig
from proveai_agent.signals import Signal
from proveai_agent.watch.detectors import Baseline, robust_baseline, severity
from proveai_agent.watch.promql import Labels, MetricsSource, matrix, quote, vector
from proveai_agent.watch.quality import SCORE, score_classes
from proveai_agent.watch.schemes import Scheme

TRIGGER = "drift"
SERVICE_LABEL = "service_name"
EVALUATION_LABEL = "gen_ai_evaluation_name"
TOKENS = 'llm_gen_ai_tokens_total{gen_ai_token_type="output"}'
CHAT = 'gen_ai_operation_name="chat"'
MAX_SEVERITY = "medium"
RANKS = {"low": 0, "medium": 1, "high": 2, "critical": 3}
TINY = 1e-9


@dataclass(frozen=True, slots=True)
class _Statistic:
    """One statistic: numerator / denominator, both increases of a counter selector.

    `by` groups the denominator and names the key (service, and evaluation for a score);
    `numerator_by` groups the numerator by the same values under its own label names.
    """

    name: str
    numerator: str
    denominator: str
    by: Labels
    numerator_by: Labels
    scale: float = 1.0
    missing_is_zero: bool = False

    def queries(self, window_s: int) -> tuple[str, str]:
        w = f"{window_s}s"
        return (
            f"sum by ({', '.join(self.numerator_by)}) (increase({self.numerator}[{w}]))",
            f"sum by ({', '.join(self.by)}) (increase({self.denominator}[{w}]))",
        )


def _statistics(scheme: Scheme | None) -> list[_Statistic]:
    scores = (SERVICE_LABEL, EVALUATION_LABEL)
    found = [
        _Statistic(
            "mean_score",
            numerator=f"{SCORE}_sum",
            denominator=f"{SCORE}_count",
            by=scores,
            numerator_by=scores,
        )
    ]
    if scheme is None:
        return found
    by = (scheme.service_label,)
    if scheme.duration_sum and scheme.duration_count:
        found.append(
            _Statistic(
                "latency_mean_s",
                numerator=scheme.duration_sum,
                denominator=scheme.duration_count,
                by=by,
                numerator_by=by,
                scale=scheme.to_seconds,
            )
        )
    found.append(
        _Statistic(
            "error_ratio",
            numerator=scheme.errors(),
            denominator=scheme.calls,
            by=by,
            numerator_by=by,
            missing_is_zero=True,
        )
    )
    found.append(
        _Statistic(
            "output_tokens_per_call",
            numerator=TOKENS,
            denominator=f"{scheme.calls}{{{CHAT}}}",
            by=by,
            numerator_by=(SERVICE_LABEL,),
        )
    )
    return found


@dataclass(slots=True)
class _Answer:
    """One statistic's numbers: recent numerator and denominator, baseline points of both."""

    statistic: _Statistic
    recent: tuple[str, str]
    hourly: tuple[str, str]
    numerator: dict[Labels, float | None]
    denominator: dict[Labels, float | None]
    base_numerator: dict[Labels, list[tuple[float, float]]]
    base_denominator: dict[Labels, list[tuple[float, float]]]


async def _fetch(
    source: MetricsSource, statistic: _Statistic, now: float, config: TrendConfig
) -> _Answer:
    end = now - config.recent_s
    start = end - config.baseline_s + config.baseline_step_s
    recent = statistic.queries(config.recent_s)
    hourly = statistic.queries(config.baseline_step_s)

    async def instant(promql: str, labels: Labels) -> dict[Labels, float | None]:
        return vector(await source.query(promql, now), labels)

    async def ranged(promql: str, labels: Labels) -> dict[Labels, list[tuple[float, float]]]:
        return matrix(
            await source.query_range(promql, start, end, config.baseline_step_s), labels
        )

    num, den, base_num, base_den = await asyncio.gather(
        instant(recent[0], statistic.numerator_by),
        instant(recent[1], statistic.by),
        ranged(hourly[0], statistic.numerator_by),
        ranged(hourly[1], statistic.by),
    )
    return _Answer(statistic, recent, hourly, num, den, base_num, base_den)


async def evaluate(
    source: MetricsSource, scheme: Scheme | None, now: float, config: TrendConfig
) -> list[Signal]:
    """Run the drift detector once, as of `now` (the detector's clock, epoch seconds).

    Args:
        scheme: the spanmetrics naming in `source`, or None without span metrics (then
            only the evaluation scores are checked).

    Raises:
        SourceError: when the source does not answer; `source.error` says so too.
    """
    answers = await asyncio.gather(
        *(_fetch(source, s, now, config) for s in _statistics(scheme))
    )
    signals: list[Signal] = []
    for answer in answers:
        for key in sorted(answer.denominator):
            signal = _judge(source, scheme, now, config, answer, key)
            if signal is not None:
                signals.append(signal)
    return sorted(signals, key=lambda s: (s.service, s.subject or ""))


def _ratio_of(
    statistic: _Statistic, numerator: float | None, denominator: float | None, min_count: int
) -> float | None:
    """numerator / denominator in the statistic's unit; None when too little to count."""
    if denominator is None or denominator < min_count or denominator <= 0:
        return None
    if numerator is None:
        if not statistic.missing_is_zero:
            return None
        numerator = 0.0
    return numerator / denominator * statistic.scale


def _baseline_points(answer: _Answer, key: Labels, min_count: int) -> list[float]:
    numerators = dict(answer.base_numerator.get(key, []))
    points = []
    for ts, denominator in answer.base_denominator.get(key, []):
        value = _ratio_of(answer.statistic, numerators.get(ts), denominator, min_count)
        if value is not None:
            points.append(value)
    return points


@dataclass(slots=True)
class _Limit:
    """Where a statistic's baseline puts its threshold, and how far past it the value is."""

    threshold: float
    ratio: float
    fired: bool
    allowed_drop: float | None = None


def _limit(name: str, current: float, base: Baseline, config: TrendConfig) -> _Limit:
    if name == "mean_score":
        allowed = max(config.score_drop_min, config.score_mad_k * base.sigma)
        threshold = base.median - allowed
        ratio = (base.median - current) / max(allowed, TINY)
        return _Limit(threshold, ratio, current < threshold, allowed)
    if name == "error_ratio":
        rise = max(config.error_ratio_rise, config.error_mad_k * base.sigma)
        threshold = base.median + rise
    elif name == "latency_mean_s":
        threshold = max(
            config.latency_factor * base.median,
            base.median + config.latency_mad_k * base.sigma,
        )
    else:
        threshold = max(
            config.tokens_factor * base.median,
            base.median + config.tokens_mad_k * base.sigma,
        )
    ratio = current / threshold if threshold > 0 else float("inf")
    return _Limit(threshold, ratio, current > threshold)


CLASSES = {
    "latency_mean_s": "LATENCY_REGRESS",
    "error_ratio": "ERROR_SPIKE",
    "output_tokens_per_call": "TOKEN_EXPLOSION",
}
"""The failure class of each statistic; a score's comes from its evaluation name."""

LABELS = {
    "latency_mean_s": "mean latency",
    "error_ratio": "error ratio",
    "output_tokens_per_call": "output tokens per call",
    "mean_score": "mean score",
}
FORMATS = {"error_ratio": "{:.1%}", "latency_mean_s": "{:.3g}s"}


def _judge(
    source: MetricsSource,
    scheme: Scheme | None,
    now: float,
    config: TrendConfig,
    answer: _Answer,
    key: Labels,
) -> Signal | None:
    statistic = answer.statistic
    current = _ratio_of(
        statistic, answer.numerator.get(key), answer.denominator[key], config.min_count
    )
    points = _baseline_points(answer, key, config.min_count)
    if current is None or len(points) < config.min_baseline_points:
        return None
    base = robust_baseline(points)
    limit = _limit(statistic.name, current, base, config)
    if not limit.fired:
        return None

    service = key[0]
    evaluation = key[1] if statistic.name == "mean_score" else None
    evidence = _evidence(source, scheme, now, config, statistic.name, current, base, limit)
    _add_counts(evidence, answer, key, evaluation)
    evidence["query"] = _recent_query(statistic, key, config.recent_s)
    evidence["queries"] = {"current": list(answer.recent), "baseline": list(answer.hourly)}
    if evaluation is None:
        failure_class = CLASSES[statistic.name]
        candidates = {failure_class: 1.0}
        subject = statistic.name
    else:
        failure_class, candidates = score_classes(evaluation)
        subject = f"{statistic.name}:{evaluation}"
    return Signal(
        kind="drift",
        failure_class=failure_class,
        trigger=TRIGGER,
        service=service,
        span_name=None,
        at=now,
        severity=_capped(severity(limit.ratio)),
        summary=_summary(service, evaluation, statistic.name, current, base, limit, config),
        evidence=evidence,
        subject=subject,
        candidates=candidates,
        advisory=True,
    )


def _capped(found: str) -> str:
    """A drift is worth a look, never an emergency: its severity stops at MAX_SEVERITY."""
    return found if RANKS[found] <= RANKS[MAX_SEVERITY] else MAX_SEVERITY


def _evidence(
    source: MetricsSource,
    scheme: Scheme | None,
    now: float,
    config: TrendConfig,
    name: str,
    current: float,
    base: Baseline,
    limit: _Limit,
) -> dict[str, Any]:
    recent_start = now - config.recent_s
    evidence: dict[str, Any] = {
        "statistic": name,
        "current": current,
        "baseline_median": base.median,
        "baseline_mad": base.mad,
        "baseline_points": base.points,
        "threshold": limit.threshold,
        "ratio_to_threshold": limit.ratio,
        "window_s": config.recent_s,
        "recent_s": config.recent_s,
        "recent_start": recent_start,
        "recent_end": now,
        "baseline_s": config.baseline_s,
        "baseline_step_s": config.baseline_step_s,
        "baseline_start": recent_start - config.baseline_s,
        "baseline_end": recent_start,
        "source": source.name,
        "spanmetrics": scheme.name if scheme else None,
    }
    if limit.allowed_drop is not None:
        evidence["drop"] = base.median - current
        evidence["drop_threshold"] = limit.allowed_drop
    return evidence


def _add_counts(
    evidence: dict[str, Any], answer: _Answer, key: Labels, evaluation: str | None
) -> None:
    """How much the recent value stands on: its calls (and errors), or its scores."""
    denominator = answer.denominator[key]
    if evaluation is not None:
        evidence["scores"] = denominator
        evidence["evaluation"] = evaluation
        return
    evidence["traffic"] = {"calls": denominator}
    if answer.statistic.name == "error_ratio":
        evidence["traffic"]["errors"] = answer.numerator.get(key) or 0.0


def _recent_query(statistic: _Statistic, key: Labels, window_s: int) -> str:
    """The statistic over `window_s` for this one service (and evaluation), as PromQL."""
    numerator = _matched(statistic.numerator, statistic.numerator_by, key)
    denominator = _matched(statistic.denominator, statistic.by, key)
    w = f"{window_s}s"
    num = f"sum(increase({numerator}[{w}]))"
    if statistic.missing_is_zero:
        num = f"({num} or vector(0))"
    expr = f"{num} / sum(increase({denominator}[{w}]))"
    return expr if statistic.scale == 1.0 else f"({expr}) * {statistic.scale:g}"


def _matched(selector: str, labels: Labels, key: Labels) -> str:
    """`selector` with label matchers for the key's values added."""
    matchers = ",".join(
        f"{name}={quote(value)}" for name, value in zip(labels, key, strict=True)
    )
    if selector.endswith("}"):
        return f"{selector[:-1]},{matchers}}}"
    return f"{selector}{{{matchers}}}"


def _summary(
    service: str,
    evaluation: str | None,
    name: str,
    current: float,
    base: Baseline,
    limit: _Limit,
    config: TrendConfig,
) -> str:
    what = f"{service} / {evaluation}" if evaluation else service
    form = FORMATS.get(name, "{:.3g}")
    current_s, median_s, threshold_s = (
        form.format(x) for x in (current, base.median, limit.threshold)
    )
    return (
        f"{what}: {LABELS[name]} drifted to {current_s} over the last "
        f"{config.recent_s / 3600:g}h ({config.baseline_s / 86400:g}-day baseline median "
        f"{median_s}, threshold {threshold_s})"
    )
