"""Error-spike and latency-regression detectors on history backfilled into VictoriaMetrics.

Each case is one service and span with a 30-minute baseline and a 60-second current
window ending at NOW (the detector's default configuration). Rates change only at
minute boundaries, so every window's value is the rate of one segment, known by hand.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from proveai_agent.config import DetectorConfig
from proveai_agent.signals import Signal
from proveai_agent.watch.detectors import evaluate, robust_baseline, severity
from proveai_agent.watch.schemes import detect
from stackfix import Mix, VMHandle, counter_samples, exposition, histogram_samples

pytestmark = pytest.mark.integration

NOW = float(int(time.time()) // 60 * 60 - 600)
START = NOW - 2400
CUT = NOW - 60
BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300)
CALLS = "llm_traces_span_metrics_calls_total"
DURATION = "llm_traces_span_metrics_duration_seconds"
LABELS = {"service_name": "rag-api", "span_name": "chat", "span_kind": "SPAN_KIND_SERVER"}
OK, ERROR = "STATUS_CODE_OK", "STATUS_CODE_ERROR"


def history(
    ok: Sequence[tuple[float, float, float]],
    errors: Sequence[tuple[float, float, float]] = (),
    latency: Sequence[tuple[float, float, Mix]] = (),
    calls: str = CALLS,
    duration: str = DURATION,
    span_label: str = "span_name",
    unit: float = 1.0,
) -> str:
    """Counters for OK and error calls and a latency histogram (latencies in seconds)."""
    labels = {**LABELS}
    labels[span_label] = labels.pop("span_name")
    samples = counter_samples(calls, {**labels, "status_code": OK}, ok)
    if errors:
        samples += counter_samples(calls, {**labels, "status_code": ERROR}, errors)
    if latency:
        in_unit = [(s, e, [(r, lat * unit) for r, lat in mix]) for s, e, mix in latency]
        samples += histogram_samples(duration, labels, in_unit, [b * unit for b in BUCKETS])
    return exposition(samples)


async def run(vm: VMHandle, text: str, config: DetectorConfig | None = None) -> list[Signal]:
    vm.import_prometheus(text)
    source = vm.source()
    scheme = await detect(source, NOW)
    assert scheme is not None
    # Baseline points one window apart, so that the hand-computed points do not overlap.
    return await evaluate(source, scheme, NOW, config or DetectorConfig(baseline_step_s=60))


def minutes(start: float, rates: Sequence[float]) -> list[tuple[float, float, float]]:
    """One segment per minute from `start`, at each of `rates` in turn."""
    return [(start + 60 * i, start + 60 * (i + 1), r) for i, r in enumerate(rates)]


async def test_error_spike_fires_with_its_class_and_evidence(vm: VMHandle) -> None:
    text = history(
        ok=[(START, CUT, 1.98), (CUT, NOW, 1.0)],
        errors=[(START, CUT, 0.02), (CUT, NOW, 1.0)],
    )
    signals = await run(vm, text)

    assert [(s.kind, s.failure_class, s.trigger) for s in signals] == [
        ("error_spike", "ERROR_SPIKE", "anomaly_detection")
    ]
    spike = signals[0]
    assert (spike.service, spike.span_name, spike.at) == ("rag-api", "chat", NOW)
    ev = spike.evidence
    # 60 errors of 120 calls now; 1 % in every baseline minute, so MAD 0 and the
    # threshold is the 5 % floor; 0.5 / 0.05 = 10 times the threshold.
    assert ev["current"] == pytest.approx(0.5)
    assert ev["baseline_median"] == pytest.approx(0.01)
    assert ev["baseline_mad"] == pytest.approx(0.0, abs=1e-9)
    assert ev["baseline_points"] == 30
    assert ev["threshold"] == pytest.approx(0.05)
    assert ev["window_s"] == 60
    assert ev["traffic"]["calls"] == pytest.approx(120)
    assert ev["traffic"]["rps"] == pytest.approx(2.0)
    assert ev["traffic"]["errors"] == pytest.approx(60)
    assert 'status_code="STATUS_CODE_ERROR"' in ev["query"]
    assert 'service_name="rag-api"' in ev["query"] and 'span_name="chat"' in ev["query"]
    assert spike.severity == "critical"


async def test_error_spike_fires_when_the_baseline_had_no_errors(vm: VMHandle) -> None:
    # The error series appears (at zero) only a minute before the spike, as a counter
    # that is created at the first error does; missing baseline points count as 0 %.
    text = history(
        ok=[(START, CUT, 2.0), (CUT, NOW, 1.4)],
        errors=[(CUT - 60, CUT, 0.0), (CUT, NOW, 0.6)],
    )
    signals = await run(vm, text)

    assert [s.kind for s in signals] == ["error_spike"]
    assert signals[0].evidence["current"] == pytest.approx(0.3)
    assert signals[0].evidence["baseline_median"] == 0.0


def quiet_window(failed: int) -> str:
    """A baseline with 0.4 % errors, then 13 calls in the window of which `failed` fail."""
    return history(
        ok=[(START, CUT, 0.996), (CUT, NOW, (13 - failed) / 60)],
        errors=[(START, CUT, 0.004), (CUT, NOW, failed / 60)],
    )


async def test_one_failure_in_a_quiet_window_is_not_a_spike(vm: VMHandle) -> None:
    # 1 of 13 calls failed: 7.7 %, above the 5 % floor and the baseline's 0.4 %, but it is
    # one failed call, fewer than error_min_errors (3).
    assert await run(vm, quiet_window(1)) == []


async def test_three_failures_in_the_same_quiet_window_are_a_spike(vm: VMHandle) -> None:
    signals = await run(vm, quiet_window(3))
    assert [s.kind for s in signals] == ["error_spike"]
    assert signals[0].evidence["traffic"]["errors"] == pytest.approx(3)
    assert signals[0].evidence["current"] == pytest.approx(3 / 13)


async def test_latency_regression_fires_on_p95(vm: VMHandle) -> None:
    text = history(
        ok=[(START, NOW, 2.0)],
        latency=[(START, CUT, [(2.0, 0.8)]), (CUT, NOW, [(2.0, 3.0)])],
    )
    signals = await run(vm, text)

    assert [(s.kind, s.failure_class) for s in signals] == [
        ("latency_regression", "LATENCY_REGRESS")
    ]
    ev = signals[0].evidence
    # All calls in (0.5, 1] before, in (1, 5] now: p95 0.5 + 0.5 × 0.95 → 1 + 4 × 0.95.
    assert ev["statistic"] == "p95_s"
    assert ev["baseline_median"] == pytest.approx(0.975)
    assert ev["current"] == pytest.approx(4.8)
    assert ev["threshold"] == pytest.approx(2 * 0.975)
    assert ev["statistics"]["mean_s"]["current"] == pytest.approx(3.0)
    assert ev["statistics"]["mean_s"]["baseline_median"] == pytest.approx(0.8)
    assert signals[0].severity == "high"  # 4.8 / 1.95 ≈ 2.5


async def test_latency_regression_in_milliseconds_is_reported_in_seconds(vm: VMHandle) -> None:
    text = history(
        ok=[(START, NOW, 2.0)],
        latency=[(START, CUT, [(2.0, 0.8)]), (CUT, NOW, [(2.0, 3.0)])],
        calls="calls_total",
        duration="latency",
        span_label="operation",
        unit=1000.0,
    )
    signals = await run(vm, text)

    assert [s.kind for s in signals] == ["latency_regression"]
    assert signals[0].span_name == "chat"
    assert signals[0].evidence["current"] == pytest.approx(4.8)
    assert signals[0].evidence["query"].endswith("* 0.001")


async def test_regression_beyond_the_top_bucket_fires_from_the_mean(vm: VMHandle) -> None:
    text = history(
        ok=[(START, NOW, 1.0)],
        latency=[(START, CUT, [(1.0, 200.0)]), (CUT, NOW, [(1.0, 900.0)])],
    )
    signals = await run(vm, text)

    assert [s.kind for s in signals] == ["latency_regression"]
    ev = signals[0].evidence
    # p95 goes from 120 + 180 × 0.95 = 291 s to the top finite bound, 300 s: no regression
    # by p95; the mean goes from 200 s to 900 s, above 2 × 200 s.
    assert ev["statistics"]["p95_s"]["baseline_median"] == pytest.approx(291)
    assert ev["statistics"]["p95_s"]["current"] == pytest.approx(300)
    assert ev["statistic"] == "mean_s"
    assert ev["current"] == pytest.approx(900)
    assert ev["threshold"] == pytest.approx(400)


async def test_steady_traffic_raises_nothing(vm: VMHandle) -> None:
    text = history(
        ok=[(START, NOW, 1.98)],
        errors=[(START, NOW, 0.02)],
        latency=[(START, NOW, [(1.5, 0.3), (0.5, 2.0)])],
    )
    assert await run(vm, text) == []


async def test_traffic_below_the_guard_raises_nothing(vm: VMHandle) -> None:
    # 0.04 rps now is 2.4 calls in the window: below min_calls (5) and min_rps (0.05).
    text = history(
        ok=[(START, CUT, 1.98), (CUT, NOW, 0.02)],
        errors=[(START, CUT, 0.02), (CUT, NOW, 0.02)],
        latency=[(START, CUT, [(2.0, 0.3)]), (CUT, NOW, [(0.04, 30.0)])],
    )
    assert await run(vm, text) == []


async def test_a_too_short_baseline_raises_nothing(vm: VMHandle) -> None:
    # History starts 90 s before NOW: one baseline window, fewer than min_baseline_points.
    start = NOW - 90
    text = history(
        ok=[(start, CUT, 2.0), (CUT, NOW, 1.0)],
        errors=[(start, CUT, 0.0), (CUT, NOW, 1.0)],
        latency=[(start, CUT, [(2.0, 0.3)]), (CUT, NOW, [(2.0, 30.0)])],
    )
    assert await run(vm, text) == []


WIGGLE = [0.08, 0.10, 0.12] * 10  # error ratio per baseline minute: median 0.10, MAD 0.02


def wiggling(current_ratio: float) -> str:
    rates = [*WIGGLE, current_ratio]
    return history(
        ok=[(START, NOW - 1860, 2.0), *minutes(NOW - 1860, [2.0 * (1 - r) for r in rates])],
        errors=[(START, NOW - 1860, 0.2), *minutes(NOW - 1860, [2.0 * r for r in rates])],
    )


async def test_a_wiggle_within_the_mad_band_raises_nothing(vm: VMHandle) -> None:
    # Threshold 0.10 + 4 × 1.4826 × 0.02 ≈ 0.219; 0.15 is above every baseline minute
    # and above the 5 % floor, but inside the band.
    assert await run(vm, wiggling(0.15)) == []


async def test_beyond_the_mad_band_fires(vm: VMHandle) -> None:
    signals = await run(vm, wiggling(0.30))

    assert [s.kind for s in signals] == ["error_spike"]
    ev = signals[0].evidence
    assert ev["baseline_median"] == pytest.approx(0.10)
    assert ev["baseline_mad"] == pytest.approx(0.02)
    assert ev["threshold"] == pytest.approx(0.10 + 4 * 1.4826 * 0.02)
    assert signals[0].severity == "medium"  # 0.30 / 0.219 ≈ 1.37


def test_robust_baseline_is_median_and_mad() -> None:
    base = robust_baseline([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (base.median, base.mad, base.points) == (3.0, 1.0, 5)
    assert base.sigma == pytest.approx(1.4826)


def test_severity_grows_with_the_ratio_to_the_threshold() -> None:
    assert [severity(r) for r in (1.1, 1.5, 2.5, 10.0)] == ["low", "medium", "high", "critical"]


async def test_p95_jumping_across_a_bucket_edge_with_a_steady_mean_raises_nothing(
    vm: VMHandle,
) -> None:
    # Baseline: 3 % of calls at 1.2 s, the rest at 0.9 s; now 8 % at 1.2 s. By hand p95
    # goes from 0.5 + 0.5 * 1.9 / 1.94 = 0.99 s to 1 + 4 * (1.9 - 1.84) / 0.16 = 2.5 s,
    # above 2 x 0.99, while the mean moves from 0.909 s to 0.924 s (1.6 %): no regression.
    text = history(
        ok=[(START, NOW, 2.0)],
        latency=[
            (START, CUT, [(1.94, 0.9), (0.06, 1.2)]),
            (CUT, NOW, [(1.84, 0.9), (0.16, 1.2)]),
        ],
    )
    assert await run(vm, text) == []


async def test_a_tail_regression_fires_on_p95_when_the_mean_rises_too(vm: VMHandle) -> None:
    # Now 10 % of calls take 4 s instead of 0.8 s. By hand: p95 from 0.5 + 0.5 * 0.95 =
    # 0.975 s to 1 + 4 * 0.5 = 3.0 s (threshold 1.95 s); the mean from 0.8 s to 1.12 s,
    # 1.4 times, below its own 2x threshold but enough to confirm the p95.
    text = history(
        ok=[(START, NOW, 2.0)],
        latency=[(START, CUT, [(2.0, 0.8)]), (CUT, NOW, [(1.8, 0.8), (0.2, 4.0)])],
    )
    signals = await run(vm, text)
    assert [(s.kind, s.evidence["statistic"]) for s in signals] == [
        ("latency_regression", "p95_s")
    ]
    assert signals[0].evidence["current"] == pytest.approx(3.0)


async def test_a_few_outliers_past_a_bucket_edge_are_not_a_regression(vm: VMHandle) -> None:
    # Baseline: 4 % of 2 calls/s at 1.2 s, the rest at 0.8 s: p95 0.5 + 0.5 * 114 / 115.2
    # = 0.995 s, mean 0.816 s. Now 8 % at 1.2 s and 2 % at 10 s: of 120 calls 108 are at
    # most 1 s and 117.6 at most 5 s, so p95 is 1 + 4 * (114 - 108) / 9.6 = 3.5 s (above
    # 2 x 0.995) and the mean 1.016 s (1.245 x, enough to confirm a p95). But the share at
    # or below 1 s fell only from 96 % to 90 %: 6 points, under the 10-point floor (four
    # standard errors are less: over both periods, 3480 and 120 calls, p = 0.958 and
    # 4 * sqrt(0.958 * 0.042 * (1/120 + 1/3480)) = 7.4 points). Nothing fires.
    text = history(
        ok=[(START, NOW, 2.0)],
        latency=[
            (START, CUT, [(1.92, 0.8), (0.08, 1.2)]),
            (CUT, NOW, [(1.8, 0.8), (0.16, 1.2), (0.04, 10.0)]),
        ],
    )
    assert await run(vm, text) == []


async def test_every_call_four_times_slower_moves_the_whole_distribution(
    vm: VMHandle,
) -> None:
    # 0.9 s calls now take 3.6 s: every one of the 120 calls left the ≤ 1 s bucket, a shift
    # of 100 points at the 1 s bound; p95 goes from 0.975 s to 1 + 4 * 0.95 = 4.8 s.
    text = history(
        ok=[(START, NOW, 2.0)],
        latency=[(START, CUT, [(2.0, 0.9)]), (CUT, NOW, [(2.0, 3.6)])],
    )
    (signal,) = await run(vm, text)
    shift = signal.evidence["shift"]
    assert signal.kind == "latency_regression"
    assert shift["bound_s"] == 1.0
    assert shift["shift"] == pytest.approx(1.0)
    assert shift["slower_calls"] == pytest.approx(120, rel=0.02)
    assert shift["moved"] is True
