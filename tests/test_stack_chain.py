"""The whole stack for real, on free 127.0.0.1 ports: OTel SDK → Envoy (OTLP/HTTP, with a
key) → the project's collector → its span metrics scraped by Prometheus every second →
remote_write to VictoriaMetrics; the collector's raw traces → the agent, which derives no
span metrics itself (the collector already does), so nothing is counted twice.

Expected values, computed by hand from the spans sent, all of service chain-shop with one
span name, kind server and status unset (one series):

- batch A: 6 spans of 0.2 s, 3 of 0.7 s, 1 of 3 s (10 spans);
- batch B: 12 of 0.2 s, 6 of 0.7 s, 2 of 3 s (20 spans), sent once A was scraped.

Counted once: 30 calls. The cumulative buckets le 0.1 / 0.5 / 1 / 5 hold 0 / 18 / 27 / 30.
p95 is rank 0.95 × 30 = 28.5, inside (1, 5]: 1 + (5 − 1) × (28.5 − 27) / (30 − 27) = 3.0 s.

The watcher reads rates. The collector exposes a new series at zero for one flush before
its counts, so the first sample Prometheus holds is either that zero or batch A's counts
(0 / 6 / 9 / 10), which are half of B's (0 / 12 / 18 / 20). Either way every bucket's first
sample is the same fraction of its increase, Prometheus scales every bucket's rate by the
same extrapolation factor, and the quantile of the rates is that of the increase: from
zero, all 30 spans (3.0 s, as above); from A, batch B's 20: rank 0.95 × 20 = 19 inside
(1, 5]: 1 + 4 × (19 − 18) / (20 − 18) = 3.0 s.

Its request rate is rate() over 1 minute of the calls counter, which grew to 30.
Prometheus divides that increase by the sampled interval (first to last raw sample in the
window), stretches it toward each end of the window by the gap to that end when the gap is
under 1.1 average sample intervals and by half an interval otherwise (toward the start no
further than where the counter would reach zero), and divides by the 60 s window:
`prometheus_rate` below does this with the raw samples' timestamps read back from
Prometheus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from agentfix import OPERATOR_KEY
from proveai_agent.stack.native import (
    MissingBinary,
    NativeStack,
    build_collector,
    find_binary,
    find_envoy,
)
from proveai_agent.watch import schemes
from proveai_agent.watch.overview import overview
from proveai_agent.watch.promql import MetricsSource
from stackfix import promql, promql_scalar, wait_promql

pytestmark = pytest.mark.integration

ENVOY_KEY = "chain-envoy-key-0123456789abcdef"
SERVICE = "chain-shop"
MARKER = "chain-marker"
SPAN_NAME = "POST /chat"
CALLS = "llm_traces_span_metrics_calls_total"
BUCKET = "llm_traces_span_metrics_duration_seconds_bucket"
BATCH_A = [0.2] * 6 + [0.7] * 3 + [3.0] * 1
BATCH_B = [0.2] * 12 + [0.7] * 6 + [3.0] * 2
REFUSED_TRACE = "0c0ffee0000000000000000000000001"

Sent = list[tuple[str, str, float]]


@pytest.fixture(scope="module")
def collector_binary() -> Path:
    """otelcol-proveai, built once by stack/collector/build.sh (cached outside the clone)."""
    for name, env, package in (
        ("prometheus", "PROVEAI_PROMETHEUS_BIN", "prometheus"),
        ("victoria-metrics", "PROVEAI_VM_BIN", "victoria-metrics"),
    ):
        try:
            find_binary(name, env, package)
        except MissingBinary as exc:
            pytest.skip(str(exc))
    try:
        find_envoy()
        return build_collector()
    except MissingBinary as exc:
        pytest.skip(f"the collector or Envoy is not available: {exc}")


@pytest.fixture
async def chain(collector_binary: Path, agent_factory: Callable[..., Any], tmp_path: Path):
    agent = await agent_factory(derive_metrics=False)
    key_file = tmp_path / "agent.key"
    key_file.write_text(OPERATOR_KEY)
    stack = NativeStack(
        tmp_path / "stack",
        agent_target=agent.url.removeprefix("http://"),
        agent_key_file=key_file,
        scrape_interval_s=1,
        vm_latency_offset_s=1,
        vm_disable_cache=True,
        collector_binary=collector_binary,
        collector_flush_interval_s=1,
        agent_api_key=OPERATOR_KEY,
        envoy={"ENVOY_API_KEYS": ENVOY_KEY},
    )
    await asyncio.to_thread(stack.start)
    try:
        yield agent, stack
    finally:
        await asyncio.to_thread(stack.stop)
        assert not any(
            part.running
            for part in (stack.envoy, stack.collector, stack.prometheus, stack.victoriametrics)
            if part is not None
        )


def send(url: str, durations: list[float], service: str = SERVICE) -> Sent:
    """One server span per duration through the real SDK, with Envoy's key; the ids sent."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers={"X-API-Key": ENVOY_KEY})
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=512))
    tracer = provider.get_tracer("chain")
    end = time.time_ns()
    sent: Sent = []
    for duration in durations:
        span = tracer.start_span(
            SPAN_NAME,
            kind=SpanKind.SERVER,
            start_time=end - round(duration * 1e9),
            attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"},
        )
        span.end(end_time=end)
        context = span.get_span_context()
        sent.append((f"{context.trace_id:032x}", f"{context.span_id:016x}", duration))
    assert provider.force_flush(10_000)
    provider.shutdown()
    return sent


def refused_export() -> bytes:
    """Five more chain-shop spans in one protobuf export, for requests Envoy must refuse."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=SERVICE))
    )
    now = time.time_ns()
    for i in range(5):
        resource_spans.scope_spans.add().spans.append(
            PbSpan(
                trace_id=bytes.fromhex(REFUSED_TRACE),
                span_id=(i + 1).to_bytes(8, "big"),
                name=SPAN_NAME,
                kind=PbSpan.SPAN_KIND_SERVER,
                start_time_unix_nano=now - 200_000_000,
                end_time_unix_nano=now,
            )
        )
    return request.SerializeToString()


async def stored_spans(http: aiohttp.ClientSession, agent: Any, trace_id: str) -> list[dict]:
    async with http.get(
        f"{agent.url}/api/traces/{trace_id}", headers={"X-API-Key": OPERATOR_KEY}
    ) as resp:
        if resp.status == 404:
            return []
        assert resp.status == 200, await resp.text()
        return (await resp.json())["spans"]


async def wait_stored(
    http: aiohttp.ClientSession, agent: Any, sent: Sent, timeout_s: float = 20
) -> None:
    deadline = time.monotonic() + timeout_s
    missing = [trace for trace, _, _ in sent]
    while missing:
        missing = [t for t in missing if not await stored_spans(http, agent, t)]
        assert time.monotonic() < deadline, f"the agent never stored {missing}"
        if missing:
            await asyncio.sleep(0.2)


def prometheus_rate(points: list[tuple[int, float]], at_ms: int, range_s: float) -> float:
    """rate() of a counter without resets, from its raw samples in the window (timestamps
    in milliseconds, as Prometheus keeps them), as the module docstring describes."""
    (first_t, first_v), (last_t, last_v) = points[0], points[-1]
    increase = last_v - first_v
    sampled = (last_t - first_t) / 1000
    average = sampled / (len(points) - 1)
    to_start = (first_t - (at_ms - round(range_s * 1000))) / 1000
    to_end = (at_ms - last_t) / 1000
    if increase > 0 and first_v >= 0:
        to_start = min(to_start, sampled * first_v / increase)
    threshold = 1.1 * average
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    return increase * interval / sampled / range_s


async def test_spans_through_envoy_and_the_collector_become_metrics_and_stored_traces(
    chain, http
):
    agent, stack = chain
    assert stack.envoy is not None
    otlp = stack.envoy.url("otlp_http")
    prom, vm = stack.prometheus_url, stack.victoriametrics_url
    total = f'sum({CALLS}{{service_name="{SERVICE}"}})'
    p95 = f'histogram_quantile(0.95, sum by (le) ({BUCKET}{{service_name="{SERVICE}"}}))'

    sent = await asyncio.to_thread(send, otlp, BATCH_A)
    await wait_promql(prom, total, 10)
    sent += await asyncio.to_thread(send, otlp, BATCH_B)
    await wait_promql(prom, total, 30)

    # Counted once, by the collector: the agent's /metrics, also scraped, adds nothing.
    by_job = await asyncio.to_thread(
        promql, prom, f'sum by (job) ({CALLS}{{service_name="{SERVICE}"}})'
    )
    assert [(s["metric"]["job"], s["value"][1]) for s in by_job] == [("extra", "30")]
    assert await asyncio.to_thread(promql_scalar, prom, p95) == pytest.approx(3.0)

    # The same numbers reached VictoriaMetrics through remote_write.
    await wait_promql(vm, total, 30)
    assert await asyncio.to_thread(promql_scalar, vm, p95) == pytest.approx(3.0)

    # The agent stored every span, exactly as sent.
    await wait_stored(http, agent, sent)
    for trace_id, span_id, duration in sent:
        (span,) = await stored_spans(http, agent, trace_id)
        assert (span["span_id"], span["service"], span["name"]) == (span_id, SERVICE, SPAN_NAME)
        assert span["end_ns"] - span["start_ns"] == round(duration * 1e9)

    # The watcher finds the collector's naming and reports the service from Prometheus.
    await asyncio.sleep(1.5)
    now = round(time.time() - 1.0, 3)
    source = MetricsSource("prometheus", prom)
    long_term = MetricsSource("victoriametrics", vm)
    try:
        scheme = await schemes.detect(source, now)
        assert scheme is not None
        assert (scheme.calls, scheme.duration_bucket) == (CALLS, BUCKET)
        doc = await overview(source, long_term, now)
    finally:
        source.close()
        long_term.close()
    assert doc["spanmetrics"] == "llm_traces_span_metrics"
    (service,) = [s for s in doc["services"] if s["service"] == SERVICE]

    raw = await asyncio.to_thread(promql, prom, f'{CALLS}{{service_name="{SERVICE}"}}[1m]', now)
    (series,) = raw
    points = [(round(float(t) * 1000), float(v)) for t, v in series["values"]]
    assert points[0][1] in (0.0, 10.0)
    assert points[-1][1] == 30.0
    expected = prometheus_rate(points, round(now * 1000), 60)
    assert service["rate_rps"] == pytest.approx(expected, rel=1e-9)
    assert service["p95_s"] == pytest.approx(3.0)
    assert service["error_ratio"] == 0.0


async def test_without_a_key_envoy_answers_401_and_nothing_is_stored_or_counted(chain, http):
    agent, stack = chain
    assert stack.envoy is not None
    otlp = stack.envoy.url("otlp_http")
    prom = stack.prometheus_url
    total = f'sum({CALLS}{{service_name="{SERVICE}"}})'

    sent = await asyncio.to_thread(send, otlp, BATCH_A)
    await wait_promql(prom, total, 10)

    body = refused_export()
    protobuf = {"Content-Type": "application/x-protobuf"}
    for headers in ({}, {"X-API-Key": "chain-wrong-key-0123456789abcdef"},
                    {"X-API-Key": OPERATOR_KEY}):  # fmt: skip
        async with http.post(
            f"{otlp}/v1/traces", data=body, headers={**protobuf, **headers}
        ) as resp:
            assert (resp.status, await resp.text()) == (401, "missing or invalid API key\n")

    # A span sent with the key after the refused ones has come all the way through...
    marker = await asyncio.to_thread(send, otlp, [0.1], MARKER)
    await wait_promql(prom, f'sum({CALLS}{{service_name="{MARKER}"}})', 1)
    await wait_stored(http, agent, [*sent, *marker])

    # ...and the refused spans are neither counted nor stored.
    assert await asyncio.to_thread(promql_scalar, prom, total) == 10
    assert await stored_spans(http, agent, REFUSED_TRACE) == []
