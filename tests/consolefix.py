"""Driving the console under Textual's pilot: what the screen shows, and waiting for a state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from textual.app import App
from textual.css.query import NoMatches
from textual.pilot import Pilot

from proveai_tui.widgets.quiet_static import QuietStatic


def screen_text(app: App) -> str:
    """The whole screen as the terminal would show it, without styles."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def status_text(app: App) -> str:
    """The status bar's visible parts, joined by " | "."""
    bar = app.screen.query_one("#status")
    return " | ".join(w.plain for w in bar.query(QuietStatic) if w.display)


def reached(condition: Callable[[], bool]) -> bool:
    """The condition, false while the widgets it reads are not composed yet."""
    try:
        return condition()
    except NoMatches:
        return False


async def until(
    pilot: Pilot, condition: Callable[[], bool], what: str, timeout_s: float = 10.0
) -> None:
    """Wait for the console to reach a state, failing with what was awaited and the screen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not reached(condition):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)
