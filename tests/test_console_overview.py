"""The overview's service panels and time range, driven by the pilot against the fake agent.

Expected texts are the fixture's numbers (tests/console_fixtures/overview.json) written by
hand under the console's rules: rates to one decimal from 1 rps, latencies in seconds to
two decimals from 0.1 s, output tokens whole from 10 a second, scores to two decimals.
"""

from __future__ import annotations

import copy
import io
import re
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from rich.console import Console
from rich.segment import Segments
from textual.pilot import Pilot

from consolefix import screen_text
from consolefix import until as wait_until
from proveai_tui.app import ConsoleApp
from proveai_tui.client import AgentClient
from proveai_tui.feed import PollingSource
from proveai_tui.screens.overview import OverviewScreen
from proveai_tui.widgets.metric import Metric, score, tokens_rate
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.service_panel import ServicePanel
from proveai_tui.widgets.source_health import SourceHealth
from proveai_tui.widgets.spark import Spark

FIXTURES = Path(__file__).parent / "console_fixtures"
sys.path.insert(0, str(FIXTURES))

from fake_agent import FakeAgent  # noqa: E402

pytestmark = pytest.mark.console

KEY = "console-overview-key"
SMALL, LARGE = (80, 24), (200, 60)
POLL_S = 0.2


until = partial(wait_until, timeout_s=5.0)
"""Waits at most 5.0 s for a state of the console."""


@pytest.fixture
async def fake() -> AsyncIterator[FakeAgent]:
    server = FakeAgent(KEY)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def console(fake: FakeAgent) -> ConsoleApp:
    client = AgentClient(fake.url, KEY, timeout_s=1.0)
    return ConsoleApp(client, PollingSource(client, interval_s=POLL_S))


def panel(app: ConsoleApp, service: str) -> ServicePanel:
    [found] = [p for p in app.overview_screen.query(ServicePanel) if p.service == service]
    return found


def metric(app: ConsoleApp, service: str, name: str) -> str:
    return panel(app, service).query_one(f".{name}", Metric).plain


def spark(app: ConsoleApp, service: str, name: str) -> str:
    return panel(app, service).query_one(f".{name}-spark", Spark).plain.strip()


def heading(app: ConsoleApp) -> str:
    return app.overview_screen.query_one("#services-heading", QuietStatic).plain


def overview_ranges(fake: FakeAgent) -> list[str]:
    """The range of each overview request, "" when the console sent none."""
    found = []
    for path, _ in fake.requests:
        if path.startswith("/api/overview"):
            match = re.search(r"[?&]range=([^&]+)", path)
            found.append(match.group(1) if match else "")
    return found


async def loaded(pilot: Pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: len(app.overview_screen.query(ServicePanel)) == 2, "panels")
    await until(pilot, lambda: metric(app, "rag-api", "rate") != "", "panel numbers")
    await until(pilot, lambda: "CASE-7" in screen_text(app), "the cases")


def test_tokens_and_scores_are_written_for_people() -> None:
    assert tokens_rate(312.4) == "312 tok/s"
    assert tokens_rate(1204.0) == "1,204 tok/s"
    assert tokens_rate(4.25) == "4.2 tok/s"
    assert tokens_rate(0.0) == "0.0 tok/s"
    assert tokens_rate(0.01) == "<0.1 tok/s"
    assert tokens_rate(None) == "no data"
    assert score(0.8167) == "0.82"
    assert score(None) == "no data"


async def test_at_80x24_each_panel_has_every_number_on_two_rows(fake: FakeAgent) -> None:
    """rag-api: ttft 0.42 s; 312.4 tok/s is 312 tok/s; groundedness 0.91, relevance 0.82
    in the top border, by name. embedder reported none of them: "no data" each."""
    app = console(fake)
    async with app.run_test(size=SMALL) as pilot:
        await loaded(pilot)
        text = screen_text(app)
        for line in [
            "╭─ rag-api  groundedness 0.91 · relevance 0.82 ─",
            "│ rate 4.2 rps ",
            " error 1.5 % ",
            " ttft 0.42 s ",
            "│ p95 0.84 s ",
            " p50 0.31 s · p99 1.92 s ",
            " out 312 tok/s ",
            "╭─ embedder  quality no data ─",
            " ttft no data ",
            " out no data ",
            "Services (2) · trends over the last 15 minutes · from Prometheus",
            "] Range",
        ]:
            assert line in text, f"{line!r} not on screen:\n{text}"
        assert metric(app, "rag-api", "ttft-side") == "ttft 0.42 s"
        assert metric(app, "rag-api", "tokens-side") == "out 312 tok/s"
        assert metric(app, "embedder", "quantiles") == "p50 no data · p99 no data"
        assert spark(app, "rag-api", "rate") and spark(app, "rag-api", "p95")
        # Each panel is its two rows inside its border: two panels and the cases fit.
        assert panel(app, "rag-api").outer_size.height == 4
        assert "CASE-6" in text


async def test_at_200x60_every_number_with_a_series_has_its_trend(fake: FakeAgent) -> None:
    """groundedness is 0.91 throughout: a flat line at half height, 8 × "▄". relevance's
    last eight points are 0.834 0.831 0.828 0.825 0.822 0.819 0.816 0.82; scaled from 0.816
    (▁) to 0.834 (█) over 7 steps they are blocks 7 6 5 4 2 1 0 2."""
    app = console(fake)
    async with app.run_test(size=LARGE) as pilot:
        await loaded(pilot)
        rag = panel(app, "rag-api")
        await until(pilot, lambda: rag.outer_size.height == 6, "the tall panel")
        assert metric(app, "rag-api", "ttft") == "ttft 0.42 s"
        assert metric(app, "rag-api", "tokens") == "out 312 tok/s"
        assert metric(app, "embedder", "ttft") == "ttft no data"
        assert metric(app, "embedder", "tokens") == "out no data"
        quality = rag.query_one(".quality", QuietStatic).plain
        assert quality == "quality groundedness 0.91 ▄▄▄▄▄▄▄▄ · relevance 0.82 █▇▆▅▃▂▁▃"
        empty = panel(app, "embedder").query_one(".quality", QuietStatic).plain
        assert empty == "quality no data"
        for name in ("rate", "error", "p95", "ttft", "tokens"):
            assert spark(app, "rag-api", name), name
        for name in ("error", "p95", "ttft", "tokens"):
            assert spark(app, "embedder", name) == "", f"{name}: no series, no bars"

        text = screen_text(app)
        assert re.search(r"╭─ rag-api ─+╮ ╭─ embedder ─", text), "side by side, titles alone"
        for line in ["│ ttft 0.42 s ", " out 312 tok/s ", "│ quality groundedness 0.91"]:
            assert line in text, f"{line!r} not on screen:\n{text}"
        assert "ttft-side" not in text and not rag.query_one(".ttft-side").display


async def test_the_range_keys_ask_the_agent_and_show_the_range_in_words(
    fake: FakeAgent,
) -> None:
    hour = copy.deepcopy(fake.overview)
    hour["services"][0]["rate_rps"] = 9.87
    hour["read_from"] = "victoriametrics"
    fake.range_overviews["1h"] = hour
    app = console(fake)
    async with app.run_test(size=SMALL) as pilot:
        await loaded(pilot)
        assert set(overview_ranges(fake)) == {""}, "the live overview is the agent's 15m"

        await pilot.press("right_square_bracket")
        await until(pilot, lambda: "1h" in overview_ranges(fake), "a request for 1h")
        await until(pilot, lambda: metric(app, "rag-api", "rate") == "rate 9.9 rps", "1h")
        assert heading(app) == "Services (2) · trends over the last hour · from VictoriaMetrics"
        assert "trends over the last hour" in screen_text(app)

        # The pushed 15-minute overviews keep coming and do not replace the hour.
        polls = len(overview_ranges(fake))
        await until(pilot, lambda: len(overview_ranges(fake)) >= polls + 3, "more polls")
        assert metric(app, "rag-api", "rate") == "rate 9.9 rps"

        asked = overview_ranges(fake).count("1h")
        await pilot.press("r")
        await until(pilot, lambda: overview_ranges(fake).count("1h") > asked, "r asks again")

        await pilot.press("left_square_bracket")
        await until(pilot, lambda: metric(app, "rag-api", "rate") == "rate 4.2 rps", "15m")
        assert (
            heading(app) == "Services (2) · trends over the last 15 minutes · from Prometheus"
        )

        await pilot.press("left_square_bracket")
        await until(pilot, lambda: "365d" in overview_ranges(fake), "the longest range")
        await until(pilot, lambda: "the last 365 days" in heading(app), "its words")


async def test_t_cycles_through_every_range_of_the_agent(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SMALL) as pilot:
        await loaded(pilot)
        words = [
            ("1h", "the last hour"),
            ("6h", "the last 6 hours"),
            ("24h", "the last 24 hours"),
            ("7d", "the last 7 days"),
            ("30d", "the last 30 days"),
            ("90d", "the last 90 days"),
            ("365d", "the last 365 days"),
        ]
        for name, said in words:
            await pilot.press("t")
            await until(
                pilot, lambda n=name: n in overview_ranges(fake), f"a request for {name}"
            )
            await until(pilot, lambda s=said: f"trends over {s} ·" in heading(app), said)
        await pilot.press("t")
        await until(pilot, lambda: "the last 15 minutes" in heading(app), "back to 15 minutes")
        screen = app.overview_screen
        assert isinstance(screen, OverviewScreen) and screen.range == "15m"


def rendered(app: ConsoleApp, color_system: str, no_color: bool) -> str:
    """The screen as a terminal with that colour system receives it, escape codes included."""
    out = io.StringIO()
    terminal = Console(
        file=out,
        color_system=color_system,  # type: ignore[arg-type]
        no_color=no_color,
        force_terminal=True,
        width=app.size.width,
        legacy_windows=False,
    )
    for strip in app.screen._compositor.render_strips():
        terminal.print(Segments(list(strip)), end="\n")
    return out.getvalue()


ESCAPE = re.compile(r"\x1b\[([0-9;]*)m")
COLOUR_CODES = {*range(30, 39), *range(40, 49), *range(90, 98), *range(100, 108)}


def colour_codes(ansi: str) -> set[int]:
    codes: set[int] = set()
    for params in ESCAPE.findall(ansi):
        codes |= {int(p) for p in params.split(";") if p} & COLOUR_CODES
    return codes


@pytest.mark.parametrize(
    ("color_system", "no_color"), [("standard", False), ("standard", True)]
)
async def test_16_colours_and_no_color_still_say_every_state_in_words(
    fake: FakeAgent, monkeypatch: pytest.MonkeyPatch, color_system: str, no_color: bool
) -> None:
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    app = console(fake)
    async with app.run_test(size=SMALL) as pilot:
        await loaded(pilot)
        ansi = rendered(app, color_system, no_color)
        words = ESCAPE.sub("", ansi)
        for state in [
            "Prometheus up",
            "VictoriaMetrics DOWN",
            "VictoriaMetrics: connection refused",
            "error no data",
            "ttft no data",
            "out no data",
            "quality no data",
            "CASE-7 high",
            "CASE-6 medium",
            "connected",
        ]:
            assert state in words, f"{state!r} not in words:\n{words}"
        if no_color:
            assert colour_codes(ansi) == set(), "NO_COLOR sends no colour"
        else:
            assert colour_codes(ansi), "16 colours are sent as standard codes"
            assert "38;2;" not in ansi and "38;5;" not in ansi


async def test_a_source_that_is_not_configured_is_not_called_down(fake: FakeAgent) -> None:
    fake.overview["sources"]["victoriametrics"] = {"up": False, "error": "not configured"}
    app = console(fake)
    async with app.run_test(size=SMALL) as pilot:
        await loaded(pilot)
        health = app.overview_screen.query_one(SourceHealth)
        await until(pilot, lambda: "VictoriaMetrics not configured" in health.plain, "it")
        assert "DOWN" not in screen_text(app)
