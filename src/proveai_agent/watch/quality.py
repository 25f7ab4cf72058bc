"""Quality detector: a drop of the mean evaluation score per service and evaluation name.

The statistic is the mean score of the current window (the last `window_s` before `now`):
increase of `llm_gen_ai_evaluation_score_sum` / increase of `..._count`, per service
and evaluation name. It is compared with a robust baseline, the same mean over
`window_s` once every `baseline_step_s` across the `baseline_s` that end where the
current window starts, summarised by its median and MAD (σ = 1.4826 × MAD).

The score drop fires when current < median − max(drop_min, drop_mad_k × σ): the absolute
floor keeps a steady score's tiny wiggle from firing, the MAD band a noisy one's. Nothing
fires with fewer than `min_scores` scores in the current window, or with fewer than
`min_baseline_points` baseline windows that had that many. A rising score never fires.
Severity grows with drop / allowed drop (see `severity` in watch/detectors.py).

Which failure class a drop points to depends on what the evaluation measures; it is
read from the evaluation's name, case-insensitive, by the first rule in this order
that has one of its tokens inside the name:

- grounded, faithful, hallucinat, factual → HALLUCINATION 0.8, RETRIEVAL_DRIFT 0.3
  (first, so that "factual_consistency" counts as a factuality score);
- relevan, precision, recall, retriev → RETRIEVAL_DRIFT 0.8, HALLUCINATION 0.3
  (context relevance, context precision, context recall, retrieval quality);
- coheren, fluen, consisten → COHERENCE_DEGRADATION 0.8, PROMPT_REGRESSION 0.2;
- any other name → HALLUCINATION 0.4, COHERENCE_DEGRADATION 0.3, PROMPT_REGRESSION 0.3.

A signal's evidence: statistic ("mean_score"), current, baseline_median, baseline_mad,
baseline_points, threshold (the score below which it fires), drop (median − current),
drop_threshold (the allowed drop), ratio_to_threshold (drop / allowed drop), window_s,
baseline_s, baseline_start/_end, scores (how many in the current window), evaluation,
source, `query` (the current mean for this service and evaluation alone, to verify a fix
with) and `queries` (the exact PromQL that was run).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from proveai_agent.config import QualityConfig
from proveai_agent.signals import Signal
from proveai_agent.watch.detectors import Baseline, robust_baseline, severity
from proveai_agent.watch.promql import Labels, MetricsSource, matrix, quote, vector

TRIGGER = "quality_drop"
SCORE = "llm_gen_ai_evaluation_score"
SERVICE_LABEL = "service_name"
EVALUATION_LABEL = "gen_ai_evaluation_name"
TINY = 1e-9

SCORE_CLASSES: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (
        ("grounded", "faithful", "hallucinat", "factual"),
        {"HALLUCINATION": 0.8, "RETRIEVAL_DRIFT": 0.3},
    ),
    (
        ("relevan", "precision", "recall", "retriev"),
        {"RETRIEVAL_DRIFT": 0.8, "HALLUCINATION": 0.3},
    ),
    (
        ("coheren", "fluen", "consisten"),
        {"COHERENCE_DEGRADATION": 0.8, "PROMPT_REGRESSION": 0.2},
    ),
)
"""(tokens, candidates): the first rule with a token inside the evaluation name applies."""

OTHER_SCORE_CLASSES = {
    "HALLUCINATION": 0.4,
    "COHERENCE_DEGRADATION": 0.3,
    "PROMPT_REGRESSION": 0.3,
}
"""The candidates of an evaluation whose name no rule knows."""


def score_classes(evaluation: str) -> tuple[str, dict[str, float]]:
    """The failure class a drop of this evaluation's score points to, and its candidates."""
    name = evaluation.lower()
    candidates = next(
        (classes for tokens, classes in SCORE_CLASSES if any(t in name for t in tokens)),
        OTHER_SCORE_CLASSES,
    )
    return max(candidates, key=lambda c: candidates[c]), dict(candidates)


@dataclass(slots=True)
class _Queries:
    """The PromQL one evaluation runs, grouped by service and evaluation name."""

    sums: str
    counts: str

    @classmethod
    def build(cls, window_s: int) -> _Queries:
        by, w = f"{SERVICE_LABEL}, {EVALUATION_LABEL}", f"{window_s}s"
        return cls(
            sums=f"sum by ({by}) (increase({SCORE}_sum[{w}]))",
            counts=f"sum by ({by}) (increase({SCORE}_count[{w}]))",
        )


@dataclass(slots=True)
class _Data:
    """What the source answered: current values per key, baseline points per key."""

    sums: dict[Labels, float | None]
    counts: dict[Labels, float | None]
    base_sums: dict[Labels, list[tuple[float, float]]]
    base_counts: dict[Labels, list[tuple[float, float]]]


async def _fetch(
    source: MetricsSource, q: _Queries, now: float, config: QualityConfig
) -> _Data:
    labels = (SERVICE_LABEL, EVALUATION_LABEL)
    start, end = now - config.baseline_s, now - config.window_s

    async def instant(promql: str) -> dict[Labels, float | None]:
        return vector(await source.query(promql, now), labels)

    async def ranged(promql: str) -> dict[Labels, list[tuple[float, float]]]:
        return matrix(
            await source.query_range(promql, start, end, config.baseline_step_s), labels
        )

    sums, counts, base_sums, base_counts = await asyncio.gather(
        instant(q.sums), instant(q.counts), ranged(q.sums), ranged(q.counts)
    )
    return _Data(sums, counts, base_sums, base_counts)


async def evaluate(source: MetricsSource, now: float, config: QualityConfig) -> list[Signal]:
    """Run the quality detector once, as of `now` (the detector's clock, epoch seconds).

    Raises:
        SourceError: when the source does not answer; `source.error` says so too.
    """
    q = _Queries.build(config.window_s)
    data = await _fetch(source, q, now, config)
    signals: list[Signal] = []
    for key in sorted(data.counts):
        scores = data.counts[key] or 0.0
        total = data.sums.get(key)
        if scores < config.min_scores or total is None:
            continue
        points = _baseline_points(
            data.base_sums.get(key, []), data.base_counts.get(key, []), config
        )
        if len(points) < config.min_baseline_points:
            continue
        signal = _score_drop(source, q, now, config, key, total / scores, scores, points)
        if signal is not None:
            signals.append(signal)
    return signals


def _baseline_points(
    sums: list[tuple[float, float]], counts: list[tuple[float, float]], config: QualityConfig
) -> list[float]:
    """The mean score of each baseline window that had at least `min_scores` scores."""
    by_time = dict(sums)
    return [
        by_time[ts] / n
        for ts, n in counts
        if n >= config.min_scores and n > 0 and ts in by_time
    ]


def _score_drop(
    source: MetricsSource,
    q: _Queries,
    now: float,
    config: QualityConfig,
    key: Labels,
    current: float,
    scores: float,
    points: list[float],
) -> Signal | None:
    base = robust_baseline(points)
    allowed = max(config.drop_min, config.drop_mad_k * base.sigma)
    threshold = base.median - allowed
    if current >= threshold:
        return None

    service, evaluation = key
    evidence = _evidence(source, now, config, base, current, threshold, allowed)
    evidence.update(scores=scores, evaluation=evaluation)
    evidence["query"] = current_query(service, evaluation, config.window_s)
    evidence["queries"] = {"current": [q.sums, q.counts], "baseline": [q.sums, q.counts]}
    failure_class, candidates = score_classes(evaluation)
    return Signal(
        kind="score_drop",
        failure_class=failure_class,
        trigger=TRIGGER,
        service=service,
        span_name=None,
        at=now,
        severity=severity(evidence["ratio_to_threshold"]),
        summary=(
            f"{service} / {evaluation}: mean score {current:.3f} over {config.window_s}s "
            f"(baseline median {base.median:.3f}, threshold {threshold:.3f}, "
            f"{scores:.0f} scores)"
        ),
        evidence=evidence,
        subject=evaluation,
        candidates=candidates,
    )


def _evidence(
    source: MetricsSource,
    now: float,
    config: QualityConfig,
    base: Baseline,
    current: float,
    threshold: float,
    allowed: float,
) -> dict[str, Any]:
    drop = base.median - current
    return {
        "statistic": "mean_score",
        "current": current,
        "baseline_median": base.median,
        "baseline_mad": base.mad,
        "baseline_points": base.points,
        "threshold": threshold,
        "drop": drop,
        "drop_threshold": allowed,
        "ratio_to_threshold": drop / max(allowed, TINY),
        "window_s": config.window_s,
        "baseline_s": config.baseline_s,
        "baseline_start": now - config.baseline_s,
        "baseline_end": now - config.window_s,
        "source": source.name,
    }


def current_query(service: str, evaluation: str, window_s: int) -> str:
    """The mean score of one service and evaluation over `window_s`, as PromQL."""
    m = f"{SERVICE_LABEL}={quote(service)},{EVALUATION_LABEL}={quote(evaluation)}"
    w = f"{window_s}s"
    return f"sum(increase({SCORE}_sum{{{m}}}[{w}])) / sum(increase({SCORE}_count{{{m}}}[{w}]))"
