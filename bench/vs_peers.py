"""Side by side with Arize Phoenix: the same OTLP/HTTP load into proveai-agent and Phoenix.

Two concurrent senders post protobuf requests of 500 RAG-shaped spans (gen_ai.* attributes,
2 KB and 20 KB a span) first to `proveai-agent serve`, then to Phoenix on its SQLite default,
alternating: agent 2 KB, Phoenix 2 KB, agent 20 KB, Phoenix 20 KB, for each round. A 429 or
503 is counted as a refusal and the same request is sent again after the server's
Retry-After. Phoenix answers 200 before it persists, so for both the spans are counted in
their own SQLite file while and after they are sent, and the persisted rate is the number
stored over the time until the last of them could be queried. The agent gets a fixed number
of requests; Phoenix, which is much slower, gets the first few of the same requests, and
no more than it takes in a fixed time, then as long as it needs to store them (up to a cap).

Phoenix is installed on first use into its own virtual environment under the user's cache
directory (the version pinned below, the same Python), and runs with its HTTP listener on
loopback, telemetry and external resources off, and its gRPC listener, which binds every
interface, moved to loopback by a launcher; the benchmark checks every socket it listens on.

Each server is left to finish its start-up first (until it uses under 2 % of a CPU for a
second) and its peak RSS is then reset: peak_rss_mb is the peak under the load, and
start_rss_mb the peak of the start-up before it (a new agent data directory embeds the
knowledge base's seeds with the embedding model open).

The ceiling, measured right after each agent run, is bench/ingest.py's: a bare decoder,
and a decoder inserting one row per span into SQLite with one executemany transaction per
request.

    python bench/vs_peers.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import aiohttp

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
from ingest import BATCH, CLIENTS, ceiling
from proveai_agent.stack.native import free_port

PHOENIX_VERSION = "20.26.1"

# Phoenix's gRPC server binds [::]:PORT and has no setting for the host; the launcher
# rewrites that address to loopback before Phoenix starts, and changes nothing else.
PHOENIX_LAUNCHER = """\
import sys
import grpc.aio._server as grpc_server

_add_insecure_port = grpc_server.Server.add_insecure_port


def _loopback_only(self, address):
    return _add_insecure_port(self, address.replace("[::]:", "127.0.0.1:"))


grpc_server.Server.add_insecure_port = _loopback_only
from phoenix.server.main import main

sys.argv = ["phoenix", "serve"]
main()
"""


def phoenix_python() -> Path:
    """The Python of Phoenix's own virtual environment, installed there when missing."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "proveai-bench" / "phoenix-venv"
    python = venv / "bin" / "python"
    check = "import importlib.metadata as m; print(m.version('arize-phoenix'))"
    if python.exists():
        found = subprocess.run([python, "-c", check], capture_output=True, text=True)
        if found.stdout.strip() == PHOENIX_VERSION:
            return python
    print(f"installing arize-phoenix=={PHOENIX_VERSION} into {venv} ...", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", f"arize-phoenix=={PHOENIX_VERSION}"], check=True
    )
    print(f"installed in {time.perf_counter() - started:.0f} s", flush=True)
    return python


def listening_addresses(pid: int) -> list[str]:
    """The local addresses of the TCP sockets in LISTEN state that the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.append(_address(fields[1]))
    return found


def _address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return f"{'.'.join(str(b) for b in raw[::-1])}:{int(port, 16)}"
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    if words[:12] == b"\0" * 10 + b"\xff\xff":
        return f"[::ffff:{'.'.join(str(b) for b in words[12:])}]:{int(port, 16)}"
    groups = ":".join(words[i : i + 2].hex() for i in range(0, 16, 2))
    return f"[{groups}]:{int(port, 16)}"


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return (
        host.startswith("127.")
        or host.startswith("::ffff:127.")
        or host == "0000:0000:0000:0000:0000:0000:0000:0001"
    )


@dataclass
class PhoenixProcess:
    proc: subprocess.Popen[bytes]
    url: str
    working_dir: Path

    @property
    def db(self) -> Path:
        return self.working_dir / "phoenix.db"

    def stop(self) -> None:
        """Stops Phoenix's whole process group and removes its working directory."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.working_dir, ignore_errors=True)


def start_phoenix(python: Path) -> PhoenixProcess:
    """`phoenix serve` on free loopback ports with a fresh working directory."""
    working_dir = Path(tempfile.mkdtemp(prefix="proveai-bench-phoenix-"))
    (working_dir / "launch.py").write_text(PHOENIX_LAUNCHER)
    port = free_port()
    env = {
        **os.environ,
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_WORKING_DIR": str(working_dir),
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    }
    log = open(working_dir / "phoenix.log", "ab")  # noqa: SIM115 - lives as long as Phoenix
    proc = subprocess.Popen(
        [python, working_dir / "launch.py"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    phoenix = PhoenixProcess(proc, f"http://127.0.0.1:{port}", working_dir)
    try:
        _wait_healthy(phoenix)
        exposed = [a for a in listening_addresses(proc.pid) if not is_loopback(a)]
        if exposed:
            raise RuntimeError(f"Phoenix listens beyond loopback: {exposed}")
    except BaseException:
        phoenix.stop()
        raise
    return phoenix


def _wait_healthy(phoenix: PhoenixProcess) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if phoenix.proc.poll() is not None:
            log = (phoenix.working_dir / "phoenix.log").read_text(errors="replace")
            raise RuntimeError(f"Phoenix exited with {phoenix.proc.returncode}:\n{log[-2000:]}")
        try:
            with urllib.request.urlopen(f"{phoenix.url}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("Phoenix did not start within 180 s")


@dataclass
class Sent:
    ok: int = 0
    refused: int = 0
    seconds: float = 0.0


async def send(url: str, bodies: list[bytes], time_box: float | None) -> Sent:
    """Every body (or as many as fit in `time_box` seconds) from CLIENTS concurrent senders.

    bench/ingest.py's load drops a refused request; here it is sent again after the
    server's Retry-After (at most 1 s), so a slow server is measured on what it persists,
    not on what it turns away.
    """
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    sent = Sent()
    headers = {"Content-Type": "application/x-protobuf", "X-API-Key": KEY}
    started = time.perf_counter()
    stop_at = started + time_box if time_box else float("inf")

    async def sender(session: aiohttp.ClientSession) -> None:
        while not queue.empty() and time.perf_counter() < stop_at:
            body = queue.get_nowait()
            while True:
                async with session.post(f"{url}/v1/traces", data=body, headers=headers) as r:
                    text = await r.read()
                    if r.status == 200:
                        sent.ok += 1
                        break
                    if r.status not in (429, 503):
                        raise RuntimeError(f"POST {url}/v1/traces: {r.status} {text[:500]!r}")
                    sent.refused += 1
                    wait = float(r.headers.get("Retry-After", "0.1") or 0.1)
                await asyncio.sleep(min(wait, 1.0))

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(sender(session) for _ in range(CLIENTS)))
    sent.seconds = time.perf_counter() - started
    return sent


@dataclass
class Watch:
    """Polls the highest span row id of a SQLite file and notes when it last grew."""

    db: Path
    started: float = field(default_factory=time.perf_counter)
    highest: int = 0
    last_growth: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            while not self._stop.wait(0.2):
                try:
                    row = conn.execute("SELECT max(id) FROM spans").fetchone()
                except sqlite3.OperationalError:
                    continue
                if row[0] and row[0] > self.highest:
                    self.highest = row[0]
                    self.last_growth = time.perf_counter() - self.started
        finally:
            conn.close()

    def settle(self, expected: int, sent_s: float, quiet: float, cap: float) -> None:
        """Waits until `expected` rows are in, or `cap` s pass, or none came for `quiet` s
        since the later of the last row and the last request (`sent_s` after the start).

        A server that has stored nothing yet is waited for until `cap`: Phoenix may decode
        its whole backlog before its first insert.
        """
        deadline = time.perf_counter() + cap
        while time.perf_counter() < deadline and self.highest < expected:
            now = time.perf_counter() - self.started
            if self.highest and now - max(self.last_growth, sent_s) > quiet:
                break
            time.sleep(0.2)
        self._stop.set()
        if self._thread:
            self._thread.join()


def stored_spans(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM spans").fetchone()[0])


def measure(
    name: str,
    pid: int,
    url: str,
    db: Path,
    bodies: list[bytes],
    time_box: float | None,
    drain_cap: float,
) -> dict[str, float]:
    """One run's figures: accepted and persisted spans/s, refusals, time until the last
    span is queryable, CPU seconds from the first request to the last stored span, and
    peak RSS under the load (the start-up's, before it, is reported apart)."""
    settle(pid)
    start_rss = reset_peak_rss(pid)
    cpu0 = cpu_seconds(pid)
    watch = Watch(db)
    watch.start()
    sent = asyncio.run(send(url, bodies, time_box))
    watch.settle(sent.ok * BATCH, sent.seconds, quiet=30.0, cap=drain_cap)
    cpu = cpu_seconds(pid) - cpu0
    stored = stored_spans(db)
    queryable = max(watch.last_growth, 1e-9)
    print(
        f"  {name}: {sent.ok} requests in {sent.seconds:.1f} s, {stored} spans stored,"
        f" last queryable at {queryable:.1f} s",
        flush=True,
    )
    return {
        "span_bytes": len(bodies[0]) / BATCH,
        "accepted": sent.ok * BATCH / sent.seconds,
        "persisted": stored / queryable,
        "refused": sent.refused,
        "unstored": sent.ok * BATCH - stored,
        "send_s": sent.seconds,
        "queryable_s": queryable,
        "cpu": cpu,
        "cpu_us_span": cpu / max(stored, 1) * 1e6,
        "rss": peak_rss_mb(pid),
        "start_rss": start_rss,
    }


def run_agent(bodies: list[bytes]) -> dict[str, float]:
    agent = start_agent()
    try:
        return measure(
            "agent", agent.proc.pid, agent.url, agent.data_dir / "proveai.db", bodies, None, 60
        )
    finally:
        agent.stop()
        shutil.rmtree(agent.data_dir, ignore_errors=True)


def run_phoenix(
    python: Path, bodies: list[bytes], time_box: float, drain_cap: float
) -> dict[str, float]:
    phoenix = start_phoenix(python)
    try:
        return measure(
            "phoenix", phoenix.proc.pid, phoenix.url, phoenix.db, bodies, time_box, drain_cap
        )
    finally:
        phoenix.stop()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of the four runs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _raise_interrupt)

    counts = {2048: 60, 20480: 16} if args.quick else {2048: 500, 20480: 200}
    ceiling_counts = {2048: 40, 20480: 8} if args.quick else {2048: 200, 20480: 40}
    phoenix_counts = {2048: 16, 20480: 4} if args.quick else {2048: 24, 20480: 8}
    time_box = 8.0 if args.quick else 20.0
    drain_cap = 120.0 if args.quick else 300.0
    python = phoenix_python()
    bodies = {
        size: [rag_request(BATCH, size, seq) for seq in range(n)] for size, n in counts.items()
    }

    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    ceilings: dict[int, list[dict[str, float]]] = {2048: [], 20480: []}
    for round_ in range(args.rounds):
        for size in (2048, 20480):
            print(f"round {round_ + 1}, {size // 1024} KB spans", flush=True)
            results.setdefault(("agent", size), []).append(run_agent(bodies[size]))
            ceilings[size].append(ceiling(size, ceiling_counts[size]))
            results.setdefault(("phoenix", size), []).append(
                run_phoenix(python, bodies[size][: phoenix_counts[size]], time_box, drain_cap)
            )

    print_table(results, ceilings)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_table(
    results: dict[tuple[str, int], list[dict[str, float]]],
    ceilings: dict[int, list[dict[str, float]]],
) -> None:
    print(
        f"\n{'server':>8} {'size':>6} {'round':>5} {'accepted/s':>11} {'persisted/s':>12}"
        f" {'refused':>8} {'unstored':>8} {'send_s':>7} {'queryable_s':>11} {'cpu_s':>6}"
        f" {'cpu_us/span':>11} {'peak_rss_mb':>11} {'start_rss_mb':>12}"
    )
    for (server, size), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for i, r in enumerate(runs):
            queryable = f"{'>' if r['unstored'] else ''}{r['queryable_s']:.1f}"
            print(
                f"{server:>8} {size // 1024:>3} KB {i + 1:>5} {r['accepted']:>11.0f}"
                f" {r['persisted']:>12.0f} {r['refused']:>8.0f} {r['unstored']:>8.0f}"
                f" {r['send_s']:>7.1f} {queryable:>11} {r['cpu']:>6.1f}"
                f" {r['cpu_us_span']:>11.0f} {r['rss']:>11.1f} {r['start_rss']:>12.1f}"
            )

    print("(>: not all accepted spans were stored by the end of the wait)")

    print("\nceiling in one thread (spans/s): bare decode, decode + executemany per request")
    for size, cs in ceilings.items():
        for i, c in enumerate(cs):
            print(
                f"{size // 1024:>3} KB round {i + 1}: decode {c['decode']:>9.0f}"
                f"  sqlite {c['sqlite']:>8.0f}"
            )

    agent2, phoenix2 = results[("agent", 2048)], results[("phoenix", 2048)]
    agent20, phoenix20 = results[("agent", 20480)], results[("phoenix", 20480)]
    persisted_2kb, persisted_20kb = _median(agent2, "persisted"), _median(agent20, "persisted")
    phoenix_2kb, phoenix_20kb = _median(phoenix2, "persisted"), _median(phoenix20, "persisted")
    ceiling_2kb = _median(ceilings[2048], "sqlite")
    ceiling_20kb = _median(ceilings[20480], "sqlite")
    peak = max(r["rss"] for r in agent2 + agent20)
    phoenix_peak = max(r["rss"] for r in phoenix2 + phoenix20)
    print("\nmedians over rounds; ratios of persisted spans/s")
    for name, agent, phoenix, top in (
        ("2 KB", persisted_2kb, phoenix_2kb, ceiling_2kb),
        ("20 KB", persisted_20kb, phoenix_20kb, ceiling_20kb),
    ):
        print(
            f"{name:>6} agent/phoenix {_ratio(agent, phoenix):7.1f}"
            f"   agent/ceiling {agent / top:.2f}"
        )
    print(f"Phoenix {PHOENIX_VERSION}, its peak RSS {phoenix_peak:.0f} MB")
    print(
        f"persisted_2kb={persisted_2kb:.0f} persisted_20kb={persisted_20kb:.0f}"
        f" phoenix_persisted_2kb={phoenix_2kb:.0f}"
        f" ratio_vs_phoenix={_ratio(persisted_2kb, phoenix_2kb):.1f}"
        f" ceiling_ratio_2kb={persisted_2kb / ceiling_2kb:.2f}"
        f" ceiling_ratio_20kb={persisted_20kb / ceiling_20kb:.2f}"
        f" peak_rss_mb={peak:.0f}"
    )


if __name__ == "__main__":
    main()
