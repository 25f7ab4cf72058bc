"""Soak: ingestion, detection and the console API together for a long run, memory and losses.

Starts the native Prometheus and VictoriaMetrics (10 s scrape) and `proveai-agent serve` on
them, then for the whole run, at once:

- a counted OTLP load: requests of RAG-shaped spans of the service `bench-rag` at a steady
  rate; a 503 or 429 with `Retry-After` is waited for and sent again (counted as retried,
  not lost), any other refusal or transport error is an error of `/v1/traces`;
- a failure scenario of the simulator (an agent loop, on its own services), so that the
  detectors open cases while the load runs;
- a console-API client that polls what the console shows (overview, cases, the newest
  case, changes, audit) and holds the `/api/stream` websocket, reconnecting if it drops.

The agent's resident memory (VmRSS) is read every few seconds; its growth is from the end
of the warm-up (a fifth of the run, and at least until the first case has been analysed;
the local models are kept open) to the end. Spans lost are the spans of `bench-rag` the
agent acknowledged (200) and that are not in its database at the end; retention is set far
above what the run writes, so none of them may be deleted.

    python bench/soak.py [--duration 1800] [--quick] [--rate 200]

--quick runs for 60 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import KEY, AgentProcess, cpu_seconds, peak_rss_mb, rag_request, scraped_agent
from proveai_agent.simulate.library import WORKSPACE

SCRAPE_S = 10
SERVICE = "bench-rag"
"""The service of the counted load (the one `rag_request` builds)."""
SPANS_PER_REQUEST = 50
SPAN_BYTES = 600
SCENARIO = "agent-loop-tool-retry"
POLLED = ("/api/overview", "/api/cases?limit=50", "/api/changes", "/api/audit?limit=50")
HEADERS = {"X-API-Key": KEY}


@dataclass
class Tally:
    """Requests, errors and retried refusals per endpoint."""

    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)

    def error(self, endpoint: str, what: str) -> None:
        self.errors[endpoint] += 1
        self.first_error.setdefault(endpoint, what[:300])


@dataclass
class Load:
    acknowledged: int = 0
    stream_messages: Counter[str] = field(default_factory=Counter)
    rss: list[tuple[float, float]] = field(default_factory=list)
    analysed_at: float | None = None
    """Seconds into the run when the poller first saw an analysed case: the local models
    are open from then on."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def ingest(
    http: aiohttp.ClientSession, url: str, rate: float, until: float, tally: Tally, load: Load
) -> None:
    """Send `rate` spans a second; each request until it is acknowledged or fails."""
    endpoint = "/v1/traces"
    interval = SPANS_PER_REQUEST / rate
    headers = {**HEADERS, "Content-Type": "application/x-protobuf"}
    seq = 0
    next_at = time.monotonic()
    while time.monotonic() < until:
        body = rag_request(SPANS_PER_REQUEST, SPAN_BYTES, seq)
        seq += 1
        for _attempt in range(30):
            tally.requests[endpoint] += 1
            try:
                async with http.post(url + endpoint, data=body, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        load.acknowledged += SPANS_PER_REQUEST
                        break
                    wait = r.headers.get("Retry-After")
                    if r.status in (429, 503) and wait is not None:
                        tally.retried[endpoint] += 1
                        await asyncio.sleep(float(wait))
                        continue
                    tally.error(endpoint, f"{r.status}")
                    break
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.error(endpoint, repr(exc))
                break
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def poll(
    http: aiohttp.ClientSession,
    url: str,
    until: float,
    tally: Tally,
    load: Load,
    started: float,
) -> None:
    """What the console asks for: every second, each screen's data and the newest case."""
    while time.monotonic() < until:
        newest = None
        for path in POLLED:
            answer = await get(http, url, path, tally)
            if path.startswith("/api/cases") and answer and answer.get("items"):
                newest = answer["items"][0]["id"]
        if newest:
            case = await get(http, url, f"/api/cases/{newest}", tally, "/api/cases/{id}")
            if case and case.get("analysis") and load.analysed_at is None:
                load.analysed_at = time.monotonic() - started
        await asyncio.sleep(1.0)


async def get(
    http: aiohttp.ClientSession, url: str, path: str, tally: Tally, endpoint: str | None = None
) -> dict[str, Any] | None:
    endpoint = endpoint or path.split("?", 1)[0]
    tally.requests[endpoint] += 1
    try:
        async with http.get(url + path, headers=HEADERS) as r:
            if r.status // 100 != 2:
                tally.error(endpoint, f"{r.status} {(await r.text())[:200]}")
                return None
            return await r.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        tally.error(endpoint, repr(exc))
        return None


async def stream(
    http: aiohttp.ClientSession, url: str, until: float, tally: Tally, load: Load
) -> None:
    """Hold `/api/stream` open for the whole run; a drop before the end is an error."""
    endpoint = "/api/stream"
    while time.monotonic() < until:
        tally.requests[endpoint] += 1
        try:
            async with http.ws_connect(url + endpoint, headers=HEADERS, heartbeat=20) as ws:
                while time.monotonic() < until:
                    try:
                        message = await ws.receive(timeout=1.0)
                    except TimeoutError:
                        continue
                    if message.type != aiohttp.WSMsgType.TEXT:
                        tally.error(endpoint, f"stream ended: {message.type!r}")
                        break
                    load.stream_messages[message.json().get("type", "?")] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.error(endpoint, repr(exc))
            await asyncio.sleep(1.0)


async def sample(pid: int, until: float, load: Load, started: float) -> None:
    while time.monotonic() < until:
        load.rss.append((time.monotonic() - started, rss_mb(pid)))
        await asyncio.sleep(5.0)
    load.rss.append((time.monotonic() - started, rss_mb(pid)))


async def soak(agent: AgentProcess, duration_s: float, rate: float) -> tuple[Tally, Load]:
    tally, load = Tally(), Load()
    started = time.monotonic()
    until = started + duration_s
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(
            ingest(http, agent.url, rate, until, tally, load),
            poll(http, agent.url, until, tally, load, started),
            stream(http, agent.url, until, tally, load),
            sample(agent.proc.pid, until, load, started),
        )
    return tally, load


def stored_spans(db_path: Path) -> int:
    with sqlite3.connect(db_path) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM spans WHERE service = ?", (SERVICE,)
        ).fetchone()
    return int(count)


def cases_opened(db_path: Path) -> int:
    with sqlite3.connect(db_path) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM cases").fetchone()
    return int(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds (1800)")
    parser.add_argument("--quick", action="store_true", help="60 seconds")
    parser.add_argument("--rate", type=float, default=200.0, help="spans a second (200)")
    args = parser.parse_args()
    duration_s = 60.0 if args.quick else args.duration
    onset_s = min(120.0, duration_s / 4)

    base = Path(tempfile.mkdtemp(prefix="proveai-soak-"))
    workdir = base / "work"
    for name in ("rag-api", "research-agent"):
        shutil.copytree(WORKSPACE / name, workdir / name)
    config = base / "agent.toml"
    # Retention far above what the run writes: every acknowledged span must still be there.
    # The local models stay open (model_idle_s = 0: they load at start), so that neither
    # their load nor their closing after a quiet spell counts as growth.
    config.write_text(
        f"retention_age_s = {30 * 86400}\nretention_bytes = {1 << 40}\n"
        "[engine]\nmodel_idle_s = 0\n"
    )
    simulator = None
    with scraped_agent(base, config, SCRAPE_S) as agent:
        try:
            simulator = subprocess.Popen(
                [
                    *(sys.executable, "-m", "proveai_agent", "simulate", "--seed", "7"),
                    *(
                        "--scenario",
                        SCENARIO,
                        "--onset",
                        str(onset_s),
                        "--workdir",
                        str(workdir),
                    ),
                    *("--agent", agent.url, "--api-key", KEY, "--service-suffix", "soak"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            cpu_before = cpu_seconds(agent.proc.pid)
            tally, load = asyncio.run(soak(agent, duration_s, args.rate))
            simulator.terminate()
            simulator.wait(15)
            alive = agent.proc.poll() is None
            cpu_s = cpu_seconds(agent.proc.pid) - cpu_before if alive else float("nan")
            peak = peak_rss_mb(agent.proc.pid) if alive else float("nan")
        finally:
            if simulator is not None and simulator.poll() is None:
                simulator.kill()

    db_path = base / "agent" / "proveai.db"
    stored = stored_spans(db_path)
    cases = cases_opened(db_path)
    return report(tally, load, duration_s, stored, cases, alive, cpu_s, peak)


def report(
    tally: Tally,
    load: Load,
    duration_s: float,
    stored: int,
    cases: int,
    alive: bool,
    cpu_s: float,
    peak: float,
) -> int:
    print(f"{'endpoint':<18} {'requests':>9} {'errors':>7} {'retried':>8}")
    for endpoint in sorted(tally.requests):
        print(
            f"{endpoint:<18} {tally.requests[endpoint]:>9} {tally.errors[endpoint]:>7} "
            f"{tally.retried[endpoint]:>8}"
        )
    for endpoint, what in tally.first_error.items():
        print(f"first error on {endpoint}: {what}")

    # Warm-up: a fifth of the run, and at least until the first case was analysed (the
    # models it opened are in memory from then on), then the next sample.
    warm_until = max(duration_s / 5, load.analysed_at or 0.0)
    warm = [mb for at, mb in load.rss if at >= warm_until]
    rss_warm = warm[0] if warm else float("nan")
    rss_end = load.rss[-1][1] if load.rss else float("nan")
    print("\n  at_s  rss_mb")
    step = max(1, len(load.rss) // 12)
    for at, mb in load.rss[::step] + load.rss[-1:]:
        print(f"{at:6.0f} {mb:7.1f}")
    lost = load.acknowledged - stored
    messages = ", ".join(f"{kind} {n}" for kind, n in sorted(load.stream_messages.items()))
    print(
        f"\n{duration_s / 60:.1f} min; spans acknowledged {load.acknowledged}, stored "
        f"{stored}; cases opened {cases}; stream messages: {messages or 'none'}; "
        f"agent {'alive' if alive else 'DEAD'} at the end, cpu {cpu_s:.0f} s, "
        f"peak RSS {peak:.1f} MiB; RSS after warm-up ({warm_until:.0f} s) {rss_warm:.1f} "
        f"MiB, at the end {rss_end:.1f} MiB"
    )
    errors = sum(tally.errors.values()) + (0 if alive else 1)
    print(
        f"rss_growth_mb={rss_end - rss_warm:.1f} errors={errors} spans_lost={lost} "
        f"retried={sum(tally.retried.values())} cases={cases}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
