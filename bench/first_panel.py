"""Demo to first panel: seconds from `./dev demo` in a fresh clone to a panel with data.

Clones this repository's HEAD into a temporary directory and runs the README's demo
command there, `./dev demo`, in a tmux pane of its own (100×30), with a virtual
environment, a pip cache, XDG data and config directories all inside the temporary
directory: nothing installed before is reused. The Debian packages (Prometheus,
VictoriaMetrics, tmux, ...) are the exception: they are already on this machine and are
not removed, so `apt-get` time is not in the figure. From the moment the command starts
it polls every 0.2 s:

- the agent's `/api/overview`, until a service has a request rate above zero
  (api_first_panel_s), with the key the demo wrote into its data directory;
- the pane, until the console's overview shows a rate above zero ("rate 3.9 rps")
  (first_panel_s: what a user sees);
- the `==>` lines `./dev` prints, to tell where the time went;
- the agent's log, until the reasoning model is loaded (model_loaded_s), when the fresh
  run builds it in the background.

The fresh run then waits for the background model build to finish, the demo is stopped
with Ctrl-C in its pane, and the same command runs again in the same clone, now installed.
Everything the runs started is stopped and the temporary directory removed, also on
Ctrl-C or an error.

    python bench/first_panel.py [--quick] [--pip-cache] [--timeout S]

--quick skips the fresh run and times only an installed one, with the virtual environment
this script runs in. --pip-cache lets the fresh run use the machine's pip cache.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from proveai_agent.stack.native import free_port

ROOT = Path(__file__).resolve().parent.parent
SIZE = ("100", "30")
POLL_S = 0.2
RATE_ON_SCREEN = re.compile(r"rate\s+(<0\.01|\d+(?:\.\d+)?)\s+rps")
MODEL_LOADED = "reasoning model loaded"
BACKGROUND_PID = ".proveai-model-setup.pid"


class Pane:
    """The demo in a tmux server of its own, so that no other tmux session is touched."""

    def __init__(self, workdir: Path) -> None:
        self.socket = f"proveai-first-panel-{os.getpid()}"
        self.log = workdir / "pane.log"

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout

    def start(self, command: str, cwd: Path) -> None:
        self.log.write_bytes(b"")
        self.tmux(
            "new-session", "-d", "-s", "demo", "-x", SIZE[0], "-y", SIZE[1], "-c", str(cwd)
        )
        self.tmux("set-option", "-t", "demo", "remain-on-exit", "on")
        self.tmux("pipe-pane", "-t", "demo", "-o", f"cat >> {self.log}")
        self.tmux("respawn-pane", "-k", "-t", "demo", command)

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "demo")

    def dead(self) -> bool:
        return self.tmux("list-panes", "-t", "demo", "-F", "#{pane_dead}").strip() in ("1", "")

    def interrupt(self, timeout_s: float = 40) -> None:
        self.tmux("send-keys", "-t", "demo", "C-c")
        deadline = time.monotonic() + timeout_s
        while not self.dead() and time.monotonic() < deadline:
            time.sleep(0.5)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@dataclass
class Timing:
    """When each thing was first seen, seconds after the command started."""

    label: str
    phases: list[tuple[float, str]] = field(default_factory=list)
    agent_healthy_s: float | None = None
    api_first_panel_s: float | None = None
    first_panel_s: float | None = None
    model_loaded_s: float | None = None
    background_done_s: float | None = None
    problem: str | None = None
    pane: Pane | None = None


def _get(url: str, key: str | None = None) -> dict | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    try:
        with opener.open(request, timeout=2) as response:
            return json.loads(response.read() or b"{}")
    except (OSError, ValueError):
        return None


def _has_rate(overview: dict | None) -> bool:
    services = (overview or {}).get("services") or []
    return any(
        isinstance(s.get("rate_rps"), int | float) and s["rate_rps"] > 0 for s in services
    )


def _operator_key(keys_file: Path) -> str | None:
    try:
        for line in keys_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == "operator":
                return parts[0]
    except OSError:
        return None
    return None


def _new_phase_lines(log: Path, seen: int) -> tuple[list[str], int]:
    try:
        data = log.read_bytes()
    except OSError:
        return [], seen
    lines = data.decode("utf-8", "replace").replace("\r", "\n").split("\n")
    phases = [line.strip() for line in lines if line.strip().startswith("==>")]
    return phases[seen:], len(phases)


def run_demo(
    timing: Timing, clone: Path, env: dict[str, str], data_home: Path, timeout_s: float
) -> None:
    """Start `./dev demo` in a pane and time it to the first panel; leaves it running."""
    port = free_port()
    assignments = " ".join(f"{k}={v}" for k, v in env.items())
    command = f"env -u COLUMNS -u LINES {assignments} ./dev demo --listen 127.0.0.1:{port}"
    url = f"http://127.0.0.1:{port}"
    demo_dir = data_home / "proveai" / "demo"
    pane = timing.pane = Pane(clone.parent)
    started = time.monotonic()
    pane.start(command, clone)
    seen = 0
    while time.monotonic() - started < timeout_s:
        now = time.monotonic() - started
        lines, seen = _new_phase_lines(pane.log, seen)
        timing.phases += [(now, line) for line in lines]
        if timing.agent_healthy_s is None and _get(f"{url}/healthz") is not None:
            timing.agent_healthy_s = now
        if timing.agent_healthy_s is not None and timing.api_first_panel_s is None:
            key = _operator_key(demo_dir / "keys")
            if key and _has_rate(_get(f"{url}/api/overview", key)):
                timing.api_first_panel_s = time.monotonic() - started
        if timing.first_panel_s is None:
            match = RATE_ON_SCREEN.search(pane.text())
            if match and match.group(1) not in ("0", "0.0", "0.00"):
                timing.first_panel_s = time.monotonic() - started
        if timing.first_panel_s is not None and timing.api_first_panel_s is not None:
            return
        if pane.dead():
            timing.problem = "the demo exited:\n" + pane.text()
            return
        time.sleep(POLL_S)
    timing.problem = f"no panel within {timeout_s:.0f} s; the pane shows:\n{pane.text()}"


def wait_model(timing: Timing, venv: Path, data_home: Path, started: float, timeout_s: float):
    """Wait for the background model build to end and the agent to load the model."""
    agent_log = data_home / "proveai" / "demo" / "agent.log"
    pid_file = venv / BACKGROUND_PID
    while time.monotonic() - started < timeout_s:
        now = time.monotonic() - started
        try:
            if timing.model_loaded_s is None and MODEL_LOADED in agent_log.read_text():
                timing.model_loaded_s = now
        except OSError:
            pass
        if timing.background_done_s is None and not _alive(pid_file):
            timing.background_done_s = now
        if timing.model_loaded_s is not None and timing.background_done_s is not None:
            return
        time.sleep(1)


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return Path(f"/proc/{pid}").exists()


def _tree(roots: set[int]) -> set[int]:
    """`roots` and every process below them: a build's compilers run in process groups of
    their own, which a signal to the group of the build would miss."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def stop_all(timing: Timing | None, tmp: Path, venv: Path) -> None:
    """Ctrl-C to the demo; then every process below the pane, below the background model
    build (of a virtual environment in the temporary directory only) and any other still
    running from the temporary directory."""
    if timing is not None and timing.pane is not None:
        pane_pid = timing.pane.tmux("list-panes", "-t", "demo", "-F", "#{pane_pid}").strip()
        left = _tree({int(pane_pid)}) if pane_pid.isdigit() else set()
        timing.pane.interrupt()
        _kill({pid for pid in left if Path(f"/proc/{pid}").exists()})
        timing.pane.kill()
        timing.pane = None
    if venv.is_relative_to(tmp):
        with contextlib.suppress(OSError, ValueError, IndexError):
            _kill(_tree({int((venv / BACKGROUND_PID).read_text().split()[0])}))
    time.sleep(1)
    stray = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(tmp) in cmdline or cwd.startswith(str(tmp)):
            stray.add(int(proc.name))
    _kill(_tree(stray))


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the benchmark as Ctrl-C does, clean-up included."""
    raise KeyboardInterrupt


def report(timing: Timing) -> None:
    print(f"\n{timing.label}")
    for at, line in timing.phases:
        print(f"  {at:7.1f} s  {line}")
    rows = [
        ("agent healthy", timing.agent_healthy_s),
        ("/api/overview: a service with a rate", timing.api_first_panel_s),
        ("console: a panel with a rate", timing.first_panel_s),
        ("reasoning model loaded", timing.model_loaded_s),
        ("background model build ended", timing.background_done_s),
    ]
    for name, value in rows:
        if value is not None:
            print(f"  {value:7.1f} s  {name}")
    if timing.problem:
        print(f"  problem: {timing.problem}")


def figure(value: float | None) -> str:
    return "none" if value is None else f"{value:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only an installed run")
    parser.add_argument("--pip-cache", action="store_true", help="use the machine's pip cache")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    args = parser.parse_args()
    # Also when started in the background, where a shell leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if shutil.which("tmux") is None:
        print("tmux is needed: apt-get install tmux", file=sys.stderr)
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="proveai-first-panel-"))
    clone = tmp / "repo"
    data_home = tmp / "data"
    venv = Path(sys.prefix) if args.quick else tmp / "venv"
    env = {
        "PROVEAI_VENV": str(venv),
        "XDG_DATA_HOME": str(data_home),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
    }
    if not args.pip_cache:
        env["PIP_CACHE_DIR"] = str(tmp / "pip-cache")
    timings: list[Timing] = []
    current: Timing | None = None
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        head = subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        print(
            f"clone of {head} in a temporary directory;"
            f" venv {'reused' if args.quick else 'new'}"
        )
        labels = ["installed"] if args.quick else ["fresh", "installed"]
        for label in labels:
            current = Timing(label)
            timings.append(current)
            started = time.monotonic()
            run_demo(current, clone, env, data_home, args.timeout)
            if label == "fresh" and current.problem is None:
                print(
                    f"fresh: first panel at {figure(current.first_panel_s)} s; waiting for"
                    " the background model build",
                    flush=True,
                )
                wait_model(current, venv, data_home, started, args.timeout)
            stop_all(current, tmp, venv)
            current = None
            report(timings[-1])
            if timings[-1].problem:
                break
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if current is not None:
            report(current)
    finally:
        stop_all(current, tmp, venv)
        shutil.rmtree(tmp, ignore_errors=True)

    by_label = {t.label: t for t in timings}
    fresh, installed = by_label.get("fresh"), by_label.get("installed")
    print(
        f"fresh_first_panel_s={figure(fresh.first_panel_s if fresh else None)}"
        f" installed_first_panel_s={figure(installed.first_panel_s if installed else None)}"
        f" fresh_model_loaded_s={figure(fresh.model_loaded_s if fresh else None)}"
    )
    return 0 if all(t.problem is None for t in timings) else 1


if __name__ == "__main__":
    raise SystemExit(main())
