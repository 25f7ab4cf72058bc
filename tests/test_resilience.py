"""Resilience of the real agent: a full disk, a backup under load, metrics sources that fail.

Each test runs the agent in the test's event loop and talks to it over HTTP on 127.0.0.1;
Prometheus and VictoriaMetrics are stood in for by small aiohttp servers that answer the
Prometheus HTTP API and are switched between healthy, slow, erroring, garbage and stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from agentfix import OPERATOR_KEY
from otlpfix import key_values
from proveai_agent.store import db
from proveai_agent.store.audit import AuditStore
from proveai_agent.watch.promql import MetricsSource, SourceError

PROTOBUF = {"Content-Type": "application/x-protobuf", "X-API-Key": OPERATOR_KEY}
API = {"X-API-Key": OPERATOR_KEY}
MiB = 1 << 20


def traces(
    trace_id: str,
    span_ids: list[str],
    *,
    blob: int = 0,
    service: str = "shop",
    attributes: dict[str, object] | None = None,
    end_ns: int | None = None,
) -> bytes:
    """One OTLP request: the spans of one trace, each carrying `blob` bytes of attribute."""
    end = time.time_ns() if end_ns is None else end_ns
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(key_values({"service.name": service}))
    ss = rs.scope_spans.add()
    extra = dict(attributes or {})
    if blob:
        extra["payload"] = "x" * blob
    for span_id in span_ids:
        ss.spans.append(
            PbSpan(
                trace_id=bytes.fromhex(trace_id),
                span_id=bytes.fromhex(span_id),
                name="search",
                kind=PbSpan.SPAN_KIND_INTERNAL,
                start_time_unix_nano=end - 50_000_000,
                end_time_unix_nano=end,
                attributes=key_values(extra),
            )
        )
    return req.SerializeToString()


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


async def post_spans(http: aiohttp.ClientSession, url: str, body: bytes) -> Answer:
    async with http.post(f"{url}/v1/traces", data=body, headers=PROTOBUF) as response:
        return Answer(response.status, response.headers, await response.read())


def span_ids(db_path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return {row[0] for row in conn.execute("SELECT span_id FROM spans")}


async def eventually(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    """Poll an async or plain check until it returns something true; fail at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s")
        await asyncio.sleep(0.05)


# --- disk ---------------------------------------------------------------------------------


async def test_span_store_stays_under_its_size_cap_while_spans_arrive_over_http(
    agent_factory, http
):
    cap = 2 * MiB
    agent = await agent_factory(retention_bytes=cap, retention_interval_s=0.1)
    trace_id = "6e0c63257de34c92bf9efcd03927272e"
    # 20 rounds of 2 requests of 100 spans with 3000 bytes each: 12 MB sent in all, six
    # times the cap; each round is about 600 kB, so the cap plus one round stays below 3 MiB.
    sent: list[list[str]] = []
    for round_no in range(20):
        for part in range(2):
            ids = [f"{round_no:04x}{part:02x}{i:010x}" for i in range(100)]
            response = await post_spans(http, agent.url, traces(trace_id, ids, blob=3000))
            assert response.status == 200
            sent.append(ids)
        await eventually(lambda: _under(agent, cap))

    stored = span_ids(agent.config.db_path)
    assert set(sent[-1]) <= stored, "the newest spans are kept"
    assert not set(sent[0]) & stored, "the oldest spans went first"
    # Free pages are reused: the file does not grow with what was sent, only with the cap.
    assert agent.config.db_path.stat().st_size < 3 * MiB


async def test_a_store_just_over_its_cap_loses_only_its_oldest_spans(agent_factory, http):
    """Retention deletes about what the excess holds, not a fixed batch: under a small cap a
    fixed thousand would take every span, the newest with them."""
    agent = await agent_factory(retention_interval_s=3600)  # only the prune below runs
    trace_id = "5d1a2b3c4d5e6f708192a3b4c5d6e7f8"
    sent = []
    for request in range(7):
        ids = [f"{request:04x}{i + 1:012x}" for i in range(100)]  # an all-zero id is invalid
        response = await post_spans(http, agent.url, traces(trace_id, ids, blob=3000))
        assert response.status == 200
        sent.append(ids)
    assert len(span_ids(agent.config.db_path)) == 700
    used = await agent.span_store.used_bytes()
    # 20 kB over: at least 3000 bytes a span, so some 7 spans' worth, far from 100.
    deleted = await agent.span_store.prune(max_age_s=10**9, max_bytes=used - 20_000)
    assert 1 <= deleted < 100
    assert await agent.span_store.used_bytes() <= used - 20_000
    stored = span_ids(agent.config.db_path)
    assert len(stored) == 700 - deleted
    assert set(sent[-1]) | set(sent[1]) <= stored, "only spans of the first request went"


async def _under(agent, cap: int) -> bool:
    return await agent.span_store.used_bytes() <= cap


async def test_below_the_free_disk_floor_spans_get_503_while_cases_and_audit_work(
    agent_factory, http, caplog
):
    caplog.set_level(logging.INFO, logger="proveai_agent")
    agent = await agent_factory(min_free_disk_mb=512)
    store = agent.span_store
    free = {"bytes": 10 * 1024 * MiB}
    store.free_bytes = lambda: free["bytes"]
    store.free_check_s = 0.0
    trace_id = "0af7651916cd43dd8448eb211c80319c"

    assert (
        await post_spans(http, agent.url, traces(trace_id, ["00000000000000a1"]))
    ).status == 200
    async with http.post(
        f"{agent.url}/api/cases",
        json={"trace_id": trace_id, "title": "slow search"},
        headers=API,
    ) as r:
        assert r.status == 201
        case_id = (await r.json())["id"]

    free["bytes"] = 512 * MiB - 1
    for n in range(3):
        refused = await post_spans(http, agent.url, traces(trace_id, [f"00000000000000b{n}"]))
        assert refused.status == 503
        assert int(refused.headers["Retry-After"]) > 0
        assert b"below the floor of 512 MiB" in refused.body
    assert span_ids(agent.config.db_path) == {"00000000000000a1"}
    low = [r for r in caplog.records if "below the floor" in r.getMessage()]
    assert len(low) == 1 and low[0].levelno == logging.WARNING, "said once, not per request"

    async with http.post(
        f"{agent.url}/api/cases/{case_id}/transition",
        json={"to": "TRIAGED", "actor": "alice", "note": "disk is low, looking"},
        headers=API,
    ) as r:
        assert r.status == 200
        assert (await r.json())["state"] == "TRIAGED"
    async with http.post(
        f"{agent.url}/api/cases/{case_id}/notes",
        json={"actor": "alice", "text": "spans refused meanwhile"},
        headers=API,
    ) as r:
        assert r.status == 201
    async with http.get(f"{agent.url}/api/audit/verify", headers=API) as r:
        verdict = await r.json()
    assert verdict["ok"] is True
    actions = [(x["action"], x["subject"]) for x in await agent.audit.store.records()]
    assert ("case.transition", case_id) in actions and ("case.note", case_id) in actions

    free["bytes"] = 512 * MiB
    resumed = await post_spans(http, agent.url, traces(trace_id, ["00000000000000c1"]))
    assert resumed.status == 200
    assert span_ids(agent.config.db_path) == {"00000000000000a1", "00000000000000c1"}


async def test_the_floor_reads_the_real_free_space_of_the_data_directory(agent_factory, http):
    # No disk has 2**40 MiB free: the real reading is below this floor.
    agent = await agent_factory(min_free_disk_mb=2**40)
    body = traces("1f2e3d4c5b6a79881f2e3d4c5b6a7988", ["00000000000000d1"])
    response = await post_spans(http, agent.url, body)
    assert response.status == 503
    assert span_ids(agent.config.db_path) == set()


# --- backup -------------------------------------------------------------------------------


_BACKUP_WHEN_TOLD = (
    "import sys\n"
    "from proveai_agent import cli\n"
    "parser = cli.build_parser()\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)
"""The command line in a process of its own, imported first, that runs when told to: the
moment it starts copying is then known to within a few milliseconds."""


async def _backup_process(*args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BACKUP_WHEN_TOLD,
        "backup",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    return proc


async def _finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await proc.communicate(b"go\n")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _backup(*args: str) -> tuple[int, str, str]:
    return await _finish(await _backup_process(*args))


async def test_backup_while_ingesting_is_a_consistent_copy_with_every_acknowledged_span(
    agent_factory, http, tmp_path
):
    agent = await agent_factory()
    trace_id = "3a5d0c1e9f8b47d6a2c4e6f8091b3d5f"
    assert (
        await post_spans(http, agent.url, traces(trace_id, ["0000000000000001"]))
    ).status == 200
    async with http.post(
        f"{agent.url}/api/cases",
        json={"trace_id": trace_id, "title": "before backup"},
        headers=API,
    ) as r:
        case_id = (await r.json())["id"]
    async with http.post(
        f"{agent.url}/api/cases/{case_id}/transition",
        json={"to": "TRIAGED", "actor": "alice", "note": "triaged"},
        headers=API,
    ) as r:
        assert r.status == 200

    acknowledged: list[str] = []
    stop = asyncio.Event()

    async def send() -> None:
        n = 0
        while not stop.is_set():
            ids = [f"{n:08x}{i:08x}" for i in range(1, 51)]
            response = await post_spans(http, agent.url, traces(trace_id, ids, blob=500))
            assert response.status == 200
            acknowledged.extend(ids)
            n += 1

    sender = asyncio.create_task(send())
    try:
        await eventually(lambda: len(acknowledged) >= 500)
        out = tmp_path / "copy.db"
        proc = await _backup_process("--data-dir", str(agent.config.data_dir), str(out))
        before = list(acknowledged)
        code, stdout, stderr = await _finish(proc)
        during = len(acknowledged) - len(before)
    finally:
        stop.set()
        await sender
    assert code == 0, stderr
    assert during > 0, "ingest went on while the backup ran"
    report = json.loads(stdout)
    assert report["integrity"] == "ok" and report["schema_version"] == len(db.MIGRATIONS)

    with contextlib.closing(sqlite3.connect(out)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(db.MIGRATIONS)
    assert set(before) <= span_ids(out)
    copy = await db.connect(out)
    try:
        verdict = await AuditStore(copy, copy).verify()
    finally:
        await copy.close()
    assert verdict.ok, verdict.reason
    assert verdict.records >= 2  # the case's detection and its transition


async def test_backup_refuses_to_overwrite_a_file(agent, tmp_path):
    out = tmp_path / "existing.db"
    out.write_bytes(b"keep me")
    code, _, stderr = await _backup("--data-dir", str(agent.config.data_dir), str(out))
    assert code == 2
    assert "existing.db" in stderr
    assert out.read_bytes() == b"keep me"
    assert list(tmp_path.glob(".existing.db.partial-*")) == []


# --- metrics sources down -----------------------------------------------------------------

CALLS = "llm_traces_span_metrics_calls_total"
DURATION = "llm_traces_span_metrics_duration_seconds_bucket"


class FakeSource:
    """A Prometheus HTTP API on a fixed loopback port, switchable between behaviours.

    healthy: label values list the span metrics and every query answers one sample for the
    service "shop"; slow: answers like healthy after `delay_s`; error: HTTP 500 with
    Prometheus' error document; bad: HTTP 400, a query refused as bad; garbage: 200 with
    a body that is not JSON; stopped: the port is closed (connection refused).
    """

    def __init__(self, delay_s: float = 3.0) -> None:
        self.mode = "healthy"
        self.delay_s = delay_s
        self.requests = 0
        """Requests answered, whatever the mode."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/v1/query", self._query)
        app.router.add_route("*", "/api/v1/query_range", self._query_range)
        app.router.add_route("*", "/api/v1/label/{name}/values", self._labels)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def switch(self, mode: str) -> None:
        if mode == "stopped":
            await self.stop()
        elif self._runner is None:
            await self.start()
        self.mode = mode

    async def _answer(self, data: Any) -> web.Response:
        self.requests += 1
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        if self.mode == "error":
            return web.json_response(
                {"status": "error", "errorType": "internal", "error": "storage is on fire"},
                status=500,
            )
        if self.mode == "bad":
            return web.json_response(
                {"status": "error", "errorType": "bad_data", "error": "parse error"},
                status=400,
            )
        if self.mode == "garbage":
            return web.Response(text="<html>502 upstream gone</html>", content_type="text/html")
        return web.json_response({"status": "success", "data": data})

    async def _labels(self, request: web.Request) -> web.Response:
        return await self._answer([CALLS, DURATION])

    async def _query(self, request: web.Request) -> web.Response:
        at = float((await _params(request)).get("time", time.time()))
        sample = {"metric": {"service_name": "shop"}, "value": [at, "1"]}
        return await self._answer({"resultType": "vector", "result": [sample]})

    async def _query_range(self, request: web.Request) -> web.Response:
        params = await _params(request)
        end = float(params.get("end", time.time()))
        sample = {"metric": {"service_name": "shop"}, "values": [[end, "1"]]}
        return await self._answer({"resultType": "matrix", "result": [sample]})


async def _params(request: web.Request) -> dict[str, str]:
    params = dict(request.query)
    if request.method == "POST":
        params.update({k: str(v) for k, v in (await request.post()).items()})
    return params


@pytest.fixture
async def sources() -> AsyncIterator[tuple[FakeSource, FakeSource]]:
    prometheus, victoriametrics = FakeSource(), FakeSource()
    await prometheus.start()
    await victoriametrics.start()
    yield prometheus, victoriametrics
    await prometheus.stop()
    await victoriametrics.stop()


async def _overview(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/overview", headers=API) as r:
        assert r.status == 200
        return await r.json()


def _loop_request(trace_id: str, first: int) -> bytes:
    """Five identical tool calls in one trace: an agent loop for the trace detectors."""
    return traces(
        trace_id,
        [f"{first + i:016x}" for i in range(5)],
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "lookup",
            "gen_ai.tool.call.arguments": '{"q": "same"}',
        },
    )


EXPECTED_ERROR = {
    "stopped": "Connection refused",
    "slow": "timed out",
    "error": "500",
    "garbage": "JSON",
}


@pytest.mark.parametrize("outage", ["stopped", "slow", "error", "garbage"])
async def test_a_metrics_source_down_leaves_ingest_and_trace_detectors_working(
    agent_factory, http, sources, caplog, outage
):
    caplog.set_level(logging.INFO)
    prometheus, victoriametrics = sources
    agent = await agent_factory(
        prometheus_url=prometheus.url,
        victoriametrics_url=victoriametrics.url,
        scrape_interval_s=0.1,
        source_timeout_s=0.3,
    )

    async def source_up(name: str, up: bool) -> dict[str, Any] | None:
        doc = await _overview(http, agent.url)
        return doc if doc["sources"][name]["up"] is up else None

    await eventually(lambda: source_up("prometheus", True))
    caplog.clear()

    await prometheus.switch(outage)
    down = await eventually(lambda: source_up("prometheus", False))
    error = down["sources"]["prometheus"]["error"]
    assert EXPECTED_ERROR[outage] in error, error
    assert down["sources"]["victoriametrics"]["up"] is True
    assert down["read_from"] == "victoriametrics" and down["services"][0]["service"] == "shop"

    trace_id = "7b2c9e4f1a3d5b6c8e0f2a4c6e8b0d1f"
    assert (await post_spans(http, agent.url, _loop_request(trace_id, 0x100))).status == 200
    loop_case = await eventually(lambda: _case_with(http, agent.url, "AGENT_LOOP"))
    assert loop_case["trigger"] == "trace_pattern"
    # Several more detection cycles with the source still down.
    cycles = 10
    await asyncio.sleep(cycles * agent.config.scrape_interval_s)
    assert (await post_spans(http, agent.url, _loop_request(trace_id, 0x200))).status == 200
    assert (await _overview(http, agent.url))["sources"]["prometheus"]["up"] is False

    await prometheus.switch("healthy")
    back = await eventually(lambda: source_up("prometheus", True))
    assert back["sources"]["prometheus"]["error"] is None
    assert back["read_from"] == "prometheus" and back["services"][0]["service"] == "shop"

    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) <= 2, [r.getMessage() for r in loud]
    # The outage lasted over ten cycles of several queries each: the source says it went
    # down and came back, not once a query or a cycle (twice at most: a server that stops
    # may still answer on a kept-alive connection while it refuses new ones).
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "proveai_agent.watch.promql"
        and r.levelno >= logging.INFO
        and r.getMessage().startswith("prometheus")
    ]
    assert 1 <= len([m for m in said if "is down" in m]) <= 2, said
    assert len(said) <= 4 and said[-1].endswith("is up"), said
    assert not [r for r in caplog.records if r.name == "proveai_agent.agent" and r.exc_info]
    loops = {"watch", "engine", "retention", "checkpoint", "audit"}
    ended = [t.get_name() for t in agent._tasks if t.get_name() in loops and t.done()]
    assert ended == [], "no loop of the agent ended"


async def _case_with(http: aiohttp.ClientSession, url: str, failure_class: str) -> Any:
    async with http.get(f"{url}/api/cases", params={"class": failure_class}, headers=API) as r:
        items = (await r.json())["items"]
    return items[0] if items else None


async def test_a_source_that_keeps_failing_is_backed_off_to_its_cap_and_resumes(sources):
    prometheus, _ = sources
    now = [0.0]
    source = MetricsSource(
        "prometheus", prometheus.url, 2, backoff_s=10, backoff_max_s=40, clock=lambda: now[0]
    )
    try:
        await prometheus.switch("error")
        failed = 0
        for second in range(200):
            now[0] = float(second)
            with pytest.raises(SourceError):
                await source.query("up", time.time())
            failed += 1
        # Tries at 0, then 10, 20, 40, 40, 40 s apart: 0, 10, 30, 70, 110, 150, 190.
        assert prometheus.requests == 7 and failed == 200
        assert source.skipped == 193
        assert source.status()["up"] is False and "500" in source.status()["error"]

        await prometheus.switch("healthy")
        for second in range(200, 230):
            now[0] = float(second)
            with pytest.raises(SourceError):
                await source.query("up", time.time())
        assert prometheus.requests == 7  # the next try is due at 190 + 40
        for second in range(230, 233):
            now[0] = float(second)
            assert await source.query("up", time.time())
        assert prometheus.requests == 10 and source.status() == {"up": True, "error": None}

        # A new outage starts again from the first wait.
        await prometheus.switch("error")
        for second in range(233, 250):
            now[0] = float(second)
            with pytest.raises(SourceError):
                await source.query("up", time.time())
        assert prometheus.requests == 12  # at 233 and 243
    finally:
        source.close()


async def test_a_query_refused_as_bad_does_not_back_the_source_off(sources):
    prometheus, _ = sources
    now = [0.0]
    source = MetricsSource("prometheus", prometheus.url, 2, backoff_s=10, clock=lambda: now[0])
    try:
        await prometheus.switch("bad")
        for _ in range(3):
            with pytest.raises(SourceError):
                await source.query("sum(", time.time())
        assert prometheus.requests == 3
    finally:
        source.close()


async def test_a_source_that_refuses_connections_is_not_backed_off(sources):
    """Nothing listening costs the source nothing: every query tries, so a source started
    after the agent is used from its first answer, not one back-off later."""
    prometheus, _ = sources
    now = [0.0]
    source = MetricsSource("prometheus", prometheus.url, 2, backoff_s=10, clock=lambda: now[0])
    try:
        await prometheus.switch("stopped")
        for _ in range(3):
            with pytest.raises(SourceError, match="refused"):
                await source.query("up", time.time())
        assert source.skipped == 0
        await prometheus.switch("healthy")  # at the same instant: no wait is due
        assert await source.query("up", time.time())
        assert source.status() == {"up": True, "error": None}
    finally:
        source.close()


async def test_the_agent_backs_off_a_source_that_is_down_and_shows_it_down(
    agent_factory, http, sources
):
    prometheus, victoriametrics = sources
    cycle_s = 0.05
    agent = await agent_factory(
        prometheus_url=prometheus.url,
        victoriametrics_url=victoriametrics.url,
        scrape_interval_s=cycle_s,
        source_timeout_s=0.3,
        source_backoff_max_s=0.4,
    )

    async def source_up(up: bool) -> dict[str, Any] | None:
        doc = await _overview(http, agent.url)
        return doc if doc["sources"]["prometheus"]["up"] is up else None

    await eventually(lambda: source_up(True))
    await prometheus.switch("error")
    await eventually(lambda: source_up(False))
    skipped, sent = agent.prometheus.skipped, prometheus.requests
    # Forty cycles and overviews later: every one asked the source several things, but
    # only the tries the back-off lets through reached it.
    for _ in range(40):
        await asyncio.sleep(cycle_s)
        assert (await _overview(http, agent.url))["sources"]["prometheus"]["up"] is False
    assert agent.prometheus.skipped - skipped >= 40
    assert prometheus.requests - sent < agent.prometheus.skipped - skipped

    await prometheus.switch("healthy")
    back = await eventually(lambda: source_up(True))
    assert back["sources"]["prometheus"]["error"] is None
