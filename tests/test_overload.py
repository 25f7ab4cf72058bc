"""Overload and cardinality: refused with Retry-After, bounded memory, nothing lost.

Beyond its bound the span store refuses writes with 503 and Retry-After instead of queueing
without end; a client that honours Retry-After (a small sender here, the OpenTelemetry SDK's
OTLP/HTTP exporter) then gets every span stored. A flood of distinct label values is capped
by the metric families, shows on /metrics as the overflow series and logs once.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from agentfix import OPERATOR_KEY, READ_KEY
from proveai_agent.config import load as load_config

PROTOBUF = {"Content-Type": "application/x-protobuf", "X-API-Key": OPERATOR_KEY}
START_NS = 1_700_000_000_000_000_000


def traces_request(
    trace_ids: Sequence[bytes], names: Sequence[str] | None = None, padding: int = 0
) -> bytes:
    """One request with a span per trace id (span names `names`, or "step")."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="shop"))
    )
    ss = rs.scope_spans.add()
    pad = [KeyValue(key="pad", value=AnyValue(string_value="x" * padding))] if padding else []
    for i, trace_id in enumerate(trace_ids):
        ss.spans.append(
            PbSpan(
                trace_id=trace_id,
                span_id=(i + 1).to_bytes(8, "big"),
                name=names[i] if names else "step",
                kind=PbSpan.SPAN_KIND_SERVER,
                start_time_unix_nano=START_NS,
                end_time_unix_nano=START_NS + 500_000_000,
                attributes=pad,
            )
        )
    return req.SerializeToString()


def trace_id(n: int) -> bytes:
    return (0xABC << 100 | n).to_bytes(16, "big")


def stored_trace_ids(agent: Any) -> set[str]:
    with sqlite3.connect(agent.config.db_path) as conn:
        return {row[0] for row in conn.execute("SELECT DISTINCT trace_id FROM spans")}


def slow_commits(agent: Any, delay_s: float = 0.0) -> threading.Event:
    """Make each span commit wait for the returned gate (open) and then `delay_s`.

    The commit runs on the store's writer thread, so blocking it there is what a slow
    disk looks like to the agent.
    """
    gate = threading.Event()
    gate.set()
    commit = agent.span_store._commit

    def slow(group: Any) -> None:
        gate.wait(30)
        time.sleep(delay_s)
        commit(group)

    agent.span_store._commit = slow
    return gate


async def overflow_the_queue(http: aiohttp.ClientSession, url: str, store: Any) -> None:
    """Send 840 requests into a full queue: each refused, none held on to."""
    timeout = aiohttp.ClientTimeout(total=10)
    # 2 KiB of padding per span, 20 KiB per request: held on, 800 refused requests would
    # be 16 MiB.
    body = traces_request([trace_id(100 + n) for n in range(10)], padding=2048)

    async def refused(count: int) -> list[tuple[int, str | None]]:
        answers = []
        for _ in range(count):
            async with http.post(url, data=body, headers=PROTOBUF, timeout=timeout) as r:
                await r.read()
                answers.append((r.status, r.headers.get("Retry-After")))
        return answers

    warm = await asyncio.gather(*(refused(5) for _ in range(8)))
    assert {a for batch in warm for a in batch} == {(503, "1")}
    tracemalloc.start()
    try:
        answers = await asyncio.gather(*(refused(100) for _ in range(8)))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert {a for batch in answers for a in batch} == {(503, "1")}
    assert store.busy_refusals == 840
    assert store._pending_spans == 10
    # What is still allocated after 800 refusals is a small fraction of one body per refusal.
    assert held < 2 * 2**20, held


async def ten_spans_waiting(agent: Any, http: Any) -> tuple[Any, Any]:
    """Stick the commit and send ten spans, which then wait for it; returns the gate that
    lets the commit go and the pending request."""
    gate = slow_commits(agent)
    gate.clear()
    body = traces_request([trace_id(n) for n in range(10)])
    first = asyncio.ensure_future(
        http.post(f"{agent.url}/v1/traces", data=body, headers=PROTOBUF)
    )
    for _ in range(1000):
        if agent.span_store._pending_spans == 10:
            break
        await asyncio.sleep(0.01)
    return gate, first


async def test_full_write_queue_answers_503_with_retry_after_and_holds_no_more(
    agent_factory, http
):
    agent = await agent_factory()
    store = agent.span_store
    store.max_pending_spans = 10
    url = f"{agent.url}/v1/traces"
    gate, first = await ten_spans_waiting(agent, http)
    try:
        await overflow_the_queue(http, url, store)
    finally:
        gate.set()

    async with await first as r:
        assert r.status == 200
    assert stored_trace_ids(agent) == {trace_id(n).hex() for n in range(10)}
    # Drained, the store takes writes again.
    body = traces_request([trace_id(n) for n in range(10, 30)])
    async with http.post(url, data=body, headers=PROTOBUF) as r:
        assert r.status == 200
    assert len(stored_trace_ids(agent)) == 30


async def agent_with_setting(agent_factory: Any, tmp_path: Any, name: str, value: int) -> Any:
    """An agent started with `name = value` as read from a configuration file."""
    config_file = tmp_path / "agent.toml"
    config_file.write_text(f"{name} = {value}\n")
    read = getattr(load_config(config_file), name)
    assert read == value
    agent = await agent_factory(**{name: read})
    assert getattr(agent.span_store, name) == value
    return agent


async def test_a_configured_smaller_queue_bound_is_the_one_enforced(
    agent_factory, http, tmp_path
):
    agent = await agent_with_setting(agent_factory, tmp_path, "max_pending_spans", 10)
    url = f"{agent.url}/v1/traces"
    gate, first = await ten_spans_waiting(agent, http)
    try:
        # One span more than the configured ten waiting is refused, not queued.
        body = traces_request([trace_id(10)])
        timeout = aiohttp.ClientTimeout(total=10)
        async with http.post(url, data=body, headers=PROTOBUF, timeout=timeout) as r:
            assert (r.status, r.headers.get("Retry-After")) == (503, "1")
    finally:
        gate.set()
    async with await first as r:
        assert r.status == 200
    assert stored_trace_ids(agent) == {trace_id(n).hex() for n in range(10)}


async def test_a_configured_byte_bound_refuses_large_spans_below_the_span_bound(
    agent_factory, http, tmp_path
):
    agent = await agent_with_setting(agent_factory, tmp_path, "max_pending_bytes", 2048)
    bound = agent.span_store.max_pending_bytes
    url = f"{agent.url}/v1/traces"
    timeout = aiohttp.ClientTimeout(total=10)
    # Alone, a request larger than the bound is still taken: nothing else waits.
    large = traces_request([trace_id(50)], padding=8192)
    assert len(large) > bound
    async with http.post(url, data=large, headers=PROTOBUF, timeout=timeout) as r:
        assert r.status == 200
    gate, first = await ten_spans_waiting(agent, http)
    try:
        # Eleven spans are far below the span bound (100 000); the ten waiting came in a
        # request of a few hundred bytes, and 3 KiB more passes 2 KiB.
        body = traces_request([trace_id(10)], padding=3072)
        async with http.post(url, data=body, headers=PROTOBUF, timeout=timeout) as r:
            assert (r.status, r.headers.get("Retry-After")) == (503, "1")
        # A small one still fits beside them: it waits for the same commit.
        small = traces_request([trace_id(11)])
        second = asyncio.ensure_future(http.post(url, data=small, headers=PROTOBUF))
        for _ in range(1000):
            if agent.span_store._pending_spans == 11:
                break
            await asyncio.sleep(0.01)
        assert agent.span_store._pending_spans == 11
    finally:
        gate.set()
    for waiting in (first, second):
        async with await waiting as r:
            assert r.status == 200
    assert stored_trace_ids(agent) == {trace_id(n).hex() for n in (*range(10), 11, 50)}
    assert agent.span_store._pending_bytes == 0


@pytest.mark.parametrize("name", ["max_pending_spans", "max_pending_bytes"])
@pytest.mark.parametrize("value", [0, -5, 1.5, False])
def test_a_queue_bound_that_is_not_a_positive_whole_number_is_refused(tmp_path, name, value):
    config_file = tmp_path / "agent.toml"
    config_file.write_text(f"{name} = {str(value).lower()}\n")
    with pytest.raises(ValueError, match=name):
        load_config(config_file)


async def test_a_sender_that_honours_retry_after_gets_every_span_stored(agent_factory, http):
    agent = await agent_factory()
    agent.span_store.max_pending_spans = 50
    slow_commits(agent, delay_s=0.02)
    url = f"{agent.url}/v1/traces"
    refusals: list[int] = []

    async def sender(worker: int) -> None:
        for batch in range(3):
            first = (worker * 3 + batch) * 5
            body = traces_request([trace_id(first + k) for k in range(5)])
            for _attempt in range(30):
                async with http.post(url, data=body, headers=PROTOBUF) as r:
                    await r.read()
                    if r.status == 200:
                        break
                    assert r.status in (429, 503), r.status
                    refusals.append(r.status)
                    await asyncio.sleep(float(r.headers["Retry-After"]))
            else:
                raise AssertionError(f"batch {first} never accepted")

    await asyncio.gather(*(sender(w) for w in range(40)))
    # 40 senders with 5 spans each at once are four times the bound: some were refused.
    assert refusals
    assert stored_trace_ids(agent) == {trace_id(n).hex() for n in range(600)}


class CountingExporter(OTLPSpanExporter):
    """The SDK's exporter, recording which spans each export reported as sent or failed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []
        self.failed: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        ids = [format(s.context.trace_id, "032x") for s in spans if s.context]
        (self.sent if result == SpanExportResult.SUCCESS else self.failed).extend(ids)
        return result


async def test_sdk_exporter_into_an_overloaded_agent_loses_nothing_it_was_not_told_of(
    agent_factory,
):
    agent = await agent_factory()
    agent.span_store.max_pending_spans = 100
    slow_commits(agent, delay_s=0.2)
    providers = []
    exporters = []
    for n in range(4):
        exporter = CountingExporter(
            endpoint=f"{agent.url}/v1/traces", headers={"X-API-Key": OPERATOR_KEY}
        )
        provider = TracerProvider(resource=Resource.create({"service.name": f"sdk{n}"}))
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=4096,
                max_export_batch_size=100,
                schedule_delay_millis=50,
            )
        )
        providers.append(provider)
        exporters.append(exporter)

    created: set[str] = set()

    def produce(provider: TracerProvider) -> None:
        tracer = provider.get_tracer("overload")
        for _ in range(300):
            with tracer.start_as_current_span("call") as span:
                created.add(format(span.get_span_context().trace_id, "032x"))
        assert provider.force_flush(60_000)

    try:
        await asyncio.gather(*(asyncio.to_thread(produce, p) for p in providers))
    finally:
        for provider in providers:
            await asyncio.to_thread(provider.shutdown)
    sent = {i for e in exporters for i in e.sent}
    failed = {i for e in exporters for i in e.failed}
    # Each of the 1200 spans reached the exporter once, and the SDK said what became of it.
    assert len(created) == 1200
    assert sum(len(e.sent) + len(e.failed) for e in exporters) == 1200
    assert sent | failed == created
    # Four exporters sending 100 spans each into a bound of 100: the agent refused some.
    assert agent.span_store.busy_refusals > 0
    # Every span the agent acknowledged is stored; only what the SDK reported failed is not.
    stored = stored_trace_ids(agent)
    assert stored == sent
    assert not (stored & failed)


async def test_100k_distinct_span_names_stay_capped_overflow_shows_and_warns_once(
    agent_factory, http, caplog
):
    cap = 1000
    agent = await agent_factory(series_cap=cap, new_series_hold_s=0.0)
    url = f"{agent.url}/v1/traces"
    per_request = 5000

    async def send(start: int, stop: int) -> None:
        for first in range(start, stop, per_request):
            names = [f"op-{n}" for n in range(first, first + per_request)]
            body = traces_request(
                [trace_id(n) for n in range(first, first + per_request)], names
            )
            async with http.post(url, data=body, headers=PROTOBUF) as r:
                assert r.status == 200

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    caplog.set_level(logging.WARNING, logger="proveai_agent.metrics.series")
    # 10 000 names fill the caps and every structure that keeps per-name state up to its
    # own bound; what the next 90 000 add must then be small.
    await send(0, 10_000)
    before = rss()
    await send(10_000, 100_000)
    grown = rss() - before

    calls = agent.metrics.calls
    duration = agent.metrics.duration
    assert len(calls) == cap + 1
    assert len(duration) == cap + 1
    # Each name is two label sets of calls (its status and the error series created at
    # zero beside it): 500 names fill the cap and the other 99 500 overflow twice each.
    # The duration histogram has one label set per name: 99 000 overflow.
    assert calls.overflowed == 2 * 99_500
    assert duration.overflowed == 99_000
    overflow_key = ("__overflow__",) * 7
    assert calls.value(overflow_key) == 99_500

    async with http.get(f"{agent.url}/metrics", headers={"X-API-Key": READ_KEY}) as r:
        assert r.status == 200
        text = await r.text()
    assert (
        'proveai_series_overflow_total{metric="llm_traces_span_metrics_calls"} 199000.0' in text
    )
    assert (
        'proveai_series_overflow_total{metric="llm_traces_span_metrics_duration_seconds"}'
        " 99000.0"
    ) in text
    overflow_line = next(
        line
        for line in text.splitlines()
        if line.startswith("llm_traces_span_metrics_calls_total{")
        and 'span_name="__overflow__"' in line
    )
    assert overflow_line.endswith(" 99500.0")
    assert sum(1 for line in text.splitlines() if 'span_name="op-' in line) < 20 * cap

    warnings = [r for r in caplog.records if "reached its cap" in r.getMessage()]
    assert sorted(r.args[0] for r in warnings) == [  # type: ignore[index]
        "llm_traces_span_metrics_calls",
        "llm_traces_span_metrics_duration_seconds",
    ]
    # Uncapped, 90 000 more names would add 180 000 counter and 90 000 histogram series,
    # at least 200 bytes each in label tuples, dict slots and bucket lists: over 50 MB (with
    # the cap lifted the process grows by about 110 MB here). Capped, what grows is SQLite's
    # page cache and allocator slack, a few MB.
    assert grown < 40 * 2**20, grown
