"""Nothing the demo runs connects anywhere but loopback: no telemetry, no update checks, no
DNS lookups, no fonts or assets fetched.

The demo (`proveai-agent demo --no-console`: the agent, native Prometheus and
VictoriaMetrics, and the simulator) and then the console run in a network namespace that has
only `lo`, under strace, until the console shows the overview with both simulated services'
data. Every IPv4 or IPv6 address any of their processes connects or sends to must then be
loopback, and no query may go to a DNS port; every address they listen on must be loopback
too. Their environment names an HTTP proxy off the machine, as a user's shell may: they talk
to each other on this host, which no proxy is for. A namespace with only `lo` makes an
outbound attempt fail at once, so a program that phones home would only be slower here, never
hang the test, and its attempt is in the trace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import egressfix
from egressfix import Attempt
from proveai_agent.stack.native import MissingBinary, find_binary
from tmuxfix import Pane, console_command

SRC = Path(__file__).resolve().parent.parent / "src"
# The namespace is new: the demo's own default port is free in it.
AGENT_URL = "http://127.0.0.1:8470"
SERVICES = ("rag-api", "research-agent")
DEMO_READY_S = 60
STOP_S = 30
# TEST-NET-1: an address that is never anyone's proxy.
PROXY = "http://192.0.2.1:3128"
PROXY_VARIABLES = {
    name: PROXY
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
}

# One GET of the overview with the demo's key, run inside the namespace; prints the JSON.
FETCH = textwrap.dedent(
    """\
    import sys, urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(sys.argv[1], headers={"X-API-Key": sys.argv[2]})
    with opener.open(request, timeout=2) as answer:
        sys.stdout.write(answer.read().decode())
    """
)


@pytest.fixture(scope="module")
def isolation() -> None:
    problem = egressfix.why_not_isolated()
    if problem is not None:
        pytest.skip(problem)


def environment() -> dict[str, str]:
    """This checkout's sources first, so every process runs the code under test; a proxy
    off the machine, and no exception for loopback."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, **PROXY_VARIABLES}
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    return env


def report(found: list[Attempt]) -> str:
    return "these tried to leave the machine:\n" + "\n".join(f"  {one}" for one in found)


# The checker itself


def test_a_trace_names_each_address_with_the_program_that_asked_for_it() -> None:
    trace = [
        '100 execve("/usr/bin/python3", ["python3", "-m", "app"], 0x7ffd /* 3 vars */) = 0\n',
        "100 clone3({flags=CLONE_VM|CLONE_THREAD, exit_signal=0}, 88) = 101\n",
        '101 connect(3, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("93.184.215.14")}, 16 <unfinished ...>\n',  # noqa: E501
        '100 connect(4, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT (No such file or directory)\n',  # noqa: E501
        '100 sendto(5, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(53), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 1\n',  # noqa: E501
        "101 <... connect resumed>) = -1 ENETUNREACH (Network is unreachable)\n",
        '100 connect(6, {sa_family=AF_INET6, sin6_port=htons(8470), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0\n',  # noqa: E501
        '100 bind(7, {sa_family=AF_INET, sin_port=htons(9090), sin_addr=inet_addr("0.0.0.0")}, 16) = 0\n',  # noqa: E501
    ]

    found = egressfix.attempts(trace)

    assert [(a.pid, a.process, a.call, a.address, a.port) for a in found] == [
        (100, "python3 -m app", "sendto", "::1", 53),
        (101, "python3 -m app", "connect", "93.184.215.14", 443),
        (100, "python3 -m app", "connect", "::ffff:127.0.0.1", 8470),
        (100, "python3 -m app", "bind", "0.0.0.0", 9090),
    ]
    # Off the machine: the remote address, and the DNS query even to a local resolver.
    assert [a.leaves for a in found] == [True, True, False, False]
    assert found[1].result == "-1 ENETUNREACH (Network is unreachable)"
    assert str(found[0]) == "python3 -m app (pid 100): sendto to [::1]:53 (a DNS lookup) = 1"


PROBE = textwrap.dedent(
    """\
    import socket
    for target in (("127.0.0.1", 9), ("192.0.2.1", 9)):
        try:
            socket.create_connection(target, timeout=2).close()
        except OSError:
            pass
    try:
        socket.getaddrinfo("egress-probe.example.com", 443)
    except OSError:
        pass
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
        try:
            udp.sendto(b"ping", ("2001:db8::1", 9))
        except OSError:
            pass
    """
)


def test_the_checker_reports_a_real_program_that_tries_to_leave(
    isolation: None, tmp_path: Path
) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    trace = tmp_path / "probe.trace"

    done = subprocess.run(
        egressfix.isolated(trace, [sys.executable, str(probe)]),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr
    found = egressfix.leaving([trace])
    assert all(one.process.endswith("probe.py") for one in found), report(found)
    remote = {(one.call, one.address, one.port) for one in found if one.port != 53}
    assert remote == {("connect", "192.0.2.1", 9), ("sendto", "2001:db8::1", 9)}
    assert any(one.port == 53 for one in found), f"no DNS lookup reported; {report(found)}"
    # The loopback connection was traced too, and is not reported.
    local = [a for a in egressfix.attempts(trace.read_text().splitlines()) if a.loopback]
    assert [(a.address, a.port) for a in local] == [("127.0.0.1", 9)]


# The demo and the console


def require_backends() -> None:
    for name, env in (
        ("prometheus", "PROVEAI_PROMETHEUS_BIN"),
        ("victoria-metrics", "PROVEAI_VM_BIN"),
    ):
        try:
            find_binary(name, env, name)
        except MissingBinary as exc:
            pytest.skip(str(exc))


def strace_child(strace_pid: int, command: Sequence[str]) -> int:
    """The process strace started for `command`, once it runs it.

    A child is taken only when its command line is `command`'s: one found earlier may be a
    process that is gone a moment later, whose namespace cannot be entered then.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{strace_pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
                    if [a.decode(errors="replace") for a in argv[1:]] == list(command[1:]):
                        return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"strace did not start {command}")


class Demo:
    """The demo in its own loopback-only namespace, traced into `trace`."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "demo"
        self.trace = tmp_path / "demo.trace"
        self.log = (tmp_path / "demo.out").open("wb")
        self.last_error: list[str] = []
        command = [sys.executable, "-m", "proveai_agent", "demo", "--no-console"]
        command += ["--data-dir", str(self.data_dir), "--scrape-interval", "1"]
        self.strace = subprocess.Popen(
            egressfix.isolated(self.trace, command),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=environment(),
        )
        self.pid = strace_child(self.strace.pid, command)
        self.namespace = os.readlink(f"/proc/{self.pid}/ns/net")
        assert self.namespace != os.readlink("/proc/self/ns/net"), "the demo is not isolated"

    def output(self) -> str:
        """What the demo printed, and what in its trace so far tried to leave."""
        self.log.flush()
        printed = Path(self.log.name).read_text(errors="replace")
        found = egressfix.leaving([self.trace]) if self.trace.exists() else []
        return printed + (report(found) if found else "")

    def overview(self) -> dict[str, object] | None:
        """GET /api/overview from inside the namespace; None until the agent answers."""
        key_file = self.data_dir / "scrape.key"
        if not key_file.exists():
            return None
        fetch = [sys.executable, "-c", FETCH, f"{AGENT_URL}/api/overview", key_file.read_text()]
        done = subprocess.run(
            egressfix.joined(self.pid, None, fetch), capture_output=True, text=True, timeout=10
        )
        if done.returncode != 0:
            self.last_error = done.stderr.strip().splitlines()[-1:]
            return None
        answer: dict[str, object] = json.loads(done.stdout)
        return answer

    def stop(self) -> int | None:
        """SIGTERM to the demo, as on Ctrl-C; strace exits once every process it followed
        has. Its status (the demo's), or None when something was still running."""
        if self.strace.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        try:
            return self.strace.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            return None

    def left(self) -> dict[int, str]:
        """pid → command line of every process still in the namespace, but strace."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.strace.pid:
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "net") == self.namespace:
                    line = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                    found[int(entry.name)] = line.decode(errors="replace").strip()
        return found

    def kill(self) -> None:
        """SIGKILL to every process left in the namespace (a tracee outlives a killed
        strace), then to strace."""
        for pid in self.left():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.strace.poll() is None:
            self.strace.kill()
            self.strace.wait()
        self.log.close()


@pytest.fixture
def demo(isolation: None, tmp_path: Path) -> Iterator[Demo]:
    require_backends()
    started = Demo(tmp_path)
    try:
        yield started
    finally:
        started.stop()
        started.kill()


def has_panel_data(overview: dict[str, object] | None) -> bool:
    """Both metric stores up and every simulated service with a request rate."""
    if overview is None:
        return False
    sources = overview["sources"]
    services = overview["services"]
    assert isinstance(sources, dict) and isinstance(services, list)
    rates = {one["service"]: one["rate_rps"] for one in services}
    return all(source["up"] for source in sources.values()) and all(
        rates.get(name) is not None for name in SERVICES
    )


def run_console(demo: Demo, pane: Pane, trace: Path) -> str:
    """The console in a tmux pane, in the demo's namespace and traced, until it shows the
    overview with both services; then quit with q. What the pane showed."""
    key = (demo.data_dir / "scrape.key").read_text()
    command = egressfix.joined(demo.pid, trace, [*console_command(), "--agent", AGENT_URL])
    env = {"TERM": "xterm-256color", "PROVEAI_API_KEY": key, **environment()}
    passed = ("TERM", "PROVEAI_API_KEY", "PYTHONPATH", *PROXY_VARIABLES)
    pane.start(command, {name: env[name] for name in passed})
    shown = pane.wait(
        lambda text: all(part in text for part in ("Prometheus up", *SERVICES)),
        "the console's overview with both services",
        timeout_s=30,
    )
    pane.keys("q")
    pane.wait_dead("the console")
    return shown


@pytest.mark.integration
@pytest.mark.console
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_demo_and_the_console_connect_only_to_loopback(
    demo: Demo, pane: Pane, tmp_path: Path
) -> None:
    deadline = time.monotonic() + DEMO_READY_S
    overview = demo.overview()
    while not has_panel_data(overview):
        assert demo.strace.poll() is None, f"the demo ended early:\n{demo.output()}"
        assert time.monotonic() < deadline, (
            f"no panel data: {overview or demo.last_error}\n{demo.output()}"
        )
        time.sleep(0.5)
        overview = demo.overview()

    console_trace = tmp_path / "console.trace"
    run_console(demo, pane, console_trace)
    status = demo.stop()

    left = demo.left()
    assert status == 0, (
        f"the demo did not stop cleanly ({status}), left {left}:\n{demo.output()}"
    )
    traced = egressfix.attempts(demo.trace.read_text(errors="replace").splitlines())
    programs = {one.process.split(" ")[0] for one in traced}
    assert {"prometheus", "victoria-metrics"} <= programs, programs
    for started in ("proveai_agent serve", "proveai_agent simulate"):
        assert any(started in one.process for one in traced), (started, programs)
    console = egressfix.attempts(console_trace.read_text(errors="replace").splitlines())
    assert any(one.port == 8470 for one in console), "the console's trace shows no agent"

    found = egressfix.leaving([demo.trace, console_trace])
    assert found == [], report(found)
    listening = [one for one in [*traced, *console] if one.call == "bind" and not one.loopback]
    assert listening == [], "listening beyond loopback:\n" + "\n".join(map(str, listening))
