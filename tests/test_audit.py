"""The audit log: what is recorded, tampering found and named, refusals aggregated, kill -9.

A record's hash is, by the store's definition, SHA-256 of the previous hash, a newline and
the record (seq, at, actor, action, subject, data) as JSON with sorted keys and no spaces;
the tests recompute it that way rather than with the store's own function.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentfix import OPERATOR_KEY
from proveai_agent.signals import Signal
from proveai_agent.stack.native import free_port
from proveai_agent.store.audit import GENESIS


def by_hand(prev: str, record: dict[str, Any]) -> str:
    body = {k: record[k] for k in ("seq", "at", "actor", "action", "subject", "data")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev}\n{text}".encode()).hexdigest()


def latency_signal(at: float) -> Signal:
    return Signal(
        kind="latency_regression",
        failure_class="LATENCY_REGRESS",
        trigger="anomaly_detection",
        service="rag-api",
        span_name="chat",
        at=at,
        severity="high",
        summary="p95 4 s against 1 s",
    )


async def busy_log(agent, http) -> list[dict[str, Any]]:
    """A case opened, triaged and closed: its events in the audit log."""
    await agent.case_service.on_signal(latency_signal(time.time()))
    headers = {"X-API-Key": OPERATOR_KEY}
    url = f"{agent.url}/api/cases/CASE-1/transition"
    for body in (
        {"to": "TRIAGED", "actor": "ana"},
        {"to": "CLOSED", "actor": "ben", "reason": "false_positive"},
    ):
        async with http.post(url, json=body, headers=headers) as response:
            assert response.status == 200
    return await agent.audit.store.records()


async def test_case_events_are_recorded_with_actor_and_chained(agent, http) -> None:
    records = await busy_log(agent, http)
    assert [(r["actor"], r["action"], r["subject"]) for r in records] == [
        ("agent", "case.signal", "CASE-1"),
        ("agent", "case.transition", "CASE-1"),
        ("ana", "case.transition", "CASE-1"),
        ("ben", "case.transition", "CASE-1"),
    ]
    assert [r["data"].get("to") for r in records[1:]] == ["DETECTED", "TRIAGED", "CLOSED"]
    prev = GENESIS
    for record in records:
        assert record["prev_hash"] == prev
        assert record["hash"] == by_hand(prev, record)
        prev = record["hash"]
    async with http.get(
        f"{agent.url}/api/audit/verify", headers={"X-API-Key": OPERATOR_KEY}
    ) as response:
        assert await response.json() == {
            "ok": True,
            "records": 4,
            "first_bad": None,
            "reason": "the chain holds",
        }


async def test_the_database_refuses_to_change_or_delete_a_record(agent, http) -> None:
    await busy_log(agent, http)
    with sqlite3.connect(agent.config.db_path) as conn:
        for statement in ("UPDATE audit SET actor = 'eve' WHERE seq = 2", "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)


def tamper(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for statement in statements:
            conn.execute(statement)


@pytest.mark.parametrize(
    ("statements", "first_bad", "reason"),
    [
        (["UPDATE audit SET actor = 'eve' WHERE seq = 3"], 3, "does not match its hash"),
        (["DELETE FROM audit WHERE seq = 2"], 3, "sequence 3 where 2 was next"),
        (
            [
                # Swap records 2 and 3, sequence numbers kept in place.
                "UPDATE audit SET seq = -2 WHERE seq = 2",
                "UPDATE audit SET seq = 2 WHERE seq = 3",
                "UPDATE audit SET seq = 3 WHERE seq = -2",
            ],
            2,
            "link to the record before",
        ),
        (
            # A forged record after the last, copied from an earlier one.
            [
                "INSERT INTO audit (seq, at, actor, action, subject, data, prev_hash, hash)"
                " SELECT 5, at, 'eve', action, subject, data, prev_hash, hash FROM audit"
                " WHERE seq = 2"
            ],
            5,
            "link to the record before",
        ),
    ],
)
async def test_tampering_is_found_and_the_record_named(
    agent, http, statements: list[str], first_bad: int, reason: str
) -> None:
    await busy_log(agent, http)
    tamper(agent.config.db_path, *statements)
    verdict = await agent.audit.store.verify()
    assert (verdict.ok, verdict.first_bad) == (False, first_bad)
    assert reason in verdict.reason


async def test_refused_keys_are_one_record_per_source_and_minute(agent, http) -> None:
    for attempt in range(50):
        async with http.get(
            f"{agent.url}/api/cases", headers={"X-API-Key": "not-a-key"}
        ) as response:
            # After 20 failures a source gets 429 for the rest of the minute, still counted.
            assert response.status == (401 if attempt < 20 else 429)
    assert await agent.audit.flush_refused() == 0  # this minute is not over yet
    assert await agent.audit.flush_refused(now=time.time() + 60) == 1
    (record,) = [r for r in await agent.audit.store.records() if r["action"] == "auth.refused"]
    assert (record["subject"], record["data"]["count"]) == ("127.0.0.1", 50)


async def test_a_flood_of_sources_is_bounded(agent) -> None:
    for index in range(1500):
        agent.audit.refused(f"10.0.{index // 256}.{index % 256}", "/api/cases", at=60.0)
    assert await agent.audit.flush_refused(now=200.0) == 1001  # 1000 sources + the rest
    records = await agent.audit.store.records(limit=5000)
    other = next(r for r in records if r["subject"] == "(other sources)")
    assert other["data"]["count"] == 500


async def test_export_and_checkpoint_carry_the_chain(agent, http) -> None:
    records = await busy_log(agent, http)
    out = io.StringIO()
    assert await agent.audit.export(out) == len(records)
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert exported == records
    head = await agent.audit.checkpoint()
    assert head is not None
    (line,) = agent.audit.head_file.read_text().splitlines()
    assert json.loads(line)["hash"] == records[-1]["hash"]


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proveai_agent", "audit", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_audit_command_verifies_and_exports(agent, http, tmp_path) -> None:
    await busy_log(agent, http)
    data_dir = agent.config.data_dir
    ok = await asyncio.to_thread(cli, data_dir, "verify")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    exported = await asyncio.to_thread(
        cli, data_dir, "export", "--out", str(tmp_path / "a.jsonl")
    )
    assert exported.returncode == 0
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 4
    tamper(agent.config.db_path, "UPDATE audit SET subject = 'CASE-9' WHERE seq = 4")
    broken = await asyncio.to_thread(cli, data_dir, "verify")
    assert broken.returncode == 1 and json.loads(broken.stdout)["first_bad"] == 4
    missing = await asyncio.to_thread(cli, tmp_path / "nowhere", "verify")
    assert missing.returncode == 2 and "no database" in missing.stderr


# ---------------------------------------------------------------- kill -9


def serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PROVEAI_API_KEYS": OPERATOR_KEY}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proveai_agent",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def healthy(http: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{url}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the agent did not start")


async def test_kill_9_during_transitions_loses_no_acknowledged_one(http, tmp_path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    process = serve(data_dir, port)
    headers = {"X-API-Key": OPERATOR_KEY}
    acknowledged: list[tuple[str, int]] = []
    try:
        await healthy(http, url)
        trace = "ab" * 16
        body = {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": "rag-api"}}
                        ]
                    },
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": trace,
                                    "spanId": "cd" * 8,
                                    "name": "POST /query",
                                    "kind": 2,
                                    "startTimeUnixNano": str(time.time_ns() - 10**9),
                                    "endTimeUnixNano": str(time.time_ns()),
                                }
                            ]
                        }
                    ],
                }
            ]
        }
        async with http.post(f"{url}/v1/traces", json=body, headers=headers) as response:
            assert response.status == 200
        for index in range(4):
            async with http.post(
                f"{url}/api/cases",
                json={"trace_id": trace, "title": f"t{index}"},
                headers=headers,
            ) as response:
                assert response.status == 201

        async def churn(case: int) -> None:
            # DETECTED → CLOSED → DETECTED → ... as fast as the agent acknowledges.
            moves = [{"to": "CLOSED", "reason": "wont_fix"}, {"to": "DETECTED"}]
            step = 0
            while True:
                move = {**moves[step % 2], "actor": f"user{case}", "note": f"{case}-{step}"}
                try:
                    async with http.post(
                        f"{url}/api/cases/CASE-{case}/transition", json=move, headers=headers
                    ) as response:
                        if response.status == 200:
                            acknowledged.append((f"CASE-{case}", step))
                except aiohttp.ClientError:
                    return
                step += 1

        workers = [asyncio.create_task(churn(case)) for case in range(1, 5)]
        await asyncio.sleep(2.0)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        await asyncio.wait_for(asyncio.gather(*workers), 10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert len(acknowledged) > 20
    process = serve(data_dir, port)
    try:
        await healthy(http, url)
        async with http.get(f"{url}/api/audit/verify", headers=headers) as response:
            verdict = await response.json()
        assert verdict["ok"] is True, verdict
        async with http.get(f"{url}/api/audit?limit=10000", headers=headers) as response:
            notes = {r["data"].get("note") for r in (await response.json())["items"]}
        for case, step in acknowledged:
            async with http.get(f"{url}/api/cases/{case}", headers=headers) as response:
                timeline = (await response.json())["timeline"]
            note = f"{case.removeprefix('CASE-')}-{step}"
            assert any(event.get("note") == note for event in timeline), note
            assert note in notes
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
