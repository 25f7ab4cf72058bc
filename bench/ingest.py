"""Ingest throughput: spans/s accepted (HTTP 200) and persisted, for 2 KB and 20 KB spans.

Two concurrent clients post OTLP/HTTP protobuf requests of 500 spans to a `proveai-agent
serve` subprocess. A 200 means committed, so persisted = spans found in SQLite afterwards
over the time until the last 200. The agent finishes its start-up first (until it is idle);
peak_rss_mb is its VmHWM under the load, start_rss_mb the start-up's before it.

    python bench/ingest.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    KEY,
    cpu_seconds,
    peak_rss_mb,
    rag_request,
    reset_peak_rss,
    settle,
    start_agent,
)

BATCH = 500
CLIENTS = 2


async def load(url: str, bodies: list[bytes]) -> tuple[int, int, float]:
    """Send every body from CLIENTS concurrent senders; returns (ok, refused, seconds)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    ok = refused = 0
    headers = {"Content-Type": "application/x-protobuf", "X-API-Key": KEY}

    async def sender(session: aiohttp.ClientSession) -> None:
        nonlocal ok, refused
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(f"{url}/v1/traces", data=body, headers=headers) as r:
                await r.read()
                if r.status == 200:
                    ok += 1
                else:
                    refused += 1

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(sender(session) for _ in range(CLIENTS)))
    return ok, refused, time.perf_counter() - started


def run(span_bytes: int, requests: int) -> dict[str, float]:
    bodies = [rag_request(BATCH, span_bytes, seq) for seq in range(requests)]
    agent = start_agent()
    try:
        settle(agent.proc.pid)
        start_rss = reset_peak_rss(agent.proc.pid)
        cpu0 = cpu_seconds(agent.proc.pid)
        ok, refused, seconds = asyncio.run(load(agent.url, bodies))
        cpu = cpu_seconds(agent.proc.pid) - cpu0
        rss = peak_rss_mb(agent.proc.pid)
    finally:
        agent.stop()
    conn = sqlite3.connect(agent.data_dir / "proveai.db")
    try:
        stored = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
    finally:
        conn.close()
        shutil.rmtree(agent.data_dir, ignore_errors=True)
    return {
        "span_bytes": len(bodies[0]) / BATCH,
        "accepted": ok * BATCH / seconds,
        "persisted": stored / seconds,
        "refused": refused,
        "lost": ok * BATCH - stored,
        "rss": rss,
        "start_rss": start_rss,
        "cpu": cpu,
        "seconds": seconds,
    }


def ceiling(span_bytes: int, requests: int) -> dict[str, float]:
    """What Python and SQLite allow here, in one thread: a bare protobuf decode of every span,
    and the same decode inserting one row per span with one executemany per request."""
    bodies = [rag_request(BATCH, span_bytes, seq) for seq in range(requests)]
    started = time.perf_counter()
    for body in bodies:
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.trace_id.hex(), span.span_id.hex(), span.name, span.attributes
    decode = requests * BATCH / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "ceiling.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE spans (id INTEGER PRIMARY KEY, trace_id TEXT, span_id TEXT,"
            " name TEXT, start_ns INTEGER, end_ns INTEGER, body BLOB)"
        )
        started = time.perf_counter()
        for body in bodies:
            rows = [
                (
                    span.trace_id.hex(),
                    span.span_id.hex(),
                    span.name,
                    span.start_time_unix_nano,
                    span.end_time_unix_nano,
                    span.SerializeToString(),
                )
                for rs in ExportTraceServiceRequest.FromString(body).resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO spans VALUES (NULL, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        insert = requests * BATCH / (time.perf_counter() - started)
        conn.close()
    return {"decode": decode, "sqlite": insert}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args()
    small = run(2048, 40 if args.quick else 200)
    large = run(20480, 8 if args.quick else 40)
    small_ceiling = ceiling(2048, 40 if args.quick else 200)
    large_ceiling = ceiling(20480, 8 if args.quick else 40)
    print(
        f"{'size':>8} {'bytes/span':>10} {'accepted/s':>11} {'persisted/s':>12} "
        f"{'refused':>8} {'lost':>5} {'cpu_s':>6} {'peak_rss_mb':>11} {'start_rss_mb':>12}"
    )
    for name, r in (("2 KB", small), ("20 KB", large)):
        print(
            f"{name:>8} {r['span_bytes']:>10.0f} {r['accepted']:>11.0f} "
            f"{r['persisted']:>12.0f} "
            f"{r['refused']:>8.0f} {r['lost']:>5.0f} {r['cpu']:>6.1f} {r['rss']:>11.1f}"
            f" {r['start_rss']:>12.1f}"
        )
    print("\nceiling in one thread (spans/s): bare decode, decode + executemany per request")
    for name, c, r in (("2 KB", small_ceiling, small), ("20 KB", large_ceiling, large)):
        print(
            f"{name:>8} decode {c['decode']:>9.0f}  sqlite {c['sqlite']:>8.0f}  "
            f"agent/sqlite {r['persisted'] / c['sqlite']:.2f}"
        )
    print(
        f"accepted_2kb={small['accepted']:.0f} persisted_2kb={small['persisted']:.0f} "
        f"persisted_20kb={large['persisted']:.0f} "
        f"peak_rss_mb={max(small['rss'], large['rss']):.0f}"
    )


if __name__ == "__main__":
    main()
