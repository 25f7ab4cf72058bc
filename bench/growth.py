"""Cost growth: ingest spans/s, agent memory, database size and API query times as the store
grows to 1, 3 and 10 million spans of about 1 KB.

A fresh data directory is seeded through the agent's own OTLP/HTTP ingest with RAG-shaped
spans (random trace ids, 20 services), with manual cases and deploy changes on top. Between
sizes the agent is stopped and the seed rows are copied inside SQLite, each copy with new
trace ids and an hour of time further back, until the size is reached: copying through HTTP
would take most of an hour here, and the rows are the ones the agent wrote itself. At each
size a fresh agent then takes a fixed load from two senders (the load of bench/ingest.py),
and every endpoint the console reads is timed, about 50 requests each. Retention is set
out of reach, so nothing is deleted during the run.

    python bench/growth.py [--quick] [--sizes 1000000,3000000,10000000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import KEY, AgentProcess, peak_rss_mb, rag_request, start_agent
from ingest import BATCH, load

SERVICES = 20
SPAN_BYTES = 1024
SEED_REQUESTS = 40
CASES = 60
CHANGES = 60
QUERIES = 50
BYTES_PER_SPAN_ON_DISK = 2000
"""A generous bound on what one ~1 KB span costs on disk with its indexes (measured about
1.6 KB); the free-space check uses it."""
SPARE_BYTES = 3 * 1024**3
COPY_ROWS = SEED_REQUESTS * BATCH
COPY_STEP_NS = 3600 * 10**9
CONFIG = """
retention_age_s = 3153600000
retention_bytes = 1099511627776
"""


class Requests:
    """OTLP bodies of BATCH RAG-shaped spans, each with fresh random trace and span ids.

    Random ids, as real SDKs make them, insert all over the (trace_id, span_id) index; the
    sequential ids of `rag_request` would only ever append to it and hide that cost.
    """

    def __init__(self) -> None:
        self._template = ExportTraceServiceRequest.FromString(rag_request(BATCH, SPAN_BYTES, 0))
        self._seq = 0

    def next(self) -> bytes:
        req = ExportTraceServiceRequest()
        req.CopyFrom(self._template)
        rs = req.resource_spans[0]
        for attribute in rs.resource.attributes:
            if attribute.key == "service.name":
                attribute.value.string_value = f"rag-{self._seq % SERVICES:02d}"
        self._seq += 1
        root = b""
        trace = b""
        for i, span in enumerate(rs.scope_spans[0].spans):
            if i % 5 == 0:
                trace = os.urandom(16)
                root = os.urandom(8)
                span.span_id = root
            else:
                span.span_id = os.urandom(8)
                span.parent_span_id = root
            span.trace_id = trace
        return req.SerializeToString()


def db_path(data_dir: Path) -> Path:
    return data_dir / "proveai.db"


def stored(data_dir: Path) -> int:
    with sqlite3.connect(db_path(data_dir)) as conn:
        return int(conn.execute("SELECT count(*) FROM spans").fetchone()[0])


def disk_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("proveai.db*"))


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _new_trace_id(trace_id: str, copy: int) -> str:
    return hashlib.blake2b(f"{trace_id}/{copy}".encode(), digest_size=16).hexdigest()


def fill(data_dir: Path, target: int, copy: int) -> tuple[float, int]:
    """Copy the seed rows (ids 1..COPY_ROWS) until the store holds `target` spans, numbering
    the copies from `copy`; returns the seconds it took and the next copy's number.

    Each copy gets new trace ids and lies an hour further back than the one before, so the
    store reads as months of steady traffic rather than one burst.
    """
    columns = (
        "parent_span_id, service, resource_id, name, kind, status, start_ns, end_ns,"
        " duration_s, model, operation, provider, input_tokens, output_tokens,"
        " finish_reasons, scores, body"
    )
    shifted = columns.replace("start_ns, end_ns", "start_ns - :shift, end_ns - :shift")
    started = time.perf_counter()
    conn = sqlite3.connect(db_path(data_dir), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.create_function("new_trace_id", 2, _new_trace_id, deterministic=True)
    have = int(conn.execute("SELECT count(*) FROM spans").fetchone()[0])
    while have < target:
        rows = min(COPY_ROWS, target - have)
        conn.execute("BEGIN")
        conn.execute(
            f"INSERT INTO spans (trace_id, span_id, {columns})"
            f" SELECT new_trace_id(trace_id, :copy), span_id, {shifted}"
            " FROM spans WHERE id BETWEEN 1 AND :rows ORDER BY id",
            {"copy": copy, "shift": copy * COPY_STEP_NS, "rows": rows},
        )
        conn.execute("COMMIT")
        have += rows
        copy += 1
        if copy % 20 == 0:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started, copy


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with session.post(url, json=body, headers={"X-API-Key": KEY}) as r:
        await r.read()
        if r.status != 201:
            raise RuntimeError(f"POST {url}: {r.status}")


async def seed_cases(url: str, trace_ids: list[str]) -> None:
    """Manual cases from stored traces and deploy changes of every service."""
    async with aiohttp.ClientSession() as session:
        for i, trace_id in enumerate(trace_ids[:CASES]):
            await post_json(
                session,
                f"{url}/api/cases",
                {"trace_id": trace_id, "title": f"slow answers on order {i}"},
            )
        for i in range(CHANGES):
            await post_json(
                session,
                f"{url}/api/changes",
                {
                    "service": f"rag-{i % SERVICES:02d}",
                    "summary": f"deploy {i}",
                    "version": f"1.{i}.0",
                },
            )


def pick_traces(data_dir: Path, count: int) -> list[str]:
    """Trace ids of stored spans drawn at random over the whole store."""
    with sqlite3.connect(db_path(data_dir)) as conn:
        top = int(conn.execute("SELECT max(id) FROM spans").fetchone()[0])
        found = []
        for _ in range(count):
            row = conn.execute(
                "SELECT trace_id FROM spans WHERE id >= ? ORDER BY id LIMIT 1",
                (random.randint(1, top),),
            ).fetchone()
            found.append(row[0])
    return found


def endpoints(trace_ids: list[str]) -> list[tuple[str, list[str]]]:
    """The reads of src/proveai_tui/client.py, each with the paths to time."""
    cases = [f"/api/cases/CASE-{random.randint(1, CASES)}" for _ in range(QUERIES)]
    return [
        ("overview", ["/api/overview"]),
        ("overview 24h", ["/api/overview?range=24h"]),
        ("cases", ["/api/cases?limit=100"]),
        ("cases state=open", ["/api/cases?state=open&limit=100"]),
        ("cases service", [f"/api/cases?service=rag-{i % SERVICES:02d}" for i in range(20)]),
        ("cases q", ["/api/cases?q=order%201"]),
        ("cases cursor", ["/api/cases?cursor=CASE-30&limit=20"]),
        ("case", cases),
        ("trace", [f"/api/traces/{t}" for t in trace_ids]),
        ("changes", ["/api/changes"]),
        ("changes service", [f"/api/changes?service=rag-{i:02d}" for i in range(SERVICES)]),
        ("audit", ["/api/audit?after=0&limit=1000"]),
        ("audit verify", ["/api/audit/verify"]),
    ]


async def time_endpoints(url: str, trace_ids: list[str]) -> dict[str, tuple[float, float]]:
    """p50 and p95 in ms of each endpoint over QUERIES sequential requests (after one warm-up
    request each)."""
    results: dict[str, tuple[float, float]] = {}
    headers = {"X-API-Key": KEY}
    async with aiohttp.ClientSession(headers=headers) as session:
        for name, paths in endpoints(trace_ids):
            async with session.get(url + paths[0]) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"GET {paths[0]}: {r.status}")
            times = []
            for i in range(QUERIES):
                path = paths[i % len(paths)]
                started = time.perf_counter()
                async with session.get(url + path) as r:
                    await r.read()
                    status = r.status
                times.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise RuntimeError(f"GET {path}: {status}")
            cuts = statistics.quantiles(times, n=20)
            results[name] = (statistics.median(times), cuts[18])
    return results


def start(data_dir: Path) -> AgentProcess:
    return start_agent("--config", str(data_dir / "bench.toml"), data_dir=data_dir)


def measure(data_dir: Path, requests: int, bodies: Requests) -> dict[str, Any]:
    """Ingest, memory and query times of a fresh agent over the store as it is now."""
    trace_ids = pick_traces(data_dir, QUERIES)
    before = stored(data_dir)
    load_bodies = [bodies.next() for _ in range(requests)]
    agent = start(data_dir)
    try:
        ok, refused, seconds = asyncio.run(load(agent.url, load_bodies))
        rss_after_load = vm_rss_mb(agent.proc.pid)
        queries = asyncio.run(time_endpoints(agent.url, trace_ids))
        rss = vm_rss_mb(agent.proc.pid)
        hwm = peak_rss_mb(agent.proc.pid)
    finally:
        agent.stop()
    after = stored(data_dir)
    return {
        "spans": after,
        "ingest": (after - before) / seconds,
        "lost": ok * BATCH - (after - before),
        "refused": refused,
        "rss_load": rss_after_load,
        "rss": rss,
        "hwm": hwm,
        "disk_gb": disk_bytes(data_dir) / 1e9,
        "queries": queries,
    }


def check_disk(where: Path, largest: int) -> None:
    need = largest * BYTES_PER_SPAN_ON_DISK + SPARE_BYTES
    free = shutil.disk_usage(where).free
    if free < need:
        raise SystemExit(
            f"growth: {largest:,} spans need about {need / 1e9:.1f} GB free on {where},"
            f" and {free / 1e9:.1f} GB are free; free some space or pass smaller --sizes"
        )


def report(rows: list[dict[str, Any]], fills: list[float]) -> None:
    print(
        f"{'spans':>11} {'fill_s':>7} {'ingest/s':>9} {'lost':>5} {'refused':>7}"
        f" {'rss_mb':>7} {'hwm_mb':>7} {'disk_gb':>8}"
    )
    for row, fill_s in zip(rows, fills, strict=True):
        print(
            f"{row['spans']:>11,} {fill_s:>7.0f} {row['ingest']:>9.0f} {row['lost']:>5}"
            f" {row['refused']:>7} {row['rss']:>7.0f} {row['hwm']:>7.0f}"
            f" {row['disk_gb']:>8.2f}"
        )
    print("\nAPI query times, p50 / p95 ms, one client, sequential")
    print(f"{'endpoint':<18}" + "".join(f"{row['spans']:>18,}" for row in rows))
    for name in rows[0]["queries"]:
        cells = "".join(
            f"{row['queries'][name][0]:>10.1f} /{row['queries'][name][1]:>6.1f}" for row in rows
        )
        print(f"{name:<18}{cells}")
    last = rows[-1]
    worst = max(last["queries"].items(), key=lambda item: item[1][1])
    print(
        " ".join(
            [f"ingest_{r['spans'] // 1000}k={r['ingest']:.0f}" for r in rows]
            + [f"hwm_mb_{last['spans'] // 1000}k={last['hwm']:.0f}"]
            + [f"disk_gb_{last['spans'] // 1000}k={last['disk_gb']:.1f}"]
            + [
                f"worst_p95_ms={worst[1][1]:.1f}",
                f"worst_endpoint={worst[0].replace(' ', '_')}",
            ]
        )
    )


def progress(row: dict[str, Any], fill_s: float) -> None:
    """One line per size on stderr, so that a run stopped early still leaves its figures."""
    print(
        f"# {row['spans']:,} spans: fill {fill_s:.0f} s, ingest {row['ingest']:.0f}/s,"
        f" rss {row['rss']:.0f} MB, hwm {row['hwm']:.0f} MB, disk {row['disk_gb']:.2f} GB,"
        " p95 ms " + ", ".join(f"{k} {v[1]:.1f}" for k, v in row["queries"].items()),
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 k, 300 k and 1 M spans")
    parser.add_argument("--sizes", help="comma-separated span counts, e.g. 1000000,3000000")
    parser.add_argument("--requests", type=int, help=f"load requests of {BATCH} spans per size")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [100_000, 300_000, 1_000_000] if args.quick else [1_000_000, 3_000_000, 10**7]
    requests = args.requests or (20 if args.quick else 60)
    check_disk(Path(tempfile.gettempdir()), max(sizes))
    # A terminated run still stops its agent and removes its data, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    data_dir = Path(tempfile.mkdtemp(prefix="proveai-growth-"))
    try:
        (data_dir / "bench.toml").write_text(CONFIG)
        bodies = Requests()
        seed = [bodies.next() for _ in range(SEED_REQUESTS)]
        agent = start(data_dir)
        try:
            asyncio.run(load(agent.url, seed))
            asyncio.run(seed_cases(agent.url, pick_traces(data_dir, CASES)))
        finally:
            agent.stop()
        rows, fills = [measure(data_dir, requests, bodies)], [0.0]
        progress(rows[0], 0.0)
        copy = 1
        for size in sizes:
            seconds, copy = fill(data_dir, size - requests * BATCH, copy)
            fills.append(seconds)
            rows.append(measure(data_dir, requests, bodies))
            progress(rows[-1], seconds)
        report(rows, fills)
    finally:
        if args.keep:
            print(f"# data kept in {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
