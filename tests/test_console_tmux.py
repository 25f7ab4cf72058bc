"""The real `proveai-console` in a tmux pane at 80×24 (and 160×48), read with `capture-pane`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from proveai_agent.stack.native import free_port
from tmuxfix import Pane, console_command

HERE = Path(__file__).parent
FAKE_AGENT = HERE / "console_fixtures" / "fake_agent.py"
SRC = HERE.parent / "src"
KEY = "tmux-test-key"

pytestmark = [
    pytest.mark.console,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


@pytest.fixture
def agent_url() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(FAKE_AGENT), "--port", str(port), "--key", KEY, "--recent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1):
                    break
            except OSError as error:
                if server.poll() is not None or time.monotonic() > deadline:
                    stderr = server.stderr.read() if server.poll() is not None else ""
                    raise RuntimeError(f"the fake agent did not start: {stderr}") from error
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=5)


def console_env() -> dict[str, str]:
    return {"TERM": "xterm-256color", "PROVEAI_API_KEY": KEY, "PYTHONPATH": str(SRC)}


def fits(text: str, size: tuple[int, int]) -> bool:
    lines = text.splitlines()
    return len(lines) <= size[1] and all(len(line) <= size[0] for line in lines)


@pytest.mark.parametrize("no_color", [False, True], ids=["colour", "NO_COLOR"])
def test_console_in_tmux_shows_panels_opens_a_case_and_quits(
    agent_url: str, no_color: bool
) -> None:
    env = {
        "TERM": "xterm-256color",
        "PROVEAI_API_KEY": KEY,
        "PYTHONPATH": str(SRC),
    }
    if no_color:
        env["NO_COLOR"] = "1"
    pane = Pane(f"proveai-console-test-{os.getpid()}-{int(no_color)}")
    try:
        pane.start([*console_command(), "--agent", agent_url], env)

        overview_shows = [
            "Prove AI · overview",
            "● connected",
            "VictoriaMetrics DOWN",
            "rag-api",
            "embedder",
            "error 1.5 %",
            "p95 0.84 s",
            "p50 0.31 s · p99 1.92 s",
            "rate 0.60 rps",
            "error no data",
            "CASE-7  high",
            "INVESTIGATING",
            "Quit",
        ]
        overview = pane.wait(lambda t: all(s in t for s in overview_shows), "the overview")
        assert len(overview.splitlines()) <= 24
        assert all(len(line) <= 80 for line in overview.splitlines())

        pane.keys("j")
        time.sleep(0.3)
        pane.keys("Enter")
        case_shows = [
            "Prove AI · CASE-6",
            "CASE-6  embedder p95 drifting up over 3 days",
            "state     DETECTED",
            "trigger   drift",
            "class     LATENCY_REGRESS",
            "p95 up 40 % over 3 days",
            "POST /embed  embedder  2.31 s  ok",
            "Back",
        ]
        pane.wait(lambda t: all(s in t for s in case_shows), "the case screen of CASE-6")

        pane.keys("Escape")
        pane.wait(lambda t: "Prove AI · overview" in t, "the overview again")
        pane.keys("q")
        deadline = time.monotonic() + 10
        while not pane.dead():
            assert time.monotonic() < deadline, f"q did not quit:\n{pane.text()}"
            time.sleep(0.2)
        assert "Traceback" not in pane.text()
    finally:
        pane.kill()


def test_ctrl_c_quits_the_console(agent_url: str, pane: Pane) -> None:
    pane.start([*console_command(), "--agent", agent_url], console_env())
    pane.wait(lambda t: "● connected" in t and "CASE-7" in t, "the overview")
    pane.keys("C-c")
    pane.wait_dead("ctrl+c")
    assert "ctrl+q" not in pane.text() and "Traceback" not in pane.text()


def test_case_screen_at_80x24_shows_the_span_detail_and_scrolls_it(
    agent_url: str, pane: Pane
) -> None:
    pane.start([*console_command(), "--agent", agent_url], console_env())
    pane.wait(lambda t: "CASE-7  high" in t, "the overview")
    pane.keys("Enter")
    header = [
        "CASE-7  Error spike on rag-api: chat calls rate-limited",
        "state     INVESTIGATING",
        "scores    relevance 0.963 · groundedness 0.412",
    ]
    shown = [
        *header,
        "Signals (2)",
        "high  error_spike  ERROR_SPIKE  rag-api / chat gpt-4o",
        "└─ chat gpt-4o  rag-api  1.58 s  ERROR  812 in / 95 out tok",
        "chat gpt-4o  client  1.58 s  ERROR: 429 Too Many Requests",
        "service rag-api · model gpt-4o → gpt-4o-2024-08-06 · operation chat",
    ]
    text = pane.wait(lambda t: all(s in t for s in shown), "the case with its span")
    assert fits(text, (80, 24))

    pane.keys("Tab")
    pane.keys(*["j"] * 3)
    shown = [
        *header,
        "scores relevance 0.963 · groundedness 0.412",
        "Messages (2)",
        "system You are the support assistant for Acme routers.",
    ]
    text = pane.wait(lambda t: all(s in t for s in shown), "the detail scrolled")
    assert "provider openai" not in text, "three lines scrolled away"
    assert fits(text, (80, 24))

    pane.keys("Tab", "j", "j")
    shown = [*header, "statistic error_ratio · current 12.0 % · baseline median 1.5 %"]
    text = pane.wait(lambda t: all(s in t for s in shown), "the signals scrolled")
    assert "Signals (2)" not in text
    pane.keys("q")
    pane.wait_dead("q")


def test_at_160x48_titles_have_a_column_and_the_detail_sits_beside_the_tree(
    agent_url: str, pane: Pane
) -> None:
    size = (160, 48)
    pane.start([*console_command(), "--agent", agent_url], console_env(), size)
    row = re.compile(
        r"CASE-7  high      INVESTIGATING  ERROR_SPIKE      rag-api   \S+ +"
        r"Error spike on rag-api: chat calls rate-limited$",
        re.MULTILINE,
    )
    print(
        "SIZE", pane.tmux("list-windows", "-F", "#{window_width}x#{window_height}"), pane.socket
    )
    text = pane.wait(lambda t: row.search(t) is not None, "the title in its column")
    assert "Open cases (2)  ⏎ opens the highlighted one" in text
    assert fits(text, size)

    pane.keys("Enter")
    text = pane.wait(lambda t: "Messages (2)" in t, "the wide case screen")
    beside = [
        line
        for line in text.splitlines()
        if "└─ ▼ POST /ask" in line and "service rag-api · model gpt-4o" in line
    ]
    assert beside, text
    assert "query (sum(increase(" in text and fits(text, size)
    pane.keys("q")
    pane.wait_dead("q")
