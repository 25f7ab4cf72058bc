"""OTel SDK → agent → Prometheus (scrape) → VictoriaMetrics (remote_write), read by PromQL.

Expected values are computed by hand from the spans sent:

- batch A: 20 spans of 0.2 s, 10 of 0.7 s, 10 of 3 s (40 spans);
- batch B: 30 of 0.2 s, 15 of 0.7 s, 15 of 3 s (60 spans), sent after A was scraped.

Buckets (le) 0.5 / 1 / 5 then hold 50 / 75 / 100 of 100. p95 is rank 95, inside (1, 5]:
1 + (5 - 1) * (95 - 75) / (100 - 75) = 4.2 s. The same 4.2 s holds after batch A alone
(ranks 38 of 40: 1 + 4 * (38 - 30) / 10).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from agentfix import OPERATOR_KEY
from proveai_agent.stack.native import NativeStack
from stackfix import promql, promql_scalar, wait_promql

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("prometheus") and shutil.which("victoria-metrics")),
        reason="needs Debian's prometheus and victoria-metrics packages",
    ),
]

SERVICE = "e2e-shop"
CALLS = "llm_traces_span_metrics_calls_total"
BUCKET = "llm_traces_span_metrics_duration_seconds_bucket"


def send(
    url: str,
    durations: list[float],
    pid: int,
    name: str = "chat gpt-4o-mini",
    error: bool = False,
) -> None:
    """Send one span per duration with the real SDK, from a 'process' with the given pid."""
    resource = Resource.create(
        {"service.name": SERVICE, "process.pid": pid, "service.instance.id": f"i-{pid}"}
    )
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(
        endpoint=f"{url}/v1/traces", headers={"X-API-Key": OPERATOR_KEY}
    )
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=512))
    tracer = provider.get_tracer("e2e")
    end = time.time_ns()
    for duration in durations:
        span = tracer.start_span(
            name,
            kind=SpanKind.CLIENT,
            start_time=end - int(duration * 1e9),
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.provider.name": "openai",
            },
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, "503 Service Unavailable"))
        span.end(end_time=end)
    assert provider.force_flush(10_000)
    provider.shutdown()


@pytest.fixture
async def chain(agent_factory, tmp_path: Path):
    agent = await agent_factory()
    key_file = tmp_path / "scrape.key"
    key_file.write_text(OPERATOR_KEY)
    target = agent.url.removeprefix("http://")
    stack = NativeStack(
        tmp_path / "stack",
        agent_target=target,
        agent_key_file=key_file,
        scrape_interval_s=1,
        vm_latency_offset_s=1,
        vm_disable_cache=True,
    )
    await asyncio.to_thread(stack.start)
    try:
        yield agent, stack
    finally:
        await asyncio.to_thread(stack.stop)


async def test_sdk_spans_become_rate_and_p95_in_prometheus_and_victoriametrics(chain):
    agent, stack = chain
    prom, vm = stack.prometheus_url, stack.victoriametrics_url
    total = f'sum({CALLS}{{service_name="{SERVICE}"}})'

    await asyncio.to_thread(send, agent.url, [0.2] * 20 + [0.7] * 10 + [3.0] * 10, 101)
    await wait_promql(prom, total, 40)
    p95 = f'histogram_quantile(0.95, sum by (le) ({BUCKET}{{service_name="{SERVICE}"}}))'
    assert await asyncio.to_thread(promql_scalar, prom, p95) == pytest.approx(4.2)

    # A second process of the same service (another pid) adds to the same series.
    await asyncio.to_thread(send, agent.url, [0.2] * 30 + [0.7] * 15 + [3.0] * 15, 202)
    await wait_promql(prom, total, 100)
    assert await asyncio.to_thread(promql_scalar, prom, p95) == pytest.approx(4.2)
    series = await asyncio.to_thread(promql, prom, f'{CALLS}{{service_name="{SERVICE}"}}')
    assert len(series) == 2  # the OK-or-unset series and its error sibling, not one per pid

    # Request rate between the two scrapes around batch B, from the raw samples' times:
    # irate is (100 - 40) / (t_after - t_before) with no extrapolation.
    samples = await asyncio.to_thread(promql, prom, f"{total.removeprefix('sum(')[:-1]}[30s]")
    ok = next(s for s in samples if s["metric"]["status_code"] != "STATUS_CODE_ERROR")
    raw = ok["values"]
    points = [(float(t), float(v)) for t, v in raw]
    before = max(t for t, v in points if v == 40)
    after = min(t for t, v in points if v == 100)
    expected_rps = (100 - 40) / (after - before)
    irate = f'sum(irate({CALLS}{{service_name="{SERVICE}"}}[5s]))'
    assert await asyncio.to_thread(promql_scalar, prom, irate, after) == pytest.approx(
        expected_rps
    )

    # The same series reached VictoriaMetrics through remote_write.
    await wait_promql(vm, total, 100)
    assert await asyncio.to_thread(promql_scalar, vm, p95) == pytest.approx(4.2)


async def test_first_errors_of_a_new_series_are_counted_by_increase(chain):
    agent, stack = chain
    prom, vm = stack.prometheus_url, stack.victoriametrics_url
    # A span name never seen before: its series is born with these five errors.
    await asyncio.to_thread(send, agent.url, [0.3] * 5, 303, name="rerank", error=True)
    labels = f'service_name="{SERVICE}",span_name="rerank",status_code="STATUS_CODE_ERROR"'
    selector = f"{CALLS}{{{labels}}}"
    await wait_promql(prom, f"sum({selector})", 5)
    raw = (await asyncio.to_thread(promql, prom, f"{selector}[1m]"))[0]["values"]
    assert float(raw[0][1]) == 0.0  # the series was first scraped at zero
    # increase() over a window holding every sample counts the five errors.
    increase = f"sum(increase({selector}[1m]))"
    assert await asyncio.to_thread(promql_scalar, prom, increase) >= 5
    await wait_promql(vm, f"sum({selector})", 5)
    assert await asyncio.to_thread(promql_scalar, vm, increase) >= 5
