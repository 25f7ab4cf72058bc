"""A console in a real terminal: tmux servers of their own, for the console's tests."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def console_command() -> list[str]:
    """The installed console script next to this Python, else the module."""
    script = Path(sys.executable).parent / "proveai-console"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "proveai_tui.app"]


class Pane:
    """A console running in its own tmux server, so no other tmux session is touched."""

    def __init__(self, socket_name: str) -> None:
        self.socket = socket_name

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout

    def start(
        self, command: list[str], env: dict[str, str], size: tuple[int, int] = (80, 24)
    ) -> None:
        # COLUMNS and LINES from the test runner would override the pane's own size.
        unset = ["-u", "COLUMNS", "-u", "LINES"]
        line = shlex.join(["env", *unset, *(f"{k}={v}" for k, v in env.items()), *command])
        width, height = (str(n) for n in size)
        self.tmux("new-session", "-d", "-s", "console", "-x", width, "-y", height, line)
        self.tmux("set-option", "-t", "console", "remain-on-exit", "on")

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "console")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "console", *keys)

    def dead(self) -> bool:
        return self.tmux("list-panes", "-t", "console", "-F", "#{pane_dead}").strip() == "1"

    def wait(self, condition: Callable[[str], bool], what: str, timeout_s: float = 15) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if condition(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text}")
            time.sleep(0.2)

    def wait_dead(self, what: str, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.dead():
            assert time.monotonic() < deadline, f"{what} did not quit:\n{self.text()}"
            time.sleep(0.2)

    def kill(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10
        )


@pytest.fixture
def pane() -> Iterator[Pane]:
    started = Pane(f"proveai-console-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        yield started
    finally:
        started.kill()
