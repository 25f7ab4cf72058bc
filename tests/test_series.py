"""The capped metric families: first-sample hiding, label caps and the exposition format."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from proveai_agent.metrics.derive import SpanMetrics
from proveai_agent.metrics.series import OVERFLOW, Registry
from proveai_agent.spans import Batch, Span


class _Wrap:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()


def scrape(registry: Registry) -> dict[str, float]:
    """One scrape, parsed into {'name{labels}': value}."""
    exposition = CollectorRegistry(auto_describe=False)
    exposition.register(_Wrap(registry))  # type: ignore[arg-type]
    values = {}
    for line in generate_latest(exposition).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_new_counter_is_zero_for_one_scrape_then_shows_its_value():
    registry = Registry(cap=10, hold_s=3600)
    calls = registry.counter("demo_calls", "", ("service_name",))
    calls.inc(("a",), 3)
    assert scrape(registry)['demo_calls_total{service_name="a"}'] == 0.0
    assert scrape(registry)['demo_calls_total{service_name="a"}'] == 3.0


def test_series_created_between_scrapes_is_hidden_for_the_next_scrape_only():
    registry = Registry(cap=10, hold_s=3600)
    calls = registry.counter("demo_calls", "", ("service_name",))
    calls.inc(("a",))
    scrape(registry)
    scrape(registry)
    calls.inc(("b",), 2)
    calls.inc(("a",))
    first = scrape(registry)
    assert first['demo_calls_total{service_name="a"}'] == 2.0
    assert first['demo_calls_total{service_name="b"}'] == 0.0
    assert scrape(registry)['demo_calls_total{service_name="b"}'] == 2.0


def test_hidden_series_shows_its_value_after_the_hold_time_even_without_scrapes():
    registry = Registry(cap=10, hold_s=0.0)
    calls = registry.counter("demo_calls", "", ("service_name",))
    calls.inc(("a",), 5)
    assert scrape(registry)['demo_calls_total{service_name="a"}'] == 5.0


def test_histogram_buckets_are_cumulative_and_le_is_inclusive():
    registry = Registry(cap=10, hold_s=0.0)
    hist = registry.histogram("demo_seconds", "", ("s",), (0.1, 0.5, 1))
    for value in (0.05, 0.1, 0.3, 0.5, 2.0):
        hist.observe(("x",), value)
    got = scrape(registry)
    # By hand: <=0.1 holds 0.05 and 0.1; <=0.5 adds 0.3, 0.5; <=1 adds none; +Inf adds 2.0.
    assert got['demo_seconds_bucket{le="0.1",s="x"}'] == 2
    assert got['demo_seconds_bucket{le="0.5",s="x"}'] == 4
    assert got['demo_seconds_bucket{le="1.0",s="x"}'] == 4
    assert got['demo_seconds_bucket{le="+Inf",s="x"}'] == 5
    assert got['demo_seconds_count{s="x"}'] == 5
    assert abs(got['demo_seconds_sum{s="x"}'] - 2.95) < 1e-9


def test_label_cap_sends_new_label_sets_to_one_overflow_series_and_counts_them():
    registry = Registry(cap=3, hold_s=0.0)
    calls = registry.counter("demo_calls", "", ("user",))
    for i in range(10):
        calls.inc((f"u{i}",))
    got = scrape(registry)
    kept = [k for k in got if k.startswith("demo_calls_total")]
    # Three label sets fit, the overflow series is the fourth and holds the other seven.
    assert len(kept) == 4
    assert got[f'demo_calls_total{{user="{OVERFLOW}"}}'] == 7
    assert got['proveai_series_overflow_total{metric="demo_calls"}'] == 7


def _span(**fields) -> Span:
    base = dict(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        parent_span_id=None,
        service="rag-api",
        name="chat",
        kind="SPAN_KIND_CLIENT",
        status="STATUS_CODE_OK",
        status_message="",
        start_ns=1_000_000_000,
        end_ns=1_750_000_000,
        model="gpt-4o-mini",
        operation="chat",
        provider="openai",
    )
    base.update(fields)
    return Span(**base)


def test_a_changing_process_pid_does_not_split_a_series():
    metrics = SpanMetrics(derive_spanmetrics=True, cap=100, hold_s=0.0)
    metrics.observe(
        Batch(spans=[_span(resource={"service.name": "rag-api", "process.pid": 1})]), "traces"
    )
    metrics.observe(
        Batch(spans=[_span(resource={"service.name": "rag-api", "process.pid": 2})]), "traces"
    )
    got = scrape(metrics.registry)
    calls = {
        k: v
        for k, v in got.items()
        if k.startswith("llm_traces_span_metrics_calls_total")
        and 'status_code="STATUS_CODE_OK"' in k
    }
    assert list(calls.values()) == [2.0]


def test_span_metrics_carry_exactly_the_design_labels():
    metrics = SpanMetrics(derive_spanmetrics=True, cap=100, hold_s=0.0)
    metrics.observe(Batch(spans=[_span(input_tokens=120, output_tokens=30)]), "traces")
    got = scrape(metrics.registry)
    key = (
        'llm_traces_span_metrics_calls_total{gen_ai_operation_name="chat",'
        'gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini",service_name="rag-api",'
        'span_kind="SPAN_KIND_CLIENT",span_name="chat",status_code="STATUS_CODE_OK"}'
    )
    assert got[key] == 1.0
    # The error sibling exists at zero so that the first error is an increase from 0.
    assert got[key.replace("STATUS_CODE_OK", "STATUS_CODE_ERROR")] == 0.0
    assert (
        got[
            'llm_gen_ai_tokens_total{gen_ai_request_model="gpt-4o-mini",gen_ai_token_type="input",'
            'service_name="rag-api"}'
        ]
        == 120.0
    )
    # 0.75 s lands in the 1 s bucket and not in the 0.5 s one.
    bucket = key.replace("calls_total", "duration_seconds_bucket")
    assert got[bucket.replace("service_name=", 'le="1.0",service_name=')] == 1.0
    assert got[bucket.replace("service_name=", 'le="0.5",service_name=')] == 0.0


def test_missing_usage_counts_no_tokens():
    metrics = SpanMetrics(derive_spanmetrics=True, cap=100, hold_s=0.0)
    metrics.observe(Batch(spans=[_span(input_tokens=None, output_tokens=None)]), "traces")
    got = scrape(metrics.registry)
    assert not [k for k in got if k.startswith("llm_gen_ai_tokens_total")]


def test_behind_a_collector_no_span_metrics_are_derived():
    metrics = SpanMetrics(derive_spanmetrics=False, cap=100, hold_s=0.0)
    metrics.observe(Batch(spans=[_span(input_tokens=5)]), "traces")
    got = scrape(metrics.registry)
    assert not [k for k in got if k.startswith("llm_traces_span_metrics")]
    assert [k for k in got if k.startswith("llm_gen_ai_tokens_total")]


def test_a_read_by_something_other_than_a_scraper_does_not_use_up_the_hidden_zero():
    registry = Registry(cap=10, hold_s=3600)
    calls = registry.counter("demo_calls", "", ("service_name",))
    calls.inc(("a",), 4)
    registry.scraped_by("curl/8.5.0")
    assert scrape(registry)['demo_calls_total{service_name="a"}'] == 0.0
    # Prometheus' first scrape still sees the zero, its second one the value.
    registry.scraped_by("Prometheus/2.42.0")
    assert scrape(registry)['demo_calls_total{service_name="a"}'] == 0.0
    registry.scraped_by("Prometheus/2.42.0")
    assert scrape(registry)['demo_calls_total{service_name="a"}'] == 4.0


def test_a_batch_of_mixed_spans_counts_each_label_set_on_its_own():
    # Five spans, two label sets interleaved, each with its own duration and usage.
    metrics = SpanMetrics(derive_spanmetrics=True, cap=100, hold_s=0.0)
    ms = 1_000_000
    spans = [
        _span(end_ns=1_000_000_000 + 100 * ms, input_tokens=10, output_tokens=1),
        _span(status="STATUS_CODE_ERROR", end_ns=1_000_000_000 + 3000 * ms),
        _span(end_ns=1_000_000_000 + 700 * ms, input_tokens=20, output_tokens=2, ttft_s=0.2),
        _span(status="STATUS_CODE_ERROR", end_ns=1_000_000_000 + 20 * ms, input_tokens=5),
        _span(end_ns=1_000_000_000 + 200 * ms, ttft_s=0.4),
    ]
    metrics.observe(Batch(spans=spans), "traces")
    got = scrape(metrics.registry)
    ok = (
        'gen_ai_operation_name="chat",gen_ai_provider_name="openai",'
        'gen_ai_request_model="gpt-4o-mini",service_name="rag-api",span_kind="SPAN_KIND_CLIENT",'
        'span_name="chat",status_code="STATUS_CODE_OK"'
    )
    error = ok.replace("STATUS_CODE_OK", "STATUS_CODE_ERROR")
    assert got[f"llm_traces_span_metrics_calls_total{{{ok}}}"] == 3
    assert got[f"llm_traces_span_metrics_calls_total{{{error}}}"] == 2
    histogram = "llm_traces_span_metrics_duration_seconds"
    # OK: 0.1 + 0.7 + 0.2 s; error: 3.0 + 0.02 s.
    assert got[f"{histogram}_sum{{{ok}}}"] == 0.1 + 0.7 + 0.2
    assert got[f"{histogram}_sum{{{error}}}"] == 3.0 + 0.02
    assert got[f"{histogram}_count{{{ok}}}"] == 3
    under_half = 'le="0.5",service_name='
    assert got[f"{histogram}_bucket{{{ok.replace('service_name=', under_half)}}}"] == 2
    assert got[f"{histogram}_bucket{{{error.replace('service_name=', under_half)}}}"] == 1
    tokens = (
        'llm_gen_ai_tokens_total{gen_ai_request_model="gpt-4o-mini",'
        'gen_ai_token_type="%s",service_name="rag-api"}'
    )
    assert got[tokens % "input"] == 10 + 20 + 5
    assert got[tokens % "output"] == 1 + 2
    assert got['proveai_ingest_spans_total{service_name="rag-api"}'] == 5
    ttft = [
        k for k in got if k.startswith("llm_gen_ai_time_to_first_token_seconds") and "_sum" in k
    ]
    assert [got[k] for k in ttft] == [0.2 + 0.4]
