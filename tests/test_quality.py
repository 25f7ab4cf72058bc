"""Score-drop detector on evaluation scores backfilled into VictoriaMetrics.

Each case is one service and evaluation with a 30-minute baseline and a 60-second current
window ending at NOW (the default configuration). Score rates and values change only at
minute boundaries, so every window's mean score is the mean of one segment, known by hand.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from proveai_agent.signals import Signal
from proveai_agent.watch.quality import QualityConfig, evaluate, score_classes
from stackfix import Mix, Sample, VMHandle, exposition, histogram_samples

pytestmark = pytest.mark.integration

NOW = float(int(time.time()) // 60 * 60 - 600)
START = NOW - 2400
CUT = NOW - 60
SCORE = "llm_gen_ai_evaluation_score"
BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def scores(
    segments: Sequence[tuple[float, float, Mix]],
    evaluation: str = "context_relevance",
    service: str = "rag-api",
) -> list[Sample]:
    """The score histogram of one evaluation: segments of (start, end, [(per s, score)])."""
    labels = {"service_name": service, "gen_ai_evaluation_name": evaluation}
    return histogram_samples(SCORE, labels, segments, BUCKETS)


def steady_then(current: Mix, baseline: Mix = ((0.5, 1.0), (0.5, 0.8))) -> list[Sample]:
    """One score a second averaging 0.9 until CUT, then `current` in the last minute."""
    return scores([(START, CUT, baseline), (CUT, NOW, current)])


async def run(
    vm: VMHandle, samples: list[Sample], config: QualityConfig | None = None
) -> list[Signal]:
    vm.import_prometheus(exposition(samples))
    return await evaluate(vm.source(), NOW, config or QualityConfig())


async def test_a_score_drop_fires_with_its_class_and_evidence(vm: VMHandle) -> None:
    signals = await run(vm, steady_then([(1.0, 0.6)]))

    assert [(s.kind, s.trigger, s.failure_class) for s in signals] == [
        ("score_drop", "quality_drop", "RETRIEVAL_DRIFT")
    ]
    drop = signals[0]
    assert (drop.service, drop.span_name, drop.subject, drop.at) == (
        "rag-api",
        None,
        "context_relevance",
        NOW,
    )
    assert drop.candidates == {"RETRIEVAL_DRIFT": 0.8, "HALLUCINATION": 0.3}
    assert not drop.advisory
    ev = drop.evidence
    # 60 scores of 0.6 now; every baseline window holds 30 scores of 1.0 and 30 of 0.8,
    # mean 0.9, so MAD 0 and the allowed drop is the 0.1 floor: threshold 0.8. Points
    # every 20 s from NOW - 1800 to NOW - 60: 1740 / 20 + 1 = 88. Drop 0.3 is 3 times the
    # allowed drop.
    assert ev["statistic"] == "mean_score"
    assert ev["current"] == pytest.approx(0.6)
    assert ev["baseline_median"] == pytest.approx(0.9)
    assert ev["baseline_mad"] == pytest.approx(0.0, abs=1e-9)
    assert ev["baseline_points"] == 88
    assert ev["threshold"] == pytest.approx(0.8)
    assert ev["drop"] == pytest.approx(0.3)
    assert ev["drop_threshold"] == pytest.approx(0.1)
    assert ev["ratio_to_threshold"] == pytest.approx(3.0)
    assert ev["scores"] == pytest.approx(60)
    assert (ev["window_s"], ev["baseline_s"]) == (60, 1800)
    assert (ev["baseline_start"], ev["baseline_end"]) == (NOW - 1800, NOW - 60)
    assert ev["evaluation"] == "context_relevance"
    assert len(ev["queries"]["current"]) == 2
    assert drop.severity == "high"

    # The verification query gives the same mean for this service and evaluation alone.
    (answer,) = vm.query(ev["query"], NOW)
    assert float(answer["value"][1]) == pytest.approx(0.6)


async def test_a_drop_just_under_the_floor_raises_nothing(vm: VMHandle) -> None:
    # 0.9 → 0.81 is a drop of 0.09, under the 0.1 floor (threshold 0.8).
    assert await run(vm, steady_then([(1.0, 0.81)])) == []


async def test_too_few_scores_in_the_window_raise_nothing(vm: VMHandle) -> None:
    # 4 scores in the last minute (one every 15 s), fewer than min_scores (5).
    assert await run(vm, steady_then([(4 / 60, 0.2)])) == []


async def test_a_too_short_baseline_raises_nothing(vm: VMHandle) -> None:
    # History starts 90 s before NOW: only the baseline window ending at NOW - 60 has
    # scores, one point, fewer than min_baseline_points (3).
    samples = scores([(NOW - 90, CUT, [(1.0, 0.9)]), (CUT, NOW, [(1.0, 0.2)])])
    assert await run(vm, samples) == []


async def test_baseline_windows_with_too_few_scores_do_not_count(vm: VMHandle) -> None:
    # 3 scores a minute in the baseline: no baseline window reaches min_scores.
    samples = scores([(START, CUT, [(0.05, 0.9)]), (CUT, NOW, [(1.0, 0.2)])])
    assert await run(vm, samples) == []


async def test_a_rising_score_raises_nothing(vm: VMHandle) -> None:
    assert await run(vm, steady_then([(1.0, 0.95)], baseline=[(1.0, 0.6)])) == []


WIGGLE = [0.80, 0.85, 0.90] * 10  # mean score per baseline minute: median 0.85, MAD 0.05


def wiggling(current: float) -> list[Sample]:
    first = NOW - 1860
    minutes = [(first + 60 * i, first + 60 * (i + 1), [(1.0, s)]) for i, s in enumerate(WIGGLE)]
    return scores([(START, first, [(1.0, 0.85)]), *minutes, (CUT, NOW, [(1.0, current)])])


async def test_a_drop_within_the_mad_band_raises_nothing(vm: VMHandle) -> None:
    # Allowed drop max(0.1, 4 × 1.4826 × 0.05) = 0.2965, threshold ≈ 0.5535; 0.6 is a
    # drop of 0.25, past the 0.1 floor but inside the band.
    config = QualityConfig(baseline_step_s=60)
    assert await run(vm, wiggling(0.6), config) == []


async def test_a_drop_beyond_the_mad_band_fires(vm: VMHandle) -> None:
    # Baseline points one minute apart: the 30 minutes of WIGGLE exactly.
    signals = await run(vm, wiggling(0.4), QualityConfig(baseline_step_s=60))

    assert [s.kind for s in signals] == ["score_drop"]
    ev = signals[0].evidence
    assert ev["baseline_points"] == 30
    assert ev["baseline_median"] == pytest.approx(0.85)
    assert ev["baseline_mad"] == pytest.approx(0.05)
    assert ev["drop_threshold"] == pytest.approx(4 * 1.4826 * 0.05)
    assert ev["threshold"] == pytest.approx(0.85 - 4 * 1.4826 * 0.05)
    assert signals[0].severity == "medium"  # drop 0.45 / 0.2965 ≈ 1.52


async def test_only_the_evaluations_that_dropped_fire(vm: VMHandle) -> None:
    samples = [
        *steady_then([(1.0, 0.45)], baseline=[(1.0, 0.9)]),  # context_relevance
        *scores([(START, NOW, [(1.0, 0.9)])], evaluation="Coherence"),
        *scores(
            [(START, CUT, [(1.0, 0.9)]), (CUT, NOW, [(1.0, 0.45)])],
            evaluation="Faithfulness",
        ),
        *scores(
            [(START, CUT, [(1.0, 0.8)]), (CUT, NOW, [(1.0, 0.55)])],
            evaluation="tone",
            service="chat-bot",
        ),
    ]
    signals = await run(vm, samples)

    # Drops of 0.45 (4.5 × the 0.1 floor: critical) and 0.25 (2.5 ×: high).
    assert [(s.service, s.subject, s.failure_class, s.severity) for s in signals] == [
        ("chat-bot", "tone", "HALLUCINATION", "high"),
        ("rag-api", "Faithfulness", "HALLUCINATION", "critical"),
        ("rag-api", "context_relevance", "RETRIEVAL_DRIFT", "critical"),
    ]
    assert signals[1].candidates == {"HALLUCINATION": 0.8, "RETRIEVAL_DRIFT": 0.3}
    assert signals[0].candidates == {
        "HALLUCINATION": 0.4,
        "COHERENCE_DEGRADATION": 0.3,
        "PROMPT_REGRESSION": 0.3,
    }
    assert len({s.key for s in signals}) == 3


@pytest.mark.parametrize(
    ("evaluation", "expected"),
    [
        ("context_relevance", "RETRIEVAL_DRIFT"),
        ("Answer_Relevancy", "RETRIEVAL_DRIFT"),
        ("context_precision", "RETRIEVAL_DRIFT"),
        ("context_recall", "RETRIEVAL_DRIFT"),
        ("retrieval_quality", "RETRIEVAL_DRIFT"),
        ("groundedness", "HALLUCINATION"),
        ("faithfulness", "HALLUCINATION"),
        ("HALLUCINATION_rate", "HALLUCINATION"),
        ("factual_consistency", "HALLUCINATION"),
        ("coherence", "COHERENCE_DEGRADATION"),
        ("fluency", "COHERENCE_DEGRADATION"),
        ("consistency", "COHERENCE_DEGRADATION"),
        ("toxicity", "HALLUCINATION"),
    ],
)
def test_the_evaluation_name_chooses_the_class(evaluation: str, expected: str) -> None:
    failure_class, candidates = score_classes(evaluation)
    assert failure_class == expected
    assert candidates[expected] == max(candidates.values())


def test_an_unknown_evaluation_spreads_over_three_classes() -> None:
    _, candidates = score_classes("toxicity")
    assert set(candidates) == {"HALLUCINATION", "COHERENCE_DEGRADATION", "PROMPT_REGRESSION"}
    assert max(candidates.values()) < 0.8
