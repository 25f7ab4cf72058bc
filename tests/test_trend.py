"""Drift detector on a week of history backfilled into VictoriaMetrics.

NOW is on the hour. Every statistic is constant within an hour, counted in hours h from NOW
(h = -1 is the last hour): the recent period is h = -6 … -1, the baseline points are the
168 hours h = -174 … -7, and history starts one hour earlier. Counters are sampled every
5 minutes, so each baseline point is its hour's value exactly and the recent value is the
mean of the six recent hours (the call rate is the same every hour).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from proveai_agent.signals import Signal
from proveai_agent.watch.schemes import detect
from proveai_agent.watch.trend import TrendConfig, evaluate
from stackfix import Sample, VMHandle, exposition

pytestmark = pytest.mark.integration

HOUR = 3600
STEP = 300
NOW = float(int(time.time()) // HOUR * HOUR - HOUR)
FIRST_HOUR = -175
RATE = 0.1  # calls a second, 360 an hour
CALLS = "llm_traces_span_metrics_calls_total"
DURATION = "llm_traces_span_metrics_duration_seconds"
TOKENS = "llm_gen_ai_tokens_total"
SCORE = "llm_gen_ai_evaluation_score"

Hourly = Callable[[int], float]


def wiggle(median: float, step: float) -> Hourly:
    """median - step, median, median + step in turn: a median of `median`, MAD `step`."""
    return lambda h: median + step * (h % 3 - 1)


def flat(value: float) -> Hourly:
    return lambda h: value


def day_night(night: float, day: float) -> Hourly:
    """`night` for 12 hours, `day` for the next 12; the recent six hours are daytime."""
    return lambda h: day if h % 24 >= 12 else night


def recently(base: Hourly, *recent: float) -> Hourly:
    """`base`, except the six recent hours: `recent` for h = -6 … -1, or one value for all."""
    hours = recent * 6 if len(recent) == 1 else recent
    assert len(hours) == 6
    return lambda h: hours[h + 6] if h >= -6 else base(h)


@dataclass
class Service:
    """One service's week: each statistic as a function of the hour."""

    name: str = "rag-api"
    latency: Hourly = field(default_factory=lambda: wiggle(1.0, 0.05))
    errors: Hourly = field(default_factory=lambda: flat(0.01))
    tokens: Hourly = field(default_factory=lambda: flat(200.0))
    score: Hourly = field(default_factory=lambda: flat(0.9))
    first_hour: int = FIRST_HOUR
    rate: float = RATE

    def samples(self) -> list[Sample]:
        span = {
            "service_name": self.name,
            "span_name": "chat",
            "span_kind": "SPAN_KIND_CLIENT",
            "gen_ai_request_model": "m-1",
            "gen_ai_operation_name": "chat",
            "gen_ai_provider_name": "local",
        }
        ok = {**span, "status_code": "STATUS_CODE_OK"}
        bad = {**span, "status_code": "STATUS_CODE_ERROR"}
        model = {"service_name": self.name, "gen_ai_request_model": "m-1"}
        evaluation = {"service_name": self.name, "gen_ai_evaluation_name": "faithfulness"}
        r = self.rate

        def ok_calls(h: int) -> float:
            return r * (1 - self.errors(h))

        def error_calls(h: int) -> float:
            return r * self.errors(h)

        out: list[Sample] = []
        for labels, per_s in ((ok, ok_calls), (bad, error_calls)):
            out += self.counter(CALLS, labels, per_s)
            out += self.histogram(DURATION, labels, per_s, self.latency)
        out += self.counter(TOKENS, {**model, "gen_ai_token_type": "input"}, flat(r * 1000))
        out += self.counter(
            TOKENS, {**model, "gen_ai_token_type": "output"}, lambda h: r * self.tokens(h)
        )
        out += self.histogram(SCORE, evaluation, flat(r), self.score)
        return out

    def counter(self, name: str, labels: dict[str, str], per_s: Hourly) -> list[Sample]:
        """A counter from the start of history to NOW, growing at per_s(h) in hour h."""
        start = NOW + self.first_hour * HOUR
        samples: list[Sample] = [(name, labels, 0.0, start)]
        value = 0.0
        for t in range(int(start) + STEP, int(NOW) + 1, STEP):
            value += per_s((t - STEP - int(NOW)) // HOUR) * STEP
            samples.append((name, labels, value, t))
        return samples

    def histogram(
        self, base: str, labels: dict[str, str], per_s: Hourly, value: Hourly
    ) -> list[Sample]:
        """_bucket (+Inf only), _sum and _count of observations of value(h) at per_s(h)."""
        return [
            *self.counter(f"{base}_bucket", {**labels, "le": "+Inf"}, per_s),
            *self.counter(f"{base}_sum", labels, lambda h: per_s(h) * value(h)),
            *self.counter(f"{base}_count", labels, per_s),
        ]


async def run(
    vm: VMHandle, *services: Service, spans: bool = True, config: TrendConfig | None = None
) -> list[Signal]:
    vm.import_prometheus(exposition(s for service in services for s in service.samples()))
    source = vm.source()
    scheme = await detect(source, NOW) if spans else None
    if spans:
        assert scheme is not None
    return await evaluate(source, scheme, NOW, config or TrendConfig())


def degraded(**kwargs: Any) -> Service:
    """Every statistic worse over the recent six hours than all week."""
    return Service(
        latency=recently(wiggle(1.0, 0.05), 2.0),
        errors=recently(flat(0.01), 0.05),
        tokens=recently(flat(200.0), 400.0),
        score=recently(flat(0.9), 0.7),
        **kwargs,
    )


async def test_drift_of_every_statistic_opens_advisory_signals(vm: VMHandle) -> None:
    signals = await run(vm, degraded())

    # Thresholds by hand, σ = 1.4826 × MAD:
    # - error ratio: 1 % all week, MAD 0: 0.01 + max(0.02, 0) = 0.03; 0.05 / 0.03 ≈ 1.67;
    # - latency: 0.95, 1.0, 1.05 s in turn, median 1 s, MAD 0.05 s: max(1.3 × 1,
    #   1 + 3 × 0.0741) = 1.3 s; 2 / 1.3 ≈ 1.54;
    # - faithfulness: 0.9 all week: allowed drop max(0.05, 0) = 0.05, threshold 0.85;
    #   drop 0.2 is 4 times the allowed drop (critical, held at medium);
    # - output tokens per call: 200 all week: max(1.3 × 200, 200) = 260; 400 / 260 ≈ 1.54.
    assert [(s.subject, s.failure_class) for s in signals] == [
        ("error_ratio", "ERROR_SPIKE"),
        ("latency_mean_s", "LATENCY_REGRESS"),
        ("mean_score:faithfulness", "HALLUCINATION"),
        ("output_tokens_per_call", "TOKEN_EXPLOSION"),
    ]
    assert {(s.kind, s.trigger, s.service, s.span_name, s.advisory) for s in signals} == {
        ("drift", "drift", "rag-api", None, True)
    }
    assert [s.severity for s in signals] == ["medium"] * 4
    by = {s.evidence["statistic"]: s.evidence for s in signals}
    expected = {
        "error_ratio": (0.05, 0.01, 0.03),
        "latency_mean_s": (2.0, 1.0, 1.3),
        "mean_score": (0.7, 0.9, 0.85),
        "output_tokens_per_call": (400.0, 200.0, 260.0),
    }
    for statistic, (current, median, threshold) in expected.items():
        ev = by[statistic]
        assert ev["current"] == pytest.approx(current), statistic
        assert ev["baseline_median"] == pytest.approx(median), statistic
        assert ev["threshold"] == pytest.approx(threshold), statistic
        assert ev["baseline_points"] == 168, statistic
        # The verification query gives the recent value for this service alone.
        (answer,) = vm.query(ev["query"], NOW)
        assert float(answer["value"][1]) == pytest.approx(current), statistic

    score = by["mean_score"]
    assert score["ratio_to_threshold"] == pytest.approx(4.0)
    assert score["drop"] == pytest.approx(0.2)
    assert score["evaluation"] == "faithfulness"
    assert score["scores"] == pytest.approx(6 * 360)
    assert signals[2].candidates == {"HALLUCINATION": 0.8, "RETRIEVAL_DRIFT": 0.3}
    assert by["error_ratio"]["traffic"]["calls"] == pytest.approx(6 * 360)
    assert by["error_ratio"]["traffic"]["errors"] == pytest.approx(6 * 360 * 0.05)
    assert by["output_tokens_per_call"]["traffic"]["calls"] == pytest.approx(6 * 360)


async def test_the_evidence_names_the_recent_period_and_the_week(vm: VMHandle) -> None:
    signals = await run(vm, Service(latency=recently(wiggle(1.0, 0.05), 2.0)))

    assert [s.subject for s in signals] == ["latency_mean_s"]
    ev = signals[0].evidence
    assert ev["baseline_mad"] == pytest.approx(0.05)
    assert ev["ratio_to_threshold"] == pytest.approx(2.0 / 1.3)
    assert (ev["recent_s"], ev["window_s"]) == (21600, 21600)
    assert (ev["recent_start"], ev["recent_end"]) == (NOW - 21600, NOW)
    assert (ev["baseline_s"], ev["baseline_step_s"]) == (7 * 86400, 3600)
    assert (ev["baseline_start"], ev["baseline_end"]) == (NOW - 21600 - 7 * 86400, NOW - 21600)
    assert ev["spanmetrics"] == "llm_traces_span_metrics"
    assert ev["query"].startswith("sum(increase(llm_traces_span_metrics_duration_seconds_sum{")
    assert signals[0].severity == "medium"  # 2 / 1.3 ≈ 1.54


CREEP = (1.3, 1.4, 1.5, 1.6, 1.7, 1.8)


async def test_a_slow_creep_over_the_recent_hours_fires_low(vm: VMHandle) -> None:
    # Latency creeps up 0.1 s an hour from 1.3 s: a mean of 1.55 s over six hours, past
    # the 1.3 s threshold by 1.55 / 1.3 ≈ 1.19.
    signals = await run(vm, Service(latency=recently(wiggle(1.0, 0.05), *CREEP)))

    assert [(s.subject, s.severity) for s in signals] == [("latency_mean_s", "low")]
    assert signals[0].evidence["current"] == pytest.approx(1.55)


async def test_a_stable_week_with_daily_seasonality_raises_nothing(vm: VMHandle) -> None:
    # 84 night and 84 day hours in the baseline; the recent six are daytime, the day's
    # values. By hand (σ = 1.4826 × MAD, 3 σ):
    # - latency 0.6 / 1.4 s: median 1.0, MAD 0.4, threshold max(1.3, 2.78); 1.4 is past
    #   the 1.3 floor but inside the band;
    # - error ratio 1 % / 3 %: median 2 %, MAD 1 %, threshold 2 % + max(2 %, 4.4 %);
    # - tokens 200 / 300: median 250, MAD 50, threshold max(325, 472);
    # - score 0.9 / 0.8: median 0.85, MAD 0.05, threshold 0.85 - max(0.05, 0.22) ≈ 0.63.
    service = Service(
        latency=day_night(0.6, 1.4),
        errors=day_night(0.01, 0.03),
        tokens=day_night(200.0, 300.0),
        score=day_night(0.9, 0.8),
    )
    assert await run(vm, service) == []


async def test_a_jump_in_the_last_hour_within_the_six_hour_floor_raises_nothing(
    vm: VMHandle,
) -> None:
    # The drift detector reads the six-hour mean; one bad hour is the reactive detectors'.
    # Latency (5 × 1.0 + 2.7) / 6 ≈ 1.283 s < 1.3 s; score (5 × 0.9 + 0.65) / 6 ≈ 0.858
    # > 0.85.
    service = Service(
        latency=recently(wiggle(1.0, 0.05), 1.0, 1.0, 1.0, 1.0, 1.0, 2.7),
        score=recently(flat(0.9), 0.9, 0.9, 0.9, 0.9, 0.9, 0.65),
    )
    assert await run(vm, service) == []


async def test_change_in_the_good_direction_raises_nothing(vm: VMHandle) -> None:
    service = Service(
        latency=recently(wiggle(1.0, 0.05), 0.5),
        errors=recently(flat(0.05), 0.0),
        tokens=recently(flat(200.0), 100.0),
        score=recently(flat(0.7), 0.95),
    )
    assert await run(vm, service) == []


async def test_too_short_or_too_quiet_a_history_raises_nothing(vm: VMHandle) -> None:
    # 20 baseline hours (h = -26 … -7) are fewer than min_baseline_points (24); a service
    # with 3.6 calls an hour has no baseline hour with min_count (20) calls.
    short = degraded(first_hour=-26)
    quiet = degraded(name="quiet", rate=0.001)
    assert await run(vm, short, quiet) == []


async def test_without_span_metrics_only_the_scores_are_checked(vm: VMHandle) -> None:
    signals = await run(vm, degraded(), spans=False)

    assert [(s.subject, s.evidence["spanmetrics"]) for s in signals] == [
        ("mean_score:faithfulness", None)
    ]
