"""Console speed against a real agent holding 10 000 cases of 50 services.

Fills a fresh data directory with cases (the agent's own case documents, states, classes
and severities spread over the services), starts `proveai-agent serve` on it, and then:

- open_s: from the key that shows the Cases screen until its table holds the first page;
- filter_ms: from submitting a `/` filter (one service, then one state) until the first
  frame drawn with exactly the answer in the table; median of several filters (the time
  until the console is idle again is printed beside it);
- refresh_ms: one live delivery of the open cases with one case's state changed, on the
  Cases screen listing the open cases, from delivery until the end of the first frame
  drawn with the new state in its row; median of 20. The bench waits without forcing
  frames, so the console's own frame pacing counts (the time until the pilot finds the
  console idle, in its 20 ms steps, is printed beside it);
- idle_refresh_bytes: the console in a real pseudo-terminal of 80×24 polling once a
  second with nothing changing: bytes written to the terminal per refresh, once the
  first screen is drawn.

    python bench/console.py [--cases N] [--services N]
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import pty
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import KEY, start_agent
from proveai_agent.cases.service import new_case
from proveai_agent.store import db
from proveai_agent.store.cases import CaseStore

STATES = ("DETECTED", "TRIAGED", "INVESTIGATING", "REMEDIATION_SUGGESTED", "RESOLVED", "CLOSED")
CLASSES = (
    "LATENCY_REGRESS",
    "ERROR_SPIKE",
    "AGENT_LOOP",
    "TOKEN_EXPLOSION",
    "RETRIEVAL_DRIFT",
    "HALLUCINATION",
    "CONTEXT_OVERFLOW",
    "PROMPT_REGRESSION",
)
SEVERITIES = ("critical", "high", "medium", "low")
SIZE = (80, 24)


def service_name(index: int) -> str:
    return f"svc-{index:02d}"


async def populate(data_dir: Path, cases: int, services: int) -> None:
    """Write `cases` case documents straight into the agent's database, oldest first."""
    path = data_dir / "proveai.db"
    writer = await db.connect(path)
    reader = await db.connect(path)
    try:
        await db.migrate(writer)
        store = CaseStore(writer, reader)
        start = time.time() - cases * 60
        for i in range(cases):
            at = start + i * 60
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
            doc = new_case(
                title=f"p95 of chat up on {service_name(i % services)} (case {i})",
                service=service_name(i % services),
                at=stamp,
                trigger="anomaly_detection",
                severity=SEVERITIES[i % len(SEVERITIES)],
                snapshot={"traces": []},
                actor="agent",
            )
            doc["state"] = STATES[(i // services) % len(STATES)]
            doc["failure_class"] = CLASSES[i % len(CLASSES)]
            doc["hypotheses"] = [{"cause_id": "model-version-changed", "confidence": 0.7}]
            await store.insert(doc, at)
    finally:
        await reader.close()
        await writer.close()


OPEN_STATES = {"DETECTED", "TRIAGED", "INVESTIGATING", "REMEDIATION_SUGGESTED"}


def expected_count(cases: int, services: int, service: int | None, state: str | None) -> int:
    """How many populated cases the Cases screen lists for a filter (open ones unless the
    filter names a state), counted the way `populate` spreads them."""
    count = 0
    for i in range(cases):
        own = STATES[(i // services) % len(STATES)]
        if service is not None and i % services != service:
            continue
        if (state is None and own in OPEN_STATES) or own == state:
            count += 1
    return count


def idle_refresh_bytes(url: str, seconds: float = 10.0) -> tuple[float, int]:
    """Bytes the console writes per one-second poll at 80×24 once its first screen is drawn."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
    env = {
        **os.environ,
        "TERM": "xterm-256color",
        "PROVEAI_API_KEY": KEY,
        "COLUMNS": str(SIZE[0]),
        "LINES": str(SIZE[1]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "proveai_tui.app", "--agent", url, "--interval", "1"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)

    def read_for(duration: float) -> int:
        total = 0
        end = time.monotonic() + duration
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([master], [], [], left)
            if ready:
                try:
                    total += len(os.read(master, 65536))
                except OSError:
                    break
        return total

    try:
        first = read_for(8.0)  # start-up and the first full screen
        idle = read_for(seconds)
    finally:
        os.write(master, b"q")
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)
    return idle / seconds, first


async def pilot_timings(url: str, cases: int, services: int) -> dict[str, float]:
    """open_s, filter_ms and refresh_ms, measured on the console driven by Textual's pilot."""
    from proveai_tui.app import ConsoleApp
    from proveai_tui.client import AgentClient
    from proveai_tui.feed import PollingSource, Snapshot
    from proveai_tui.screens.cases import PAGE, CasesScreen
    from proveai_tui.widgets.case_table import CaseTable

    client = AgentClient(url, KEY, timeout_s=10.0)
    app = ConsoleApp(client, PollingSource(client, interval_s=3600))
    async with app.run_test(size=SIZE) as pilot:

        async def until(condition: Any, timeout_s: float = 30.0) -> None:
            deadline = time.monotonic() + timeout_s
            while not condition():
                if time.monotonic() > deadline:
                    raise RuntimeError("the console did not get there in time")
                await asyncio.sleep(0.005)  # a pilot pause would force a frame

        def rows() -> int:
            return app.screen.query_one(CaseTable).row_count

        await pilot.pause(1.0)
        started = time.perf_counter()
        await pilot.press("2")
        await until(lambda: isinstance(app.screen, CasesScreen) and rows() > 0)
        open_s = time.perf_counter() - started
        screen = app.screen
        assert isinstance(screen, CasesScreen)

        # When the answer is on the screen: the end of the first frame drawn once the table
        # holds it. The pilot's own wait for the app to be idle comes later, and counts
        # every frame the app draws after that (the settled time).
        frames: list[tuple[float, int]] = []
        draw = type(screen)._compositor_refresh

        def timed_draw(self: Any) -> None:
            draw(self)
            if self is screen:
                frames.append((time.perf_counter(), -1 if screen.loading else rows()))

        type(screen)._compositor_refresh = timed_draw  # type: ignore[method-assign]

        filters: list[float] = []
        settled: list[float] = []
        for text, service, state in (
            (f"service:{service_name(7)}", 7, None),
            ("state:TRIAGED", None, "TRIAGED"),
            (f"service:{service_name(21)} state:DETECTED", 21, "DETECTED"),
            (f"service:{service_name(42)}", 42, None),
            ("state:INVESTIGATING", None, "INVESTIGATING"),
        ):
            want = min(expected_count(cases, services, service, state), PAGE)
            await pilot.press("slash", "ctrl+u", *text)
            frames.clear()
            started = time.perf_counter()
            await pilot.press("enter")
            await until(lambda want=want: not screen.loading and rows() == want)
            await until(lambda want=want: any(n == want for _, n in frames))
            settled.append((time.perf_counter() - started) * 1000)
            shown = next(at for at, n in frames if n == want)
            filters.append((shown - started) * 1000)
        type(screen)._compositor_refresh = draw  # type: ignore[method-assign]

        # Back to every open case, which the live deliveries below are about.
        await pilot.press("escape")
        await until(lambda: not screen.loading and rows() == PAGE)
        table = screen.query_one(CaseTable)
        await pilot.press("home")
        await until(lambda: table.scroll_offset.y == 0)
        listed = await client.cases(state="open", limit=200)
        items = listed["items"]
        shown_state: list[tuple[float, str]] = []
        watched = [""]

        def timed_row_draw(self: Any) -> None:
            draw(self)
            if self is screen and watched[0]:
                shown_state.append(
                    (time.perf_counter(), str(table.get_cell(watched[0], "state")))
                )

        type(screen)._compositor_refresh = timed_row_draw  # type: ignore[method-assign]
        refreshes: list[float] = []
        refresh_settled: list[float] = []
        current = [dict(item) for item in items]
        by_id = {str(item["id"]): item for item in current}
        on_screen = table.case_ids[:10]  # at 80×24 a row out of view is not drawn at all
        for round_ in range(20):
            case = by_id[on_screen[round_ % len(on_screen)]]
            new_state = "TRIAGED" if case["state"] != "TRIAGED" else "DETECTED"
            case["state"] = new_state
            changed = [dict(item) for item in current]
            watched[0] = str(case["id"])
            shown_state.clear()
            started = time.perf_counter()
            app.receive(Snapshot(cases=changed))
            deadline = started + 5.0
            while not any(state == new_state for _, state in shown_state):
                if time.perf_counter() > deadline:
                    raise RuntimeError("the changed state was never drawn")
                await asyncio.sleep(0.001)
            shown = next(at for at, state in shown_state if state == new_state)
            refreshes.append((shown - started) * 1000)
            await pilot.pause()
            refresh_settled.append((time.perf_counter() - started) * 1000)
            watched[0] = ""
            await pilot.pause(0.05)
        type(screen)._compositor_refresh = draw  # type: ignore[method-assign]
    return {
        "open_s": open_s,
        "filter_ms": statistics.median(filters),
        "filter_settled_ms": statistics.median(settled),
        "refresh_ms": statistics.median(refreshes),
        "refresh_settled_ms": statistics.median(refresh_settled),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=50)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="proveai-bench-console-"))
    started = time.perf_counter()
    asyncio.run(populate(data_dir, args.cases, args.services))
    print(
        f"{args.cases} cases of {args.services} services written in "
        f"{time.perf_counter() - started:.1f} s"
    )
    agent = start_agent(data_dir=data_dir)
    try:
        timings = asyncio.run(pilot_timings(agent.url, args.cases, args.services))
        per_refresh, first = idle_refresh_bytes(agent.url)
    finally:
        agent.stop()
    print(f"open the Cases screen     {timings['open_s']:.3f} s   (target ≤ 1 s)")
    print(f"apply a filter (median)   {timings['filter_ms']:.1f} ms  (target ≤ 100 ms)")
    print(f"  ... until idle (median) {timings['filter_settled_ms']:.1f} ms")
    print(f"live refresh (median)     {timings['refresh_ms']:.1f} ms  (target ≤ 50 ms)")
    print(f"  ... until idle (median) {timings['refresh_settled_ms']:.1f} ms")
    print(f"first screen at 80×24     {first} bytes")
    print(f"idle refresh at 80×24     {per_refresh:.0f} bytes  (target ≤ 4096)")
    print(
        f"open_s={timings['open_s']:.3f} filter_ms={timings['filter_ms']:.1f} "
        f"refresh_ms={timings['refresh_ms']:.1f} idle_refresh_bytes={per_refresh:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
