"""The console's main screens as fixed scenes, for snapshot tests and the docs' screenshots.

A scene is the fake agent's fixtures, a clock stopped at the fixtures' "now" and the keys
that reach one screen. The same scene gives the same picture on any machine, on any day:
the fake agent runs on a free port but the console is pointed at `localhost:8470` and its
connections are resolved to that port, so the address on the top line never changes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from fake_agent import FIXTURE_NOW, FakeAgent
from rich.color import ColorSystem
from rich.segment import Segment
from rich.style import Style
from textual.app import App
from textual.color import Color
from textual.filter import LineFilter
from textual.pilot import Pilot

from proveai_tui import app as app_module
from proveai_tui.app import ConsoleApp
from proveai_tui.client import AgentClient
from proveai_tui.feed import PollingSource
from proveai_tui.screens.case import CaseScreen
from proveai_tui.screens.case_actions import ACTOR_ENV as ACTOR_ENV

HERE = Path(__file__).parent
KEY = "snapshot-key"
SHOWN_HOST, SHOWN_PORT = "localhost", 8470
SHOWN_URL = f"http://{SHOWN_HOST}:{SHOWN_PORT}"
"""The address the console is given, and shows; connections to it reach the fake agent."""
ACTOR = "sam"
"""Who the console acts as (in ACTOR_ENV), as the dialogs' confirmations say."""
POLL_S = 3600.0
"""One read at start and none while a picture is taken."""
SETTLE_S = 10.0


class FrozenClock(datetime):
    """`datetime` whose `now()` is the fixtures' now, 2025-06-02 09:30:00 UTC."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> FrozenClock:
        return cls.fromtimestamp(FIXTURE_NOW.timestamp(), tz)


CLOCK_READERS = (
    "proveai_tui.feed",
    "proveai_tui.widgets.case_header",
    "proveai_tui.widgets.case_table",
)
"""The console's modules that read the clock: the time of a delivery, and ages."""


class PinnedResolver(AbstractResolver):
    """Resolves the shown address to the fake agent's port on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if (host, port) != (SHOWN_HOST, SHOWN_PORT):
            raise OSError(f"only {SHOWN_HOST}:{SHOWN_PORT} is served here, not {host}:{port}")
        found: ResolveResult = {
            "hostname": host,
            "host": "127.0.0.1",
            "port": self.port,
            "family": socket.AF_INET,
            "proto": 0,
            "flags": socket.AI_NUMERICHOST,
        }
        return [found]

    async def close(self) -> None:
        return None


def resolver_factory(port: int) -> Callable[..., AbstractResolver]:
    """What replaces aiohttp's default resolver: every connector made gets a pinned one."""
    return lambda *args, **kwargs: PinnedResolver(port)


class SixteenColours(LineFilter):
    """Every colour as a 16-colour terminal shows it: the nearest of the standard 16."""

    def apply(self, segments: list[Segment], background: Color) -> list[Segment]:
        return [
            Segment(text, self._downgrade(style), control) for text, style, control in segments
        ]

    @staticmethod
    def _downgrade(style: Style | None) -> Style | None:
        if style is None:
            return None
        color = style.color.downgrade(ColorSystem.STANDARD) if style.color else None
        bgcolor = style.bgcolor.downgrade(ColorSystem.STANDARD) if style.bgcolor else None
        return style + Style.from_color(color, bgcolor)


class AgentThread:
    """The fake agent on its own event loop in a thread, so that a console can be run with
    `App.run` (which makes a loop of its own) while the agent answers it.

    CASE-7 is served as a case worked on (case_CASE-7_worked.json): ranked hypotheses, two
    suggestions, a timeline with every kind of event, and first among its exemplar traces
    one where the agent calls a rate-limited chat model eight times in a row.
    """

    def __init__(self) -> None:
        self.agent = FakeAgent(KEY)
        self.agent.case_overrides["CASE-7"] = json.loads(
            (HERE / "case_CASE-7_worked.json").read_text()
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.agent.port

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.agent.start(), self._loop).result(10)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.agent.stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@contextmanager
def running_agent() -> Iterator[AgentThread]:
    """The fake agent, started, then stopped whatever happens."""
    agent = AgentThread()
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def console(app_class: type[ConsoleApp] = ConsoleApp) -> ConsoleApp:
    """A console on the shown address, reading once with the polling source."""
    client = AgentClient(SHOWN_URL, KEY, timeout_s=5.0)
    return app_class(client, PollingSource(client, interval_s=POLL_S))


class SixteenColourConsole(ConsoleApp):
    """The console as a terminal of 16 colours draws it."""

    CSS_PATH = str(Path(app_module.__file__).parent / ConsoleApp.CSS_PATH)
    """The console's own stylesheet: a relative path would be read beside this file."""

    def get_line_filters(self) -> Sequence[LineFilter]:
        return [*super().get_line_filters(), SixteenColours()]


async def until(pilot: Pilot, condition: Callable[[], bool], what: str) -> None:
    """Wait for the console to reach a state, failing with what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


BACKGROUND = frozenset({"live", "case-action"})
"""Worker groups that run on while a screen is still: the live source, an open dialog."""


def idle(app: App[Any]) -> bool:
    """Every read the screen started has finished."""
    return all(w.is_finished for w in app.workers if w.group not in BACKGROUND)


async def settled(pilot: Pilot) -> None:
    """Wait until the reads the screen started have been answered and drawn."""
    await pilot.pause(0.1)
    await until(pilot, lambda: idle(pilot.app), "the screen's reads")
    await pilot.pause(0.1)
    await pilot.wait_for_scheduled_animations()


async def overview_loaded(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    await until(
        pilot,
        lambda: app.link is not None and app.link.state == "connected",
        "the first delivery",
    )
    await settled(pilot)


async def case_loaded(pilot: Pilot) -> None:
    await until(pilot, lambda: isinstance(pilot.app.screen, CaseScreen), "the case screen")
    screen = pilot.app.screen
    assert isinstance(screen, CaseScreen)
    await until(pilot, lambda: screen.case is not None, "the case")
    await settled(pilot)


OPEN_CASE = "open-case"
"""The step that opens the overview's first case (CASE-7, the worked one) and waits for it."""


@dataclass(frozen=True)
class Scene:
    """One screen: the keys that reach it from the overview, with a wait after each step.

    Args:
        name: the screen, as in the screenshots' file names.
        title: what the docs call it.
        steps: keys pressed one after the other, each followed by a wait until the screen
            settles; OPEN_CASE opens the first case and waits until it is loaded.
    """

    name: str
    title: str
    steps: tuple[str, ...] = ()

    async def reach(self, pilot: Pilot) -> None:
        """`run_before` for pytest-textual-snapshot: from the start to this screen."""
        await overview_loaded(pilot)
        for step in self.steps:
            if step == OPEN_CASE:
                await pilot.press("enter")
                await case_loaded(pilot)
            else:
                await pilot.press(step)
                await settled(pilot)


SCENES = {
    scene.name: scene
    for scene in (
        Scene("overview", "Overview"),
        Scene("cases", "Cases", ("2",)),
        Scene("case-evidence", "Case: evidence", (OPEN_CASE,)),
        Scene("case-timeline", "Case: timeline", (OPEN_CASE, "2")),
        Scene("case-hypotheses", "Case: hypotheses", (OPEN_CASE, "3")),
        Scene("case-suggestions", "Case: suggestions", (OPEN_CASE, "4")),
        Scene("case-context", "Case: context", (OPEN_CASE, "5")),
        Scene("case-waterfall", "Case: waterfall", (OPEN_CASE, "6")),
        Scene("changes", "Changes", ("3",)),
        Scene("audit", "Audit", ("4",)),
        Scene("help", "Keys", ("question_mark",)),
        Scene("case-help", "Keys of the case screen", (OPEN_CASE, "question_mark")),
        Scene("dialog-apply-fix", "Dialog: apply a fix", (OPEN_CASE, "a")),
        Scene("dialog-confirm", "Dialog: confirm", (OPEN_CASE, "a", "enter")),
    )
}
