"""Naming detection and overview numbers, on spanmetrics backfilled into VictoriaMetrics.

Expected values are computed by hand from perfectly linear counters over windows fully
covered by samples, where Prometheus' and VictoriaMetrics' rate() agree.
"""

from __future__ import annotations

import time

import pytest

from proveai_agent.watch.overview import overview
from proveai_agent.watch.promql import MetricsSource
from proveai_agent.watch.schemes import Scheme, detect, scheme_from_names
from stackfix import VMHandle, counter_samples, exposition, histogram_samples

NOW = float(int(time.time()) // 60 * 60 - 600)
DAY = 86400


def spanmetrics(
    calls: str, duration: str, span_label: str, ms: bool, rate_scale: float = 1.0
) -> str:
    """Three services over the last 5 minutes before NOW.

    rag-api / chat: 540 OK and 60 error calls in 300 s (2.0 rps, 10 % errors); half of
        them at most 100 ms, the other half in (100 ms, 500 ms].
    embedder / embed: 300 OK calls (1.0 rps), no error series; all at most 100 ms.
    idle / ping: counters that did not move in the last 10 minutes (no traffic).
    """
    unit = 1000.0 if ms else 1.0
    buckets = [0.1 * unit, 0.5 * unit, 1.0 * unit]
    start = NOW - 300
    samples = []

    def labels(service: str, span: str, **extra: str) -> dict[str, str]:
        return {
            "service_name": service,
            span_label: span,
            "span_kind": "SPAN_KIND_SERVER",
            **extra,
        }

    ok, err = "STATUS_CODE_OK", "STATUS_CODE_ERROR"
    s = rate_scale
    samples += counter_samples(
        calls, labels("rag-api", "chat", status_code=ok), [(start, NOW, 1.8 * s)]
    )
    samples += counter_samples(
        calls, labels("rag-api", "chat", status_code=err), [(start, NOW, 0.2 * s)]
    )
    samples += histogram_samples(
        duration,
        labels("rag-api", "chat"),
        [(start, NOW, [(1.0 * s, 0.05 * unit), (1.0 * s, 0.3 * unit)])],
        buckets,
    )
    samples += counter_samples(
        calls, labels("embedder", "embed", status_code=ok), [(start, NOW, 1.0 * s)]
    )
    samples += histogram_samples(
        duration, labels("embedder", "embed"), [(start, NOW, [(1.0 * s, 0.02 * unit)])], buckets
    )
    samples += counter_samples(
        calls, labels("idle", "ping", status_code=ok), [(NOW - 600, NOW, 0.0)], start_value=10
    )
    samples += histogram_samples(
        duration, labels("idle", "ping"), [(NOW - 600, NOW, [(0.0, 0.02 * unit)])], buckets
    )
    return exposition(samples)


NAMINGS = [
    # calls counter, histogram base, span label, milliseconds, expected prefix, origin
    ("calls_total", "latency", "operation", True, "calls_total", "processor"),
    ("calls_total", "duration_milliseconds", "span_name", True, "calls_total", "connector"),
    ("calls", "duration_seconds", "span_name", False, "calls", "connector"),
    (
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_milliseconds",
        "span_name",
        True,
        "traces_span_metrics",
        "connector",
    ),
    (
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_seconds",
        "span_name",
        False,
        "traces_span_metrics",
        "connector",
    ),
    (
        "llm_traces_span_metrics_calls_total",
        "llm_traces_span_metrics_duration_seconds",
        "span_name",
        False,
        "llm_traces_span_metrics",
        "connector",
    ),
    (
        "acme_prod_traces_span_metrics_calls_total",
        "acme_prod_traces_span_metrics_duration_milliseconds",
        "span_name",
        True,
        "acme_prod_traces_span_metrics",
        "connector",
    ),
]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("calls", "duration", "span_label", "ms", "prefix", "origin"),
    NAMINGS,
    ids=[f"{n[0]}+{n[1]}" for n in NAMINGS],
)
async def test_each_naming_is_detected_and_reported_in_seconds(
    vm: VMHandle, calls: str, duration: str, span_label: str, ms: bool, prefix: str, origin: str
) -> None:
    vm.import_prometheus(spanmetrics(calls, duration, span_label, ms))
    source = vm.source()

    scheme = await detect(source, NOW)
    assert scheme is not None
    assert (scheme.calls, scheme.duration, scheme.span_label) == (calls, duration, span_label)
    assert scheme.to_seconds == (0.001 if ms else 1.0)
    assert (scheme.name, scheme.origin) == (prefix, origin)

    doc = await overview(None, source, NOW)
    assert doc["spanmetrics"] == prefix
    by_service = {s["service"]: s for s in doc["services"]}
    assert sorted(by_service) == ["embedder", "idle", "rag-api"]

    rag = by_service["rag-api"]
    assert rag["rate_rps"] == pytest.approx(2.0)
    assert rag["error_ratio"] == pytest.approx(0.1)
    # 600 calls, 300 at most 0.1 s, 300 in (0.1, 0.5]: ranks 300, 570 and 594.
    assert rag["p50_s"] == pytest.approx(0.1)
    assert rag["p95_s"] == pytest.approx(0.1 + 0.4 * 270 / 300)
    assert rag["p99_s"] == pytest.approx(0.1 + 0.4 * 294 / 300)

    embedder = by_service["embedder"]
    assert embedder["rate_rps"] == pytest.approx(1.0)
    assert embedder["error_ratio"] == 0.0
    assert embedder["p95_s"] == pytest.approx(0.1 * 0.95)

    idle = by_service["idle"]
    assert idle["rate_rps"] == 0.0
    assert idle["error_ratio"] is None
    assert (idle["p50_s"], idle["p95_s"], idle["p99_s"]) == (None, None, None)


@pytest.mark.integration
async def test_overview_document_shape_and_series(vm: VMHandle) -> None:
    vm.import_prometheus(
        spanmetrics(
            "llm_traces_span_metrics_calls_total",
            "llm_traces_span_metrics_duration_seconds",
            "span_name",
            ms=False,
        )
    )
    doc = await overview(None, vm.source(), NOW, range_s=1800)

    assert set(doc) == {
        "at",
        "sources",
        "spanmetrics",
        "read_from",
        "range_s",
        "step_s",
        "services",
    }
    assert doc["at"] == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(NOW))
    assert doc["sources"] == {
        "prometheus": {"up": False, "error": "not configured"},
        "victoriametrics": {"up": True, "error": None},
    }
    rag = next(s for s in doc["services"] if s["service"] == "rag-api")
    assert set(rag) == {
        "service",
        "rate_rps",
        "error_ratio",
        "p50_s",
        "p95_s",
        "p99_s",
        "ttft_p95_s",
        "output_tokens_per_s",
        "quality",
        "series",
    }
    rates = rag["series"]["rate_rps"]
    assert rates and all(NOW - 1800 <= ts <= NOW for ts, _ in rates)
    assert rates[-1] == [NOW, pytest.approx(2.0)]
    assert rag["series"]["p95_s"][-1] == [NOW, pytest.approx(0.46)]


@pytest.mark.integration
async def test_no_spanmetrics_is_reported_as_none_not_zero_traffic(vm: VMHandle) -> None:
    samples = counter_samples("http_requests_total", {"code": "200"}, [(NOW - 300, NOW, 5.0)])
    samples += counter_samples(
        "rpc_calls_total", {"service_name": "x"}, [(NOW - 300, NOW, 5.0)]
    )
    vm.import_prometheus(exposition(samples))
    source = vm.source()

    assert await detect(source, NOW) is None
    doc = await overview(None, source, NOW)
    assert doc["spanmetrics"] is None
    assert doc["services"] == []
    assert doc["sources"]["victoriametrics"] == {"up": True, "error": None}


@pytest.mark.integration
async def test_prometheus_down_reads_victoriametrics_and_reports_the_failed_query(
    vm: VMHandle,
) -> None:
    vm.import_prometheus(spanmetrics("calls_total", "latency", "operation", ms=True))
    down = MetricsSource("prometheus", "http://127.0.0.1:9", timeout_s=2)

    doc = await overview(down, vm.source(), NOW)

    assert doc["spanmetrics"] == "calls_total"
    assert {s["service"] for s in doc["services"]} == {"embedder", "idle", "rag-api"}
    assert doc["sources"]["prometheus"]["up"] is False
    error = doc["sources"]["prometheus"]["error"]
    assert "label __name__ values" in error and "calls_total" in error
    assert "Connection refused" in error or "Max retries" in error
    assert doc["sources"]["victoriametrics"] == {"up": True, "error": None}


@pytest.mark.integration
async def test_ranges_past_prometheus_retention_are_read_from_victoriametrics(
    vm_factory,
) -> None:
    ours = ("llm_traces_span_metrics_calls_total", "llm_traces_span_metrics_duration_seconds")
    short_term, long_term = vm_factory(), vm_factory()
    short_term.import_prometheus(spanmetrics(*ours, "span_name", ms=False, rate_scale=1.0))
    long_term.import_prometheus(spanmetrics(*ours, "span_name", ms=False, rate_scale=0.5))
    prometheus = short_term.source("prometheus")
    victoriametrics = long_term.source("victoriametrics")

    recent = await overview(prometheus, victoriametrics, NOW, range_s=1800)
    months = await overview(prometheus, victoriametrics, NOW, range_s=16 * DAY)

    def rag_rate(doc: dict) -> float:
        return next(s["rate_rps"] for s in doc["services"] if s["service"] == "rag-api")

    assert rag_rate(recent) == pytest.approx(2.0)
    assert rag_rate(months) == pytest.approx(1.0)


def test_our_naming_is_preferred_when_several_are_present() -> None:
    names = [
        "calls_total",
        "latency_bucket",
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_milliseconds_bucket",
        "llm_traces_span_metrics_calls_total",
        "llm_traces_span_metrics_duration_seconds_bucket",
    ]
    scheme = scheme_from_names(names)
    assert scheme == Scheme(
        prefix="llm_traces_span_metrics_",
        calls="llm_traces_span_metrics_calls_total",
        duration="llm_traces_span_metrics_duration_seconds",
        span_label="span_name",
        to_seconds=1.0,
        origin="connector",
    )
    assert scheme.duration_bucket == "llm_traces_span_metrics_duration_seconds_bucket"


def test_an_unrelated_calls_counter_is_not_spanmetrics() -> None:
    assert scheme_from_names(["rpc_calls_total", "http_calls", "up"]) is None
    assert scheme_from_names([]) is None


def test_namespaced_calls_without_histogram_still_count() -> None:
    scheme = scheme_from_names(["traces_span_metrics_calls_total"])
    assert scheme is not None and scheme.duration is None


@pytest.mark.integration
async def test_requests_are_entry_spans_and_services_without_them_count_all_spans(
    vm: VMHandle,
) -> None:
    """shop: 1 rps of server spans (no errors, all <= 0.1 s) and 3 rps of client chat spans
    (0.5 rps errors, all in (0.1, 0.5]); batch: only internal spans, 1.8 rps OK + 0.2 error.

    By hand: shop's requests are its server spans: 1.0 rps, 0 % errors, and p95 inside the
    first bucket, 0.95 * 0.1 = 0.095 s; batch has no entry spans, so all of its spans count:
    2.0 rps, 0.2 / 2.0 = 10 % errors.
    """
    calls = "llm_traces_span_metrics_calls_total"
    duration = "llm_traces_span_metrics_duration_seconds"
    start = NOW - 300
    ok, err = "STATUS_CODE_OK", "STATUS_CODE_ERROR"

    def labels(service: str, span: str, kind: str, **extra: str) -> dict[str, str]:
        return {"service_name": service, "span_name": span, "span_kind": kind, **extra}

    server, client, internal = "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "SPAN_KIND_INTERNAL"
    buckets = [0.1, 0.5, 1.0]
    samples = counter_samples(
        calls, labels("shop", "POST /q", server, status_code=ok), [(start, NOW, 1.0)]
    )
    samples += histogram_samples(
        duration, labels("shop", "POST /q", server), [(start, NOW, [(1.0, 0.05)])], buckets
    )
    samples += counter_samples(
        calls, labels("shop", "chat", client, status_code=ok), [(start, NOW, 2.5)]
    )
    samples += counter_samples(
        calls, labels("shop", "chat", client, status_code=err), [(start, NOW, 0.5)]
    )
    samples += histogram_samples(
        duration, labels("shop", "chat", client), [(start, NOW, [(3.0, 0.3)])], buckets
    )
    samples += counter_samples(
        calls, labels("batch", "run", internal, status_code=ok), [(start, NOW, 1.8)]
    )
    samples += counter_samples(
        calls, labels("batch", "run", internal, status_code=err), [(start, NOW, 0.2)]
    )
    vm.import_prometheus(exposition(samples))

    doc = await overview(None, vm.source(), NOW, range_s=1800)
    by_service = {s["service"]: s for s in doc["services"]}
    assert by_service["shop"]["rate_rps"] == pytest.approx(1.0)
    assert by_service["shop"]["error_ratio"] == pytest.approx(0.0)
    assert by_service["shop"]["p95_s"] == pytest.approx(0.095)
    assert by_service["batch"]["rate_rps"] == pytest.approx(2.0)
    assert by_service["batch"]["error_ratio"] == pytest.approx(0.1)
