"""The overview's GenAI numbers (time to first token, output tokens, scores) and its ranges.

Expected values are worked out by hand from counters that grow at constant rates, over
windows that samples cover fully, where Prometheus' and VictoriaMetrics' rate() agree with
the arithmetic; against a real Prometheus only ratios (quantiles, mean scores) are exact
and a rate is exact to the scrape's timing jitter.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable

import pytest
from aiohttp import web

from proveai_agent.api.routes import RANGES
from proveai_agent.metrics.derive import SCORE_BUCKETS, TTFT_BUCKETS
from proveai_agent.stack.native import free_port
from proveai_agent.watch.overview import overview, series_step
from stackfix import (
    PrometheusHandle,
    Sample,
    VMHandle,
    counter_samples,
    exposition,
    histogram_samples,
)

NOW = float(int(time.time()) // 60 * 60 - 600)
DAY = 86400
CALLS = "llm_traces_span_metrics_calls_total"
DURATION = "llm_traces_span_metrics_duration_seconds"
TTFT = "llm_gen_ai_time_to_first_token_seconds"
TOKENS = "llm_gen_ai_tokens_total"
SCORE = "llm_gen_ai_evaluation_score"


def spans(
    service: str, start: float, end: float, ok_rps: float, error_rps: float, step_s: float = 15
) -> list[Sample]:
    """Server spans of one service, every one within 0.1 s."""
    labels = {"service_name": service, "span_name": "chat", "span_kind": "SPAN_KIND_SERVER"}
    samples = counter_samples(
        CALLS, {**labels, "status_code": "STATUS_CODE_OK"}, [(start, end, ok_rps)], step_s
    )
    samples += counter_samples(
        CALLS, {**labels, "status_code": "STATUS_CODE_ERROR"}, [(start, end, error_rps)], step_s
    )
    samples += histogram_samples(
        DURATION, labels, [(start, end, [(ok_rps + error_rps, 0.05)])], [0.1, 0.5, 1.0], step_s
    )
    return samples


def genai(service: str, start: float, end: float) -> list[Sample]:
    """rag-api's GenAI series from `start` to `end`.

    - time to first token: 0.5 a second at 0.2 s and 0.5 a second at 0.8 s;
    - tokens: output 30/s on m-1 and 10/s on m-2, input 500/s on m-1;
    - relevance: 0.5 scores a second, all 0.8; groundedness: 0.2 a second at 0.9 and 0.2
      a second at 0.5.
    """
    samples = histogram_samples(
        TTFT,
        {"service_name": service, "gen_ai_request_model": "m-1"},
        [(start, end, [(0.5, 0.2), (0.5, 0.8)])],
        TTFT_BUCKETS,
    )
    for model, kind, rate in (("m-1", "output", 30.0), ("m-2", "output", 10.0)):
        samples += counter_samples(
            TOKENS,
            {"service_name": service, "gen_ai_request_model": model, "gen_ai_token_type": kind},
            [(start, end, rate)],
        )
    samples += counter_samples(
        TOKENS,
        {"service_name": service, "gen_ai_request_model": "m-1", "gen_ai_token_type": "input"},
        [(start, end, 500.0)],
    )
    for name, mix in (("relevance", [(0.5, 0.8)]), ("groundedness", [(0.2, 0.9), (0.2, 0.5)])):
        samples += histogram_samples(
            SCORE,
            {"service_name": service, "gen_ai_evaluation_name": name},
            [(start, end, mix)],
            SCORE_BUCKETS,
        )
    return samples


def stopped_coherence(service: str) -> list[Sample]:
    """coherence scores (0.6 a second, all 0.7) that stopped 20 minutes before NOW."""
    return histogram_samples(
        SCORE,
        {"service_name": service, "gen_ai_evaluation_name": "coherence"},
        [(NOW - 1800, NOW - 1200, [(0.6, 0.7)]), (NOW - 1200, NOW, [(0.0, 0.7)])],
        SCORE_BUCKETS,
    )


def by_service(doc: dict) -> dict[str, dict]:
    return {s["service"]: s for s in doc["services"]}


def test_every_range_of_the_console_is_accepted() -> None:
    assert RANGES == {
        "15m": 15 * 60,
        "1h": 3600,
        "6h": 6 * 3600,
        "24h": DAY,
        "7d": 7 * DAY,
        "30d": 30 * DAY,
        "90d": 90 * DAY,
        "365d": 365 * DAY,
    }


def test_the_series_step_grows_with_the_range() -> None:
    # About 120 points: 15 m and 1 h are held at the 15 s floor (60 and 240 points).
    assert series_step(15 * 60) == 15
    assert series_step(3600) == 30
    assert series_step(7 * DAY) == 5040
    assert series_step(365 * DAY) == 262800


@pytest.mark.integration
async def test_ttft_tokens_and_scores_per_service_with_their_series(vm: VMHandle) -> None:
    """By hand, over the last 5 minutes (300 s):

    - TTFT: 300 observations, 150 at most 0.25 s and 150 in (0.5, 1]; p95 is rank 285,
      0.5 + 0.5 × (285 − 150) / (300 − 150) = 0.95 s;
    - output tokens: 30 + 10 = 40 a second (input tokens are not output);
    - relevance mean 0.8; groundedness (0.2 × 0.9 + 0.2 × 0.5) / 0.4 = 0.7;
    - coherence had no score in the window: None, never 0, yet it is named.
    embedder sends spans only: None for TTFT and tokens, no evaluations.
    """
    start = NOW - 1800
    samples = spans("rag-api", start, NOW, 1.8, 0.2) + spans("embedder", start, NOW, 1.0, 0.0)
    samples += genai("rag-api", start, NOW) + stopped_coherence("rag-api")
    vm.import_prometheus(exposition(samples))

    doc = await overview(None, vm.source(), NOW, range_s=1800)

    assert (doc["read_from"], doc["range_s"], doc["step_s"]) == ("victoriametrics", 1800, 15)
    rag, embedder = by_service(doc)["rag-api"], by_service(doc)["embedder"]
    assert rag["rate_rps"] == pytest.approx(2.0)
    assert rag["error_ratio"] == pytest.approx(0.1)
    assert rag["ttft_p95_s"] == pytest.approx(0.95)
    assert rag["output_tokens_per_s"] == pytest.approx(40.0)
    assert rag["quality"] == {
        "coherence": None,
        "groundedness": pytest.approx(0.7),
        "relevance": pytest.approx(0.8),
    }

    series = rag["series"]
    assert series["ttft_p95_s"][-1] == [NOW, pytest.approx(0.95)]
    assert series["output_tokens_per_s"][-1] == [NOW, pytest.approx(40.0)]
    assert series["error_ratio"][-1] == [NOW, pytest.approx(0.1)]
    assert series["quality"]["relevance"][-1] == [NOW, pytest.approx(0.8)]
    assert series["quality"]["groundedness"][-1] == [NOW, pytest.approx(0.7)]
    # coherence: 0.7 while its window held scores (up to NOW − 1200 + 300), then no point.
    coherence = series["quality"]["coherence"]
    assert coherence and all(x == pytest.approx(0.7) for _, x in coherence)
    assert max(ts for ts, _ in coherence) < NOW - 1200 + 300

    assert embedder["rate_rps"] == pytest.approx(1.0)
    assert (embedder["ttft_p95_s"], embedder["output_tokens_per_s"]) == (None, None)
    assert embedder["quality"] == {}
    assert embedder["series"]["ttft_p95_s"] == []
    assert embedder["series"]["output_tokens_per_s"] == []
    assert embedder["series"]["quality"] == {}


@pytest.mark.integration
async def test_a_week_has_a_point_every_84_minutes_each_the_mean_of_its_step(
    vm: VMHandle,
) -> None:
    """Output tokens at 10 a second for six days, then 40 a second for the last day.

    7 d / 120 points = 5040 s a step; each point is the rate over the 5040 s before it, so
    a point whose step lies in the last day reads 40, one whose step lies before it 10,
    and one across the change a mix between them.
    """
    start, change = NOW - 7 * DAY, NOW - DAY
    samples = spans("rag-api", start, NOW, 1.0, 0.0, step_s=300)
    samples += counter_samples(
        TOKENS,
        {
            "service_name": "rag-api",
            "gen_ai_request_model": "m-1",
            "gen_ai_token_type": "output",
        },
        [(start, change, 10.0), (change, NOW, 40.0)],
        step_s=300,
    )
    vm.import_prometheus(exposition(samples))

    doc = await overview(None, vm.source(), NOW, range_s=7 * DAY)

    assert doc["step_s"] == 5040
    points = by_service(doc)["rag-api"]["series"]["output_tokens_per_s"]
    stamps = [ts for ts, _ in points]
    assert all(b - a == 5040 for a, b in itertools.pairwise(stamps))
    assert len(points) >= 115
    for ts, x in points:
        if ts - 5040 >= change:
            assert x == pytest.approx(40.0), ts
        elif ts <= change and ts - 5040 >= start:
            assert x == pytest.approx(10.0), ts
        else:
            assert 10.0 <= x <= 40.0 or math.isclose(x, 10.0), ts
    assert by_service(doc)["rag-api"]["output_tokens_per_s"] == pytest.approx(40.0)


@pytest.mark.integration
async def test_a_month_is_read_from_victoriametrics_and_says_so(vm_factory) -> None:
    short_term, long_term = vm_factory(), vm_factory()
    start = NOW - 1800
    short_term.import_prometheus(exposition(spans("rag-api", start, NOW, 2.0, 0.0)))
    long_term.import_prometheus(
        exposition(spans("rag-api", start, NOW, 1.0, 0.0) + genai("rag-api", start, NOW))
    )
    prometheus = short_term.source("prometheus")
    victoriametrics = long_term.source("victoriametrics")

    hour = await overview(prometheus, victoriametrics, NOW, range_s=3600)
    month = await overview(prometheus, victoriametrics, NOW, range_s=30 * DAY)

    assert hour["read_from"] == "prometheus"
    assert by_service(hour)["rag-api"]["rate_rps"] == pytest.approx(2.0)
    assert by_service(hour)["rag-api"]["output_tokens_per_s"] is None
    assert month["read_from"] == "victoriametrics"
    assert month["step_s"] == 21600
    assert by_service(month)["rag-api"]["rate_rps"] == pytest.approx(1.0)
    assert by_service(month)["rag-api"]["output_tokens_per_s"] == pytest.approx(40.0)


def genai_body(t0: float) -> Callable[[], str]:
    """What the agent's /metrics would show: values computed from the time of the scrape.

    Server spans at 2 a second, all in (0.1, 0.5]; TTFT 1 a second, all in (0.25, 0.5];
    output tokens 40 a second; relevance 0.5 scores a second, all 0.75.
    """

    def body() -> str:
        t = time.time() - t0
        span = 'service_name="svc",span_name="op",span_kind="SPAN_KIND_SERVER"'
        ok = f'{span},status_code="STATUS_CODE_OK"'
        calls, ttft, scores = 2 * t, 1 * t, 0.5 * t
        lines = [
            f"{CALLS}{{{ok}}} {calls}",
            f'{DURATION}_bucket{{{span},le="0.1"}} 0',
            f'{DURATION}_bucket{{{span},le="0.5"}} {calls}',
            f'{DURATION}_bucket{{{span},le="+Inf"}} {calls}',
            f"{DURATION}_sum{{{span}}} {0.3 * calls}",
            f"{DURATION}_count{{{span}}} {calls}",
            f'{TTFT}_bucket{{service_name="svc",gen_ai_request_model="m",le="0.25"}} 0',
            f'{TTFT}_bucket{{service_name="svc",gen_ai_request_model="m",le="0.5"}} {ttft}',
            f'{TTFT}_bucket{{service_name="svc",gen_ai_request_model="m",le="+Inf"}} {ttft}',
            f'{TOKENS}{{service_name="svc",gen_ai_request_model="m",'
            f'gen_ai_token_type="output"}} {40 * t}',
            f'{SCORE}_sum{{service_name="svc",gen_ai_evaluation_name="relevance"}} '
            f"{0.75 * scores}",
            f'{SCORE}_count{{service_name="svc",gen_ai_evaluation_name="relevance"}} {scores}',
        ]
        return "\n".join(lines) + "\n"

    return body


@pytest.mark.integration
async def test_overview_reads_the_genai_series_that_a_real_prometheus_scraped(
    prometheus_factory: Callable[..., PrometheusHandle],
) -> None:
    """By hand: TTFT all in (0.25, 0.5] gives p95 = 0.25 + 0.25 × 0.95 = 0.4875 s whatever
    the extrapolation; the mean score is 0.75 (sum and count grow together). Output tokens
    grow 20 times as fast as calls, sampled by the same scrapes: until samples cover the
    whole 5-minute window rate() reads less than 40 a second, but always 20 times the rate
    of calls over the same window.
    """
    body = genai_body(time.time() - 1.0)
    at = time.time()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=body(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        prom = await asyncio.to_thread(prometheus_factory, f"127.0.0.1:{port}", interval_s=1)
        source = prom.source()
        deadline = time.monotonic() + 30
        svc: dict = {}
        while time.monotonic() < deadline:
            at = time.time()
            doc = await overview(source, None, at, range_s=900)
            svc = by_service(doc).get("svc", {})
            if svc.get("ttft_p95_s") and svc["series"]["ttft_p95_s"]:
                break
            await asyncio.sleep(0.5)
    finally:
        await runner.cleanup()

    assert doc["read_from"] == "prometheus"
    assert svc["p95_s"] == pytest.approx(0.48)
    assert svc["ttft_p95_s"] == pytest.approx(0.4875)
    assert svc["quality"] == {"relevance": pytest.approx(0.75)}
    [calls] = await source.query(f"sum(rate({CALLS}[300s]))", at)
    assert svc["output_tokens_per_s"] == pytest.approx(20 * float(calls["value"][1]))
    assert svc["output_tokens_per_s"] > 0
    assert svc["series"]["ttft_p95_s"][-1][1] == pytest.approx(0.4875)
    assert svc["series"]["quality"]["relevance"][-1][1] == pytest.approx(0.75)
