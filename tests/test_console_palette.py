"""The command palette, keys remapped from the configuration file, and the keys list."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.command import CommandPalette
from textual.widgets import Input

from proveai_tui import settings
from proveai_tui.app import ConsoleApp, binding_ids, parse_args
from proveai_tui.client import AgentClient
from proveai_tui.feed import PollingSource
from proveai_tui.screens.case import CaseScreen
from proveai_tui.screens.cases import CasesScreen
from proveai_tui.screens.help import HelpScreen
from proveai_tui.widgets.quiet_static import QuietStatic
from test_console import KEY, SIZE, loaded, open_case_screen, screen_text, until

FIXTURES = Path(__file__).parent / "console_fixtures"
sys.path.insert(0, str(FIXTURES))

from fake_agent import FakeAgent  # noqa: E402

pytestmark = pytest.mark.console


@pytest.fixture
async def fake() -> AsyncIterator[FakeAgent]:
    server = FakeAgent(KEY)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def console(fake: FakeAgent, **options) -> ConsoleApp:
    client = AgentClient(fake.url, KEY, timeout_s=1.0)
    return ConsoleApp(client, PollingSource(client, interval_s=0.2), **options)


def help_text(app: ConsoleApp) -> str:
    return app.screen.query_one("#help-text", QuietStatic).plain


async def palette_choose(pilot, query: str) -> None:
    await pilot.press("colon")
    await until(pilot, lambda: isinstance(pilot.app.screen, CommandPalette), "the palette")
    await pilot.press(*query)
    await pilot.pause(0.5)  # the palette searches in the background
    await pilot.press("enter")


async def test_the_palette_finds_a_screen_by_what_it_does(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await palette_choose(pilot, "every case")
        await until(pilot, lambda: isinstance(app.screen, CasesScreen), "the cases screen")


@pytest.mark.parametrize("read_only", [False, True])
async def test_the_palette_offers_the_case_actions_and_none_when_read_only(
    fake: FakeAgent, read_only: bool
) -> None:
    if True:
        app = console(fake, read_only=read_only)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await open_case_screen(pilot)
            await pilot.press("colon")
            await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
            await pilot.press(*"triage")
            await pilot.pause(0.5)
            shown = screen_text(app)
            if read_only:
                assert "· key t" not in shown and "case.triage" not in shown, shown
            else:
                assert "· key t" in shown, shown
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, CaseScreen), "back to the case")


async def test_a_remapped_key_works_and_the_keys_list_shows_it(
    fake: FakeAgent, tmp_path: Path
) -> None:
    path = tmp_path / "console.toml"
    path.write_text('[keys]\n"app.cases" = "c"\n"app.keys" = "f1"\n')
    loaded_settings = settings.load(path, binding_ids())
    assert loaded_settings.problems == []
    app = console(fake, settings=loaded_settings)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")  # no longer bound
        await pilot.pause(0.2)
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys list")
        text = help_text(app)
        assert "  c  Go to every case  app.cases" in text, text
        assert "  2  Go to every case" not in text
        await pilot.press("escape")
        await pilot.press("2")  # the default key is gone
        await pilot.pause(0.2)
        assert not isinstance(app.screen, CasesScreen)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CasesScreen), "the cases screen")


async def test_the_keys_list_leaves_out_keys_the_screen_takes_over(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys list")
        assert "  1  Go to the overview  app.overview" in help_text(app)
        await pilot.press("escape")
        await open_case_screen(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys list")
        text = help_text(app)
        # On the case screen 1 shows the evidence view, so it is not "go to the overview".
        assert "case.view_evidence" in text
        assert "app.overview" not in text, text


async def test_a_bad_configuration_file_is_said_and_the_default_keys_stay(
    fake: FakeAgent, tmp_path: Path
) -> None:
    path = tmp_path / "console.toml"
    path.write_text('[keys]\n"app.nothing" = "z"\n')
    args = parse_args(["--agent", fake.url, "--config", str(path)])
    loaded_settings = settings.load(args.config, binding_ids())
    app = console(fake, settings=loaded_settings)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await until(
            pilot,
            lambda: any("'app.nothing'" in n.message for n in app._notifications),
            "the notice",
        )
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, CasesScreen), "the cases screen")


def test_every_binding_has_an_id_and_ids_are_known() -> None:
    ids = binding_ids()
    for expected in ("app.quit", "app.palette", "case.triage", "cases.filter", "audit.refresh"):
        assert expected in ids


async def test_the_palette_input_takes_hostile_text_without_harm(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("colon")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
        app.screen.query_one(Input).value = "[bold]%s\\x00" * 200
        await pilot.pause(0.5)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, CommandPalette), "closed")
