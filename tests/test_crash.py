"""kill -9 of a real `proveai-agent serve`: nothing it acknowledged is lost, and it resumes.

An acknowledgement (200 for an OTLP batch or a transition, 201 for a note) is a promise that
the write is committed; a process killed with SIGKILL at any instant keeps that promise
only if every acknowledgement comes after its commit. Each test loads the agent from a
thread as fast as it answers, kills it mid-stream, starts it again on the same data
directory and checks, against what the client recorded, that every acknowledged write is
there, the database passes SQLite's integrity check and the audit chain verifies.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from agentfix import OPERATOR_KEY
from proveai_agent.stack.native import free_port

HEADERS = {"X-API-Key": OPERATOR_KEY}
TRACES_PER_BATCH = 10
SPANS_PER_TRACE = 5


class Agent:
    """`proveai-agent serve` as a process on a loopback port, its output in a log file."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        data_dir.mkdir(parents=True, exist_ok=True)
        # An empty model store: "auto" finds no model, so none loads and takes the CPU.
        (data_dir.parent / "models").mkdir(exist_ok=True)
        config = data_dir.parent / "agent.toml"
        config.write_text(
            f"[engine]\nmodel_store = {json.dumps(str(data_dir.parent / 'models'))}\n"
        )
        self.log = data_dir.parent / "agent.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proveai_agent",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--data-dir",
                    str(data_dir),
                    "--config",
                    str(config),
                    "--log-level",
                    "warning",
                ],
                env={**os.environ, "PROVEAI_API_KEYS": OPERATOR_KEY},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise AssertionError(f"the agent did not start:\n{self.log.read_text()[-4000:]}")

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        conn: http.client.HTTPConnection | None = None,
    ) -> tuple[int, Any]:
        """One request (JSON in and out); raises OSError or HTTPException when cut off."""
        own = conn is None
        conn = conn or self.connection()
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {**HEADERS, "Content-Type": "application/json"} if payload else HEADERS
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
            kind = response.getheader("Content-Type", "")
            return response.status, json.loads(data) if "json" in kind else data
        finally:
            if own:
                conn.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def otlp_batch(prefix: str, batch: int) -> tuple[bytes, list[str]]:
    """A protobuf OTLP request of TRACES_PER_BATCH traces of SPANS_PER_TRACE spans each,
    with trace ids no other batch uses; returns it and its trace ids (hex)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="crash-rag"))
    )
    scope = rs.scope_spans.add()
    now = time.time_ns()
    traces = []
    for t in range(TRACES_PER_BATCH):
        trace_id = bytes.fromhex(prefix) + (batch * TRACES_PER_BATCH + t).to_bytes(8, "big")
        traces.append(trace_id.hex())
        for s in range(SPANS_PER_TRACE):
            span = scope.spans.add()
            span.trace_id = trace_id
            span.span_id = (s + 1).to_bytes(8, "big")
            if s:
                span.parent_span_id = (1).to_bytes(8, "big")
            span.name = "POST /query" if s == 0 else f"step {s}"
            span.kind = 2 if s == 0 else 3
            span.start_time_unix_nano = now - 500_000_000
            span.end_time_unix_nano = now - s * 1_000_000
    return req.SerializeToString(), traces


def store_a_trace(agent: Agent) -> str:
    body, (trace, *_) = otlp_batch(secrets.token_hex(8), 0)
    conn = agent.connection()
    try:
        conn.request(
            "POST",
            "/v1/traces",
            body=body,
            headers={**HEADERS, "Content-Type": "application/x-protobuf"},
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    finally:
        conn.close()
    return trace


def read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def check_database_and_chain(agent: Agent) -> list[dict[str, Any]]:
    """SQLite's integrity check passes, the audit chain verifies; returns the audit log."""
    conn = read_only(agent.data_dir / "proveai.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    status, verdict = agent.request("GET", "/api/audit/verify")
    assert status == 200 and verdict["ok"] is True, verdict
    records: list[dict[str, Any]] = []
    while True:
        after = records[-1]["seq"] if records else 0
        status, page = agent.request("GET", f"/api/audit?after={after}&limit=10000")
        assert status == 200
        if not page["items"]:
            break
        records += page["items"]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    return records


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_kill_9_under_ingest_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    port = free_port()
    agent = Agent(tmp_path / "data", port)
    prefix = secrets.token_hex(8)
    acknowledged: list[list[str]] = []
    answers: list[int] = []
    ended: list[BaseException] = []
    try:
        case_trace = store_a_trace(agent)
        status, _ = agent.request("POST", "/api/cases", {"trace_id": case_trace, "title": "t"})
        assert status == 201

        def send() -> None:
            conn = agent.connection()
            batch = 0
            try:
                while True:
                    body, traces = otlp_batch(prefix, batch)
                    conn.request(
                        "POST",
                        "/v1/traces",
                        body=body,
                        headers={**HEADERS, "Content-Type": "application/x-protobuf"},
                    )
                    response = conn.getresponse()
                    response.read()
                    answers.append(response.status)
                    if response.status == 200:
                        acknowledged.append(traces)
                    batch += 1
            except (OSError, http.client.HTTPException) as exc:
                ended.append(exc)
            finally:
                conn.close()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        wait_for(lambda: len(acknowledged) >= 150 or not sender.is_alive())
        assert sender.is_alive(), ended
        agent.kill()
        sender.join(10)
        assert not sender.is_alive()
    finally:
        agent.stop()

    # The sender was cut off by the kill, in the middle of its stream.
    assert ended and len(acknowledged) >= 20
    # Anything not acknowledged was refused as overload, to be sent again.
    assert set(answers) <= {200, 429, 503}, set(answers)
    agent = Agent(tmp_path / "data", port)
    try:
        records = check_database_and_chain(agent)
        assert any(r["subject"] == "CASE-1" for r in records)
        conn = read_only(agent.data_dir / "proveai.db")
        try:
            stored = {
                trace: count
                for trace, count in conn.execute(
                    "SELECT trace_id, COUNT(*) FROM spans WHERE trace_id LIKE ? "
                    "GROUP BY trace_id",
                    (f"{prefix}%",),
                )
            }
        finally:
            conn.close()
        for traces in acknowledged:
            for trace in traces:
                assert stored.get(trace) == SPANS_PER_TRACE, trace
        # At most the batch in flight at the kill is stored besides the acknowledged ones.
        assert len(stored) - len(acknowledged) * TRACES_PER_BATCH in (0, TRACES_PER_BATCH)
        for trace in (acknowledged[0][0], acknowledged[-1][-1]):
            status, doc = agent.request("GET", f"/api/traces/{trace}")
            assert status == 200
            assert len(doc["spans"]) == SPANS_PER_TRACE
        # It takes spans again.
        assert store_a_trace(agent)
    finally:
        agent.stop()


CYCLING = ("CASE-1", "CASE-2", "CASE-3")
"""Cases moved CLOSED → DETECTED → CLOSED ..., with a note between each move."""
STAYING_OPEN = ("CASE-4", "CASE-5", "CASE-6")
"""Cases triaged, then given notes only: they are open when the agent is killed."""


def test_kill_9_during_transitions_and_notes_loses_none_and_cases_resume(
    tmp_path: Path,
) -> None:
    port = free_port()
    agent = Agent(tmp_path / "data", port)
    # Each case's acknowledged writes as (kind, marker), in the order they were made.
    acknowledged: dict[str, list[tuple[str, str]]] = {c: [] for c in CYCLING + STAYING_OPEN}
    in_flight: dict[str, tuple[str, str]] = {}
    stopped: list[BaseException] = []
    try:
        trace = store_a_trace(agent)
        for number in range(1, 7):
            status, doc = agent.request(
                "POST", "/api/cases", {"trace_id": trace, "title": f"case {number}"}
            )
            assert status == 201 and doc["id"] == f"CASE-{number}"

        def steps(case: str) -> Any:
            """The case's writes, one after another: (kind, marker, the transition asked)."""
            step = 0
            if case in STAYING_OPEN:
                yield "transition", f"{case}-triage", {"to": "TRIAGED"}
                while True:
                    step += 1
                    yield "note", f"{case}-n{step}", None
            moves = ({"to": "CLOSED", "reason": "wont_fix"}, {"to": "DETECTED"})
            while True:
                step += 1
                yield "note", f"{case}-n{step}", None
                yield "transition", f"{case}-t{step}", moves[step % 2 - 1]

        def work(cases: tuple[str, ...]) -> None:
            conn = agent.connection()
            plans = {case: steps(case) for case in cases}
            try:
                while True:
                    for case in cases:
                        kind, marker, move = next(plans[case])
                        in_flight[case] = (kind, marker)
                        if kind == "note":
                            path = f"/api/cases/{case}/notes"
                            body = {"actor": "ana", "text": marker}
                            expected = 201
                        else:
                            path = f"/api/cases/{case}/transition"
                            body = {**move, "actor": "ana", "note": marker}
                            expected = 200
                        status, answer = agent.request("POST", path, body, conn=conn)
                        assert status == expected, (path, body, answer)
                        acknowledged[case].append((kind, marker))
            except Exception as exc:  # the kill's connection error, or a wrong answer
                stopped.append(exc)
            finally:
                conn.close()

        workers = [
            threading.Thread(target=work, args=(group,), daemon=True)
            for group in ((CYCLING[0], STAYING_OPEN[0]), CYCLING[1:], STAYING_OPEN[1:])
        ]
        for worker in workers:
            worker.start()
        wait_for(
            lambda: (
                all(len(done) >= 30 for done in acknowledged.values())
                or not all(w.is_alive() for w in workers)
            )
        )
        assert all(w.is_alive() for w in workers), stopped
        agent.kill()
        for worker in workers:
            worker.join(10)
            assert not worker.is_alive()
    finally:
        agent.stop()

    # Every worker was cut off by the kill, with a request in flight.
    assert len(stopped) == len(workers)
    assert all(isinstance(e, (OSError, http.client.HTTPException)) for e in stopped), stopped
    assert all(len(done) >= 5 for done in acknowledged.values()), acknowledged
    agent = Agent(tmp_path / "data", port)
    try:
        docs = {}
        for case in acknowledged:
            status, docs[case] = agent.request("GET", f"/api/cases/{case}")
            assert status == 200
        # Read after the cases, so that it holds whatever the agent has added to them since.
        records = check_database_and_chain(agent)
        for case, done in acknowledged.items():
            doc = docs[case]
            timeline = doc["timeline"]
            made = [
                (event["type"], event.get("text") if event["type"] == "note" else event["note"])
                for event in timeline
                if event["type"] in ("note", "transition") and event.get("actor") == "ana"
            ]
            # What was acknowledged, in order, then at most the write in flight at the kill.
            assert made[: len(done)] == done, case
            assert made[len(done) :] in ([], [in_flight[case]]), case
            # The audit log holds every timeline event, in order, and at most that one more.
            logged = [r["data"] for r in records if r["subject"] == case]
            assert all(
                r["action"] == f"case.{r['data']['type']}"
                for r in records
                if r["subject"] == case
            )
            rest = iter(logged)
            assert all(any(event == entry for entry in rest) for event in timeline), case
            assert len(timeline) <= len(logged) <= len(timeline) + 1, case
            moved = [e for e in timeline if e["type"] == "transition"]
            assert doc["state"] == moved[-1]["to"]
            if case in STAYING_OPEN:
                assert doc["state"] == "TRIAGED"
                move = {"to": "INVESTIGATING", "actor": "ben"}
            else:
                move = (
                    {"to": "DETECTED", "actor": "ben"}
                    if doc["state"] == "CLOSED"
                    else {"to": "CLOSED", "reason": "wont_fix", "actor": "ben"}
                )
            # It resumes: the next transition and a note are taken.
            status, after = agent.request("POST", f"/api/cases/{case}/transition", move)
            assert status == 200, after
            assert after["state"] in (move["to"], "REMEDIATION_SUGGESTED")
            status, _ = agent.request(
                "POST", f"/api/cases/{case}/notes", {"actor": "ben", "text": "resumed"}
            )
            assert status == 201
        status, listed = agent.request("GET", "/api/cases?state=open&limit=100")
        assert status == 200
        open_now = {c["id"] for c in listed["items"]}
        assert set(STAYING_OPEN) <= open_now, open_now
        check_database_and_chain(agent)
    finally:
        agent.stop()
