"""`proveai-agent demo` in a tmux pane of 80×24: one case walked from DETECTED to RESOLVED.

The demo starts native Prometheus and VictoriaMetrics, the agent, the simulator and the
console; the simulator fails 40 % of rag-api's chat calls with a 503 from `--at` seconds
on, until the agent has a case about rag-api with a fix applied (`--fix-when-applied`).

The agent's configuration makes the walk fit in about two minutes without touching the
defaults: the detector judges a 20 s window against baseline windows every 5 s, and a
suggestion's verification must hold for 20 s. With the fault 35 s after the simulator
starts, the baseline windows ending 20, 25 and 30 s before the first cycles after the
fault hold only healthy calls, so their median error ratio is 0 and so is its spread:
the threshold is the detector's floor, 5 % (DetectorConfig.error_ratio_min), and the
window crosses it a few seconds into the fault. The suggestion's verification is the
signal's own query back at or below that threshold, `<= 0.05`, for 20 s. Once the fix is
marked applied the simulator stops the fault, and the verification can tell no sooner than
20 s later, once the worst error ratio of the last 20 s is down to 5 %: the case resolves
some 30 to 40 s after the fix, by itself on the console's screen.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proveai_agent.stack.native import MissingBinary, find_binary, free_port
from tmuxfix import Pane

pytestmark = [
    pytest.mark.integration,
    pytest.mark.console,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
    pytest.mark.skipif(
        not Path("/proc/self/stat").exists(), reason="needs /proc to see the demo's processes"
    ),
]

SRC = Path(__file__).resolve().parent.parent / "src"
SIZE = (80, 24)
SERVICE = "rag-api"
ACTOR = "tmux-e2e"
OWNER = "oncall"
FAULT_AT_S = 35
AGENT_CONFIG = """\
[detector]
window_s = 20
baseline_step_s = 5

[engine]
verify_window_s = 20
"""
STARTED = ("prometheus", "victoria-metrics", "proveai_agent serve", "proveai_agent simulate")
CONSOLE = "proveai_tui.app"
DEMO = "proveai_agent demo"


def require_backends() -> None:
    for name, env in (
        ("prometheus", "PROVEAI_PROMETHEUS_BIN"),
        ("victoria-metrics", "PROVEAI_VM_BIN"),
    ):
        try:
            find_binary(name, env, name)
        except MissingBinary as exc:
            pytest.skip(str(exc))


def python_path() -> str:
    """This checkout's sources first, so that every process runs the code under test."""
    return os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)


# The demo's processes, read from /proc


def stat_of(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process, None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), fields[19]


def descendants(root: int) -> dict[int, tuple[str, str]]:
    """pid → (start time, command line) of every process below `root`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := stat_of(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found: dict[int, tuple[str, str]] = {}
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        stat = stat_of(pid)
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if stat is not None:
            found[pid] = (stat[2], line.strip())
            pending.extend(children.get(pid, []))
    return found


def running(pid: int, started: str) -> bool:
    """Whether that very process (not a later one with its pid) still runs."""
    stat = stat_of(pid)
    return stat is not None and stat[2] == started and stat[0] != "Z"


# What the pane shows


SCROLLBAR = " ▁▂▃▄▅▆▇█"


def flat(text: str) -> str:
    """The pane's lines joined, so that a query wrapped over lines reads as one; a line
    with a dialog's borders gives what is between them, less a scrollbar's blocks."""
    parts = []
    for line in text.splitlines():
        if line.count("│") >= 2:
            line = line[line.index("│") + 1 : line.rindex("│")]
        parts.append(line.strip(SCROLLBAR))
    return "".join(parts)


def fits(text: str) -> bool:
    lines = text.splitlines()
    return len(lines) <= SIZE[1] and all(len(line) <= SIZE[0] for line in lines)


def footer(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


Part = str | re.Pattern[str]


def shows(*parts: Part, in_footer: str = "") -> Callable[[str], bool]:
    """Whether the pane has every part: a text, or a pattern found in its lines or in them
    joined (see `flat`); and `in_footer` on its last line. A step waits for all of them, as the
    terminal may be caught between two paints."""

    def check(text: str) -> bool:
        joined = flat(text)
        return in_footer in footer(text) and all(
            part in text if isinstance(part, str) else part.search(text) or part.search(joined)
            for part in parts
        )

    return check


def state_is(state: str) -> re.Pattern[str]:
    """The case header's state line, e.g. `state     TRIAGED            severity  high`."""
    return re.compile(rf"^ state +{state} ", re.MULTILINE)


def pane_pid(pane: Pane) -> int:
    return int(pane.tmux("list-panes", "-t", "console", "-F", "#{pane_pid}").strip())


@dataclass
class Demo:
    """The demo in its pane, and every process seen below the pane (pid → start, command)."""

    pane: Pane
    data_dir: Path
    pid: int
    """The pane's shell, which says the demo's exit status once it has ended."""
    seen: dict[int, tuple[str, str]] = field(default_factory=dict)

    def processes(self) -> dict[int, tuple[str, str]]:
        found = descendants(self.pid)
        self.seen.update(found)
        return found

    def stop(self) -> None:
        """SIGTERM to the demo, which then stops what it started, as on Ctrl-C."""
        for pid, (start, line) in self.seen.items():
            if DEMO in line and running(pid, start):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """The demo in a tmux pane of 80×24; whatever the test leaves running is stopped."""
    require_backends()
    config = tmp_path / "agent.toml"
    config.write_text(AGENT_CONFIG)
    data_dir = tmp_path / "demo"
    # tmux learns a pane's exit status only once it has reaped the process, at times
    # long after the pane closed; a shell around the demo says it at once.
    command = [
        "sh",
        "-c",
        '"$@"; echo "demo exited with status $?"',
        "sh",
        sys.executable,
        "-m",
        "proveai_agent",
        "demo",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--scrape-interval",
        "1",
        "--inject",
        "errors",
        "--at",
        str(FAULT_AT_S),
        "--config",
        str(config),
    ]
    env = {"TERM": "xterm-256color", "PROVEAI_ACTOR": ACTOR, "PYTHONPATH": python_path()}
    pane = Pane(f"proveai-demo-test-{os.getpid()}-{time.monotonic_ns()}")
    pane.start(command, env, SIZE)
    started = Demo(pane, data_dir, pane_pid(pane))
    try:
        yield started
    finally:
        if not pane.dead():
            started.processes()
            started.stop()
            deadline = time.monotonic() + 30
            while not pane.dead() and time.monotonic() < deadline:
                time.sleep(0.2)
        for pid, (start, _) in started.seen.items():
            if running(pid, start):
                os.kill(pid, signal.SIGKILL)
        pane.kill()


def test_demo_walks_a_case_to_resolved_in_an_80x24_terminal(demo: Demo) -> None:
    pane, data_dir = demo.pane, demo.data_dir
    began = time.monotonic()

    # The overview: both simulated services with traffic, and both metric stores up.
    rate = re.compile(r"│ rate \d+(\.\d+)? rps")
    overview = shows(
        "Prove AI · overview",
        "● connected",
        "Prometheus up",
        "VictoriaMetrics up",
        f"╭─ {SERVICE} ",
        "╭─ research-agent ",
    )
    text = pane.wait(
        lambda t: overview(t) and len(rate.findall(t)) == 2,
        "the overview with both services' data",
        timeout_s=60,
    )
    assert fits(text), text
    started = demo.processes()
    for name in (DEMO, *STARTED, CONSOLE):
        assert any(name in line for _, line in started.values()), (name, started)

    # The fault opens a case about rag-api, listed on the overview.
    row = re.compile(rf"(CASE-\d+) +(critical|high|medium|low) +DETECTED +\S+ +{SERVICE} ")
    text = pane.wait(
        lambda t: row.search(t) is not None, f"a case about {SERVICE}", timeout_s=90
    )
    found = row.search(text)
    assert found is not None
    case_id = found.group(1)
    assert fits(text), text

    # The Cases screen, filtered to the service, opens it.
    pane.keys("2")
    pane.wait(shows("Prove AI · cases", f"{case_id} "), "the Cases screen")
    pane.keys("/")
    pane.wait(shows("state:X class:Y service:Z"), "the filter line")
    pane.keys("-l", f"service:{SERVICE}")
    pane.keys("Enter")
    listed = re.compile(rf"^ {case_id} .* {SERVICE} ", re.MULTILINE)
    text = pane.wait(
        lambda t: f"service:{SERVICE}" in t and listed.search(t) is not None,
        "the filtered case list",
    )
    assert fits(text), text
    pane.keys("Enter")
    text = pane.wait(
        shows(
            f"Prove AI · {case_id}",
            state_is("DETECTED"),
            "class     ERROR_SPIKE",
            f"service   {SERVICE}",
            "error ratio",
            in_footer="t Triage",
        ),
        f"the case screen of {case_id}",
    )
    assert "threshold 5.0%" in text, "the baseline is healthy: the floor is the threshold"
    assert fits(text), text

    # Triage: severity high (the second choice), an owner, confirmed.
    pane.keys("t")
    pane.wait(shows(f"Severity of {case_id}?", "leave it as it is"), "the severity dialog")
    pane.keys("Home", "j", "Enter")
    pane.wait(shows("Who owns the case?"), "the owner dialog")
    pane.keys("-l", OWNER)
    pane.keys("Enter")
    confirm = shows(
        f"Triage {case_id}",
        f"{case_id}: DETECTED to TRIAGED, by {ACTOR}",
        "severity: high",
        f"owner: {OWNER}",
        "y or ⏎ send it",
    )
    pane.wait(confirm, "the triage confirmation")
    pane.keys("y")
    text = pane.wait(
        shows(
            state_is("TRIAGED"),
            f"done: {case_id} is TRIAGED now (severity high, owner {OWNER})",
            in_footer="i Investigate",
        ),
        "TRIAGED",
    )
    assert fits(text), text

    # Investigate: the engine's suggestions make the agent move on by itself.
    pane.keys("i")
    pane.wait(
        shows(f"{case_id}: TRIAGED to INVESTIGATING, by {ACTOR}", "y or ⏎ send it"),
        "the investigate confirmation",
    )
    pane.keys("y")
    text = pane.wait(
        shows(state_is("REMEDIATION_SUGGESTED"), in_footer="a Apply fix"),
        "REMEDIATION_SUGGESTED",
        timeout_s=45,
    )
    assert fits(text), text
    pane.keys("4")
    text = pane.wait(
        shows(
            "[4 Suggestions]",
            f"{case_id}-S1 ",
            re.compile(r"<=\s*0\.05\s*over\s*20\s*s"),
        ),
        "the suggestions and their verification",
    )
    assert fits(text), text

    # Apply the first suggestion's fix: the agent starts verifying it at once.
    pane.keys("a")
    pane.wait(shows("Which suggestion?", f"{case_id}-S1 "), "the suggestion to pick")
    pane.keys("Enter")
    text = pane.wait(
        shows(
            f"Apply fix {case_id}-S1",
            re.compile(rf"to FIX_APPLIED with the fix of {case_id}-S1"),
            re.compile(r"<=\s*0\.05\s*for\s*20\s*s"),
            "y or ⏎ send it",
        ),
        "the fix confirmation",
    )
    assert fits(text), text
    pane.keys("y")
    applied = time.monotonic()
    text = pane.wait(
        shows(state_is("VERIFYING"), f"done: {case_id} is VERIFYING now", "fix applied"),
        "VERIFYING",
    )
    assert fits(text), text

    # The fault stops, the verification holds, and the live stream shows RESOLVED.
    try:
        resolved = shows(state_is("RESOLVED"), in_footer="n Note")
        # A resolved case is no longer open: closing it is no longer offered.
        text = pane.wait(
            lambda t: resolved(t) and "x Close" not in footer(t), "RESOLVED", timeout_s=90
        )
    except AssertionError:
        pane.keys("r")
        time.sleep(3)
        after_r = pane.text()
        by_hand = state_is("RESOLVED").search(after_r) is not None
        raise AssertionError(
            "the case screen did not show RESOLVED by itself; "
            + ("after r it does" if by_hand else "nor after r")
            + f":\n{after_r}\nsimulator:\n{(data_dir / 'simulator.log').read_text()}"
        ) from None
    resolved_after = time.monotonic() - applied
    assert fits(text), text
    simulator_log = (data_dir / "simulator.log").read_text()
    assert f"{case_id} has a fix applied; stopping the fault" in simulator_log
    assert f"fault stopped: errors on {SERVICE} (on request)" in simulator_log
    # 20 s for the window to clear and 20 s of verification, never less.
    assert resolved_after > 20, resolved_after

    # Back on the Cases screen and on the overview the case has left the open cases (on the
    # case screen the digits pick its views, so esc leaves it first).
    pane.keys("Escape")
    text = pane.wait(
        lambda t: "Prove AI · cases" in t and listed.search(t) is None, "the cases without it"
    )
    assert fits(text), text
    pane.keys("1")
    text = pane.wait(
        lambda t: overview(t) and case_id not in t, "the overview without the case"
    )
    assert fits(text), text

    # q ends the console, and the demo stops everything it started.
    pane.keys("q")
    pane.wait_dead("the demo", timeout_s=40)  # each process gets 10 s to stop
    text = pane.text()
    assert "Traceback" not in text, text
    assert "prometheus stopped" in text and "victoria-metrics stopped" in text, text
    assert "demo exited with status 0" in text, text
    deadline = time.monotonic() + 15
    while left := [line for pid, (s, line) in started.items() if running(pid, s)]:
        assert time.monotonic() < deadline, f"still running after q: {left}"
        time.sleep(0.2)
    assert time.monotonic() - began < 180
