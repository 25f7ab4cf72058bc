"""SVG snapshots of the console's main screens, against the fake agent with a stopped clock.

A snapshot is the whole terminal as the user sees it, colours included: a change to any screen
shows up here as a failed comparison with the picture that was looked at and accepted. After
a deliberate change, look at the new pictures (pytest writes a report of the differences) and
accept them with `pytest tests/test_console_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp.connector
import pytest

sys.path.insert(0, str(Path(__file__).parent / "console_fixtures"))

import scenes
from scenes import SCENES, AgentThread, FrozenClock

pytestmark = pytest.mark.console

SnapCompare = Callable[..., bool]
SMALL, LARGE = (80, 24), (160, 48)


@pytest.fixture(scope="module")
def fake_agent() -> Iterator[AgentThread]:
    """One fake agent for the module: the scenes only read from it."""
    with scenes.running_agent() as agent:
        yield agent


@pytest.fixture(autouse=True)
def fixed_world(fake_agent: AgentThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock at the fixtures' now, the shown address on the fake agent, a fixed actor."""
    for module in scenes.CLOCK_READERS:
        monkeypatch.setattr(f"{module}.datetime", FrozenClock)
    monkeypatch.setattr(
        aiohttp.connector, "DefaultResolver", scenes.resolver_factory(fake_agent.port)
    )
    monkeypatch.setenv(scenes.ACTOR_ENV, scenes.ACTOR)
    monkeypatch.delenv("NO_COLOR", raising=False)


SMALL_SCENES = [
    "overview",
    "cases",
    "case-evidence",
    "case-timeline",
    "case-hypotheses",
    "case-suggestions",
    "case-context",
    "case-waterfall",
    "changes",
    "audit",
    "help",
    "case-help",
    "dialog-apply-fix",
    "dialog-confirm",
]


@pytest.mark.parametrize("name", SMALL_SCENES)
def test_each_main_screen_at_80x24_is_as_accepted(snap_compare: SnapCompare, name: str) -> None:
    assert snap_compare(scenes.console(), terminal_size=SMALL, run_before=SCENES[name].reach)


@pytest.mark.parametrize("name", ["overview", "case-evidence", "case-waterfall"])
def test_the_wide_layout_at_160x48_is_as_accepted(snap_compare: SnapCompare, name: str) -> None:
    assert snap_compare(scenes.console(), terminal_size=LARGE, run_before=SCENES[name].reach)


def test_the_overview_with_no_color_is_as_accepted(
    snap_compare: SnapCompare, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = scenes.console()
    assert app.no_color, "NO_COLOR is read when the console starts"
    assert snap_compare(app, terminal_size=SMALL, run_before=SCENES["overview"].reach)


def test_the_overview_in_16_colours_is_as_accepted(snap_compare: SnapCompare) -> None:
    app = scenes.console(scenes.SixteenColourConsole)
    assert snap_compare(app, terminal_size=SMALL, run_before=SCENES["overview"].reach)
