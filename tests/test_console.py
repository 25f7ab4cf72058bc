"""The console driven by Textual's pilot at 80×24 against a faithful fake of the agent's API."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import aiohttp
import pytest
from textual.pilot import Pilot

from consolefix import screen_text, status_text
from consolefix import until as wait_until
from proveai_tui import format as fmt
from proveai_tui.app import ConsoleApp, parse_args
from proveai_tui.client import AgentClient, AgentError
from proveai_tui.feed import PollingSource
from proveai_tui.screens.case import CaseScreen
from proveai_tui.screens.help import HelpScreen
from proveai_tui.screens.overview import OverviewScreen
from proveai_tui.widgets.case_header import CaseHeader
from proveai_tui.widgets.case_table import CaseTable, fit_columns
from proveai_tui.widgets.metric import Metric
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.scroll_pane import ScrollPane
from proveai_tui.widgets.service_panel import ServicePanel
from proveai_tui.widgets.signal_list import SignalList
from proveai_tui.widgets.source_health import SourceHealth
from proveai_tui.widgets.span_detail import SpanDetail, part_text
from proveai_tui.widgets.span_tree import SpanTree
from proveai_tui.widgets.spark import Spark, spark_line

FIXTURES = Path(__file__).parent / "console_fixtures"
sys.path.insert(0, str(FIXTURES))

from fake_agent import FakeAgent  # noqa: E402

pytestmark = pytest.mark.console

KEY = "console-test-key"
SIZE = (80, 24)
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


def console(fake: FakeAgent, key: str | None = KEY) -> ConsoleApp:
    client = AgentClient(fake.url, key, timeout_s=1.0)
    return ConsoleApp(client, PollingSource(client, interval_s=POLL_S))


def panel(app: ConsoleApp, service: str) -> ServicePanel:
    panels = [p for p in app.overview_screen.query(ServicePanel) if p.service == service]
    assert panels, f"no panel for {service}"
    return panels[0]


def metric(app: ConsoleApp, service: str, name: str) -> str:
    return panel(app, service).query_one(f".{name}", Metric).plain


def connected(app: ConsoleApp) -> bool:
    return app.link is not None and app.link.state == "connected"


async def loaded(pilot: Pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: bool(app.overview_screen.query(ServicePanel)), "panels")
    await until(pilot, lambda: metric(app, "rag-api", "rate") != "", "panel numbers")
    await until(pilot, lambda: app.overview_screen.query_one(CaseTable).row_count > 0, "cases")


async def open_case_screen(pilot: Pilot) -> CaseScreen:
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(pilot.app.screen, CaseScreen), "the case screen")
    screen = pilot.app.screen
    assert isinstance(screen, CaseScreen)
    await until(pilot, lambda: screen.case is not None, "the case to load")
    await pilot.pause(0.1)
    return screen


# The fake agent is faithful to the API's rules


async def test_fake_agent_refuses_requests_without_the_key(fake: FakeAgent) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(fake.url + "/api/overview") as response:
            assert response.status == 401
            assert (await response.json()) == {"error": "missing or invalid API key"}
        async with session.get(fake.url + "/healthz") as response:
            assert response.status == 200
        async with session.get(fake.url + "/api/overview", headers={"X-API-Key": KEY}) as r:
            assert r.status == 200


async def test_console_sends_the_key_as_x_api_key(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
    paths = {path.split("?")[0] for path, key in fake.requests if key == KEY}
    assert {"/api/overview", "/api/cases"} <= paths
    assert all(key == KEY for _, key in fake.requests)


# Overview


async def test_panels_show_the_overview_numbers_formatted(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert [p.service for p in app.overview_screen.query(ServicePanel)] == [
            "rag-api",
            "embedder",
        ]
        assert metric(app, "rag-api", "rate") == "rate 4.2 rps"
        assert metric(app, "rag-api", "error") == "error 1.5 %"
        assert metric(app, "rag-api", "p95") == "p95 0.84 s"
        assert metric(app, "rag-api", "quantiles") == "p50 0.31 s · p99 1.92 s"
        assert panel(app, "rag-api").border_subtitle == "CASE-7 high"


async def test_null_numbers_read_no_data_never_zero(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert metric(app, "embedder", "rate") == "rate 0.60 rps"
        assert metric(app, "embedder", "error") == "error no data"
        assert metric(app, "embedder", "p95") == "p95 no data"
        assert metric(app, "embedder", "quantiles") == "p50 no data · p99 no data"
        p95_spark = panel(app, "embedder").query_one(".p95-spark", Spark).plain
        assert p95_spark.strip() == "", "a series of nulls draws no bars"
        rate_spark = panel(app, "embedder").query_one(".rate-spark", Spark).plain
        assert set(rate_spark.strip()) <= set("▁▂▃▄▅▆▇█") and rate_spark.strip()


async def test_sources_show_up_and_down_with_the_error(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        health = app.overview_screen.query_one(SourceHealth).plain
        assert "Prometheus up" in health
        assert "VictoriaMetrics DOWN" in health
        assert "VictoriaMetrics: connection refused (http://127.0.0.1:8428)" in health
        assert "spanmetrics llm_traces_span_metrics" in health


async def test_missing_spanmetrics_is_said_as_such(fake: FakeAgent) -> None:
    fake.overview = json.loads((FIXTURES / "overview_no_spanmetrics.json").read_text())
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        source = app.overview_screen.query_one(SourceHealth)
        await until(pilot, lambda: "no spanmetrics" in source.plain, "no spanmetrics")
        assert not app.overview_screen.query(ServicePanel)
        empty = app.overview_screen.query_one("#no-services", QuietStatic)
        assert empty.display and "no services" in empty.plain
        assert "VictoriaMetrics" not in source.plain


async def test_open_cases_are_listed_without_resolved_ones(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        table = app.overview_screen.query_one(CaseTable)
        assert table.case_ids == ["CASE-7", "CASE-6"]
        row = [str(cell) for cell in table.get_row("CASE-7")]
        assert row[:5] == ["CASE-7", "high", "INVESTIGATING", "ERROR_SPIKE", "rag-api"]
        row = [str(cell) for cell in table.get_row("CASE-6")]
        assert row[:5] == ["CASE-6", "medium", "DETECTED", "LATENCY_REGRESS", "embedder"]
        heading = app.overview_screen.query_one("#cases-heading", QuietStatic).plain
        assert heading.startswith("Open cases (2)")


async def test_everything_essential_is_on_an_80x24_screen(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: "Quit" in screen_text(app), "the footer")
        text = screen_text(app)
        for expected in [
            "connected",
            "VictoriaMetrics DOWN",
            "rag-api",
            "rate 4.2 rps",
            "error 1.5 %",
            "p95 0.84 s",
            "embedder",
            "error no data",
            "CASE-7  high      INVESTIGATING  ERROR_SPIKE      rag-api",
            "CASE-6  medium    DETECTED       LATENCY_REGRESS  embedder",
            "Open case",
            "Quit",
        ]:
            assert expected in text, f"{expected!r} not on screen:\n{text}"


def case_rows(app: ConsoleApp) -> list[list[str]]:
    """The case list's rows as the screen shows them, split into their cells."""
    return [line.split() for line in screen_text(app).splitlines() if line.startswith(" CASE-")]


async def test_at_80_columns_the_case_list_keeps_every_column_whole(fake: FakeAgent) -> None:
    fake.cases["items"][1]["service"] = "research-agent"
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: "research-agent" in screen_text(app), "the service")
        rows = case_rows(app)
        assert [row[:5] for row in rows] == [
            ["CASE-7", "high", "INVESTIGATING", "ERROR_SPIKE", "rag-api"],
            ["CASE-6", "medium", "DETECTED", "LATENCY_REGRESS", "research-agent"],
        ]
        assert all(len(row) == 6 and "…" not in " ".join(row) for row in rows), rows
        table = app.overview_screen.query_one(CaseTable)
        assert not table.title_shown, "no room for a title that could be read"

        heading = app.overview_screen.query_one("#cases-heading", QuietStatic)
        title = "Open cases (2) · CASE-7 Error spike on rag-api: chat calls rate-limited"
        await until(pilot, lambda: heading.plain == title, "the highlighted title")
        await pilot.press("j")
        title = "Open cases (2) · CASE-6 embedder p95 drifting up over 3 days"
        await until(pilot, lambda: heading.plain == title, "the next title")
        assert title in screen_text(app)


async def test_a_crowded_case_list_abbreviates_class_and_state_but_drops_nothing(
    fake: FakeAgent,
) -> None:
    crowded = dict(
        fake.cases["items"][0],
        id="CASE-12",
        severity="critical",
        state="REMEDIATION_SUGGESTED",
        failure_class="COHERENCE_DEGRADATION",
        service="retrieval-gateway-eu",
    )
    fake.cases["items"].insert(0, crowded)
    whole = json.loads((FIXTURES / "case_CASE-7.json").read_text())
    fake.case_overrides["CASE-12"] = {**whole, **crowded}
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: len(case_rows(app)) == 3, "three rows")
        assert [row[:5] for row in case_rows(app)] == [
            ["CASE-12", "critical", "SUGGESTED", "COHER_DEGR", "retrieval-gateway-eu"],
            ["CASE-7", "high", "INVESTIG", "ERR_SPIKE", "rag-api"],
            ["CASE-6", "medium", "DETECTED", "LAT_REGR", "embedder"],
        ]
        assert all(len(row) == 6 for row in case_rows(app))

        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CaseScreen), "the case screen")
        await until(pilot, lambda: "COHERENCE_DEGRADATION" in screen_text(app), "the class")


async def test_a_wide_case_list_has_the_title_column(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        await loaded(pilot)
        table = app.overview_screen.query_one(CaseTable)
        await until(pilot, lambda: table.title_shown, "the title column")
        assert "Error spike on rag-api: chat calls rate-limited" in screen_text(app)
        heading = app.overview_screen.query_one("#cases-heading", QuietStatic)
        assert heading.plain == "Open cases (2)  ⏎ opens the highlighted one"


async def test_unchanged_data_redraws_nothing(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.pause(3 * POLL_S)
        calls: list[str] = []
        for widget in app.overview_screen.query(QuietStatic):
            original = widget.update

            def counted(*args, _original=original, _widget=widget, **kwargs):
                calls.append(str(_widget))
                return _original(*args, **kwargs)

            widget.update = counted  # type: ignore[method-assign]
        table = app.overview_screen.query_one(CaseTable)
        drawn = table._drawn

        polls = len(fake.requests)
        await until(pilot, lambda: len(fake.requests) >= polls + 6, "three more polls")
        assert calls == []
        assert table._drawn is drawn


async def test_many_services_scroll_and_the_cases_stay_on_screen(fake: FakeAgent) -> None:
    template = fake.overview["services"][0]
    fake.overview["services"] = [dict(template, service=f"svc-{n}") for n in range(6)]
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(app.overview_screen.query(ServicePanel)) == 6, "panels")
        everything = ["svc-0", "Open cases (2)", "CASE-7", "Quit"]
        await until(pilot, lambda: all(s in screen_text(app) for s in everything), "the screen")
        assert "svc-5" not in screen_text(app)

        await pilot.press("tab")
        await pilot.press(*["down"] * 12)
        await until(pilot, lambda: "svc-5" in screen_text(app), "the last panel")
        assert "CASE-7" in screen_text(app)


async def test_j_k_and_page_keys_move_through_the_service_panels(fake: FakeAgent) -> None:
    template = fake.overview["services"][0]
    fake.overview["services"] = [dict(template, service=f"svc-{n}") for n in range(6)]
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(app.overview_screen.query(ServicePanel)) == 6, "panels")
        await until(pilot, lambda: "svc-0" in screen_text(app), "the first panel")
        await focus_pane(pilot, "services")
        pane = app.overview_screen.query_one("#services", ScrollPane)
        visible = pane.scrollable_content_region.height
        assert visible == 12, "three panels of 4 rows fit at 80×24"

        # j moves one panel at a time: 6 panels of 4 rows in 12 rows is 3 steps to the end.
        await pilot.press("j")
        assert pane.scroll_y == 4
        await pilot.press("j", "j", "j")
        assert pane.scroll_y == 12
        await until(pilot, lambda: "svc-5" in screen_text(app), "the last panel")
        assert "svc-2" not in screen_text(app)
        await pilot.press("k")
        assert pane.scroll_y == 8
        await pilot.press("pageup")
        assert pane.scroll_y == 0
        await until(pilot, lambda: "svc-0" in screen_text(app), "the first panel again")
        await pilot.press("pagedown")
        assert pane.scroll_y == 12
        await pilot.press("home")
        assert pane.scroll_y == 0
        assert app.overview_screen.query_one(CaseTable).case_ids == ["CASE-7", "CASE-6"]


async def test_a_dead_service_reads_zero_and_lies_flat(fake: FakeAgent) -> None:
    dead = fake.overview["services"][1]
    dead["rate_rps"] = 0.0
    dead["series"]["rate_rps"] = [[ts, 0.0] for ts, _ in dead["series"]["rate_rps"]]
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: metric(app, "embedder", "rate") == "rate 0.00 rps", "0")
        spark = panel(app, "embedder").query_one(".rate-spark", Spark).plain
        assert spark.strip() and set(spark.strip()) == {"▁"}, spark


async def test_r_asks_the_agent_at_once(fake: FakeAgent) -> None:
    client = AgentClient(fake.url, KEY, timeout_s=1.0)
    app = ConsoleApp(client, PollingSource(client, interval_s=30))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        before = len(fake.requests)
        await pilot.press("r")
        await until(pilot, lambda: len(fake.requests) >= before + 2, "a refresh")


# Case


async def test_enter_opens_the_case_with_trigger_signals_and_span_tree(
    fake: FakeAgent,
) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        screen = await open_case_screen(pilot)
        assert screen.case_id == "CASE-7"

        header = screen.query_one(CaseHeader).plain
        assert "CASE-7  Error spike on rag-api: chat calls rate-limited" in header
        for fact in [
            "state INVESTIGATING",
            "severity high",
            "trigger anomaly_detection",
            "class ERROR_SPIKE",
            "service rag-api",
            "2025-06-02 09:16:00 UTC",
        ]:
            assert fact in header

        signals = screen.query_one(SignalList).plain
        assert "Signals (2)" in signals
        assert "high  error_spike  ERROR_SPIKE  rag-api / chat gpt-4o" in signals
        assert "medium  latency_regression  LATENCY_REGRESS  rag-api / chat gpt-4o" in signals
        assert "rag-api / chat gpt-4o: error ratio 12.0% over 60s (baseline median" in signals

        tree = screen.query_one(SpanTree)
        (trace,) = tree.root.children
        assert trace.label.plain.startswith("trace 4bf92f3577b34da6a3ce929d0e0e4736  5 spans")
        (root,) = trace.children
        assert root.label.plain == "POST /ask  rag-api  1.84 s  ERROR"
        assert [c.label.plain for c in root.children] == [
            "embeddings text-embedding-3-small  rag-api  85 ms  ok  14 in tok",
            "vector search  retriever  0.12 s  unset",
            "chat gpt-4o  rag-api  1.58 s  ERROR  812 in / 95 out tok",
        ]
        assert [c.label.plain for c in root.children[1].children] == [
            "rerank chunks  retriever  60 ms  ok"
        ]

        assert tree.cursor_node is not None and tree.cursor_node.data["name"] == "chat gpt-4o"
        detail = screen.query_one(SpanDetail).plain
        assert "ERROR: 429 Too Many Requests" in detail
        assert "model gpt-4o → gpt-4o-2024-08-06" in detail
        assert "tokens 812 in / 95 out tok" in detail
        assert "scores relevance 0.963 · groundedness 0.412" in detail

        on_screen = [
            "trigger   anomaly_detection",
            "chat gpt-4o  rag-api  1.58 s  ERROR",
            "Back",
        ]
        await until(pilot, lambda: all(s in screen_text(app) for s in on_screen), "the case")

        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), "the overview")


async def test_j_then_enter_opens_the_next_case_and_fetches_its_trace(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("j")
        screen = await open_case_screen(pilot)
        assert screen.case_id == "CASE-6"
        assert "advisory" in screen.query_one(CaseHeader).plain
        tree = screen.query_one(SpanTree)
        await until(pilot, lambda: bool(tree.root.children), "the span tree")
        (root,) = tree.root.children[0].children
        assert root.label.plain == "POST /embed  embedder  2.31 s  ok"
        assert [c.label.plain for c in root.children] == [
            "embeddings bge-small  embedder  2.29 s  ok  bge-small-en-v1.5  2048 in tok"
        ]
        assert any(
            path == "/api/traces/0af7651916cd43dd8448eb211c80319c" for path, _ in fake.requests
        )


async def test_a_case_that_cannot_be_loaded_says_why(fake: FakeAgent) -> None:
    gone = dict(fake.cases["items"][0], id="CASE-99", severity="critical")
    fake.cases["items"].insert(0, gone)
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert app.overview_screen.query_one(CaseTable).case_ids[0] == "CASE-99"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CaseScreen), "the case screen")
        header = app.screen.query_one(CaseHeader)
        expected = "could not load CASE-99: 404 Not Found: no case CASE-99"
        await until(pilot, lambda: header.plain == expected, "the reason")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), "the overview")


async def test_a_case_with_odd_fields_is_shown_without_a_traceback(fake: FakeAgent) -> None:
    fake.case_overrides["CASE-7"] = {
        "id": "CASE-7",
        "severity": None,
        "signals": "not a list",
        "context_snapshot": None,
        "hypotheses": [{"hypothesis": "a", "confidence": "high"}, {"hypothesis": "b"}],
    }
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        screen = await open_case_screen(pilot)
        header = screen.query_one(CaseHeader).plain
        assert header.startswith("CASE-7  (untitled)")
        assert "severity —" in header and "state —" in header
        assert "none recorded" in screen.query_one(SignalList).plain
        heading = screen.query_one("#traces-heading", QuietStatic)
        assert heading.display and heading.plain == "no exemplar trace in the case's snapshot"


async def focus_pane(pilot: Pilot, widget_id: str) -> None:
    """Press Tab until the pane with this id has focus."""
    for _ in range(6):
        focused = pilot.app.screen.focused
        if focused is not None and focused.id == widget_id:
            return
        await pilot.press("tab")
    raise AssertionError(f"Tab never reached #{widget_id}")


async def move_to_span(pilot: Pilot, name: str) -> None:
    tree = pilot.app.screen.query_one(SpanTree)
    for _ in range(tree.last_line + 1):
        if tree.cursor_node is not None and (tree.cursor_node.data or {}).get("name") == name:
            return
        await pilot.press("up")
    raise AssertionError(f"no span {name!r} above the cursor")


async def test_span_detail_shows_what_the_agent_sent_about_the_span(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        screen = await open_case_screen(pilot)
        detail = screen.query_one(SpanDetail)
        assert detail.plain.splitlines()[:3] == [
            "chat gpt-4o  client  1.58 s  ERROR: 429 Too Many Requests",
            "service rag-api · model gpt-4o → gpt-4o-2024-08-06 · operation chat · provider "
            "openai · tokens 812 in / 95 out tok · first token 0.41 s · finish error",
            "scores relevance 0.963 · groundedness 0.412",
        ]
        assert "Messages (2)" in detail.plain
        assert "system  You are the support assistant for Acme routers." in detail.plain
        assert "user  Context:\n[router-reset#1] Hold the reset button" in detail.plain
        assert "Retrieved chunks" not in detail.plain, "the chat span carried no chunks"

        await move_to_span(pilot, "vector search")
        assert detail.plain.splitlines() == [
            "vector search  internal  0.12 s  unset",
            "service retriever · operation retrieval",
            "Retrieved chunks (3)",
            "router-reset#1  0.9132  Hold the reset button on the back for ten seconds until "
            "the lights blink.",
            "router-reset#2  0.8741  A reset clears the Wi-Fi name and password; write them "
            "down first.",
            "firmware#4  0.3127  Firmware updates install overnight when automatic updates "
            "are on.",
        ]

        await move_to_span(pilot, "POST /ask")
        assert detail.plain.splitlines() == [
            "POST /ask  server  1.84 s  ERROR: upstream model call failed",
            "service rag-api",
        ]


async def test_span_detail_scrolls_with_tab_then_j_and_k_and_nothing_is_cut(
    fake: FakeAgent,
) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        screen = await open_case_screen(pilot)
        detail = screen.query_one(SpanDetail)
        await focus_pane(pilot, "span-detail")
        await pilot.pause(0.1)
        assert detail.max_scroll_y > 0, "the chat span's detail is taller than its pane"
        text = screen_text(app)
        assert "scores relevance 0.963 · groundedness 0.412" in text

        await pilot.press("j", "j")
        assert detail.scroll_y == 2
        await pilot.press("k")
        assert detail.scroll_y == 1
        await pilot.press("end")
        assert detail.scroll_y == detail.max_scroll_y
        await pilot.pause(0.1)
        text = screen_text(app)
        # The user message has 6 lines and more when wrapped; it shows its first 4 wrapped
        # lines, the last marked as cut.
        assert "Context:" in text and "[router-reset#1] Hold the reset button" in text
        assert "Question: How do I reset my router?" not in text
        assert "[firmware#4]" not in text
        last = text.splitlines()[-2].rstrip(" ▁▂▃▄▅▆▇█")
        assert last.endswith("…") and "[router-reset#2]" in last, last
        await pilot.press("home")
        assert detail.scroll_y == 0
        assert "CASE-7  Error spike on rag-api" in screen_text(app), "the header stays"


async def test_span_detail_takes_messages_and_chunks_from_the_snapshot(fake: FakeAgent) -> None:
    case = json.loads((FIXTURES / "case_CASE-7.json").read_text())
    for span in case["context_snapshot"]["traces"][0]["spans"]:
        span["messages"], span["chunks"] = [], []
    fake.case_overrides["CASE-7"] = case
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        screen = await open_case_screen(pilot)
        detail = screen.query_one(SpanDetail)
        assert "Messages (2)" in detail.plain
        assert "system  You are the support assistant for Acme routers." in detail.plain
        await move_to_span(pilot, "vector search")
        assert "Retrieved chunks (3)" in detail.plain
        await pilot.press("home")
        assert detail.plain.splitlines() == [
            "trace 4bf92f3577b34da6a3ce929d0e0e4736",
            "messages and retrieved chunks are on these spans:",
            "vector search (3 chunks) · chat gpt-4o (2 messages)",
        ]


async def test_a_case_without_traces_shows_its_snapshot_content(fake: FakeAgent) -> None:
    case = json.loads((FIXTURES / "case_CASE-7.json").read_text())
    case["context_snapshot"]["traces"] = []
    fake.case_overrides["CASE-7"] = case
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        screen = await open_case_screen(pilot)
        lines = screen.query_one(SpanDetail).plain.splitlines()
        assert lines[:3] == [
            "Context snapshot",
            "scores relevance 0.963 · groundedness 0.412",
            "Messages (2)",
        ]
        assert "Retrieved chunks (3)" in lines


async def test_signals_read_as_numbers_and_a_cut_query_never_as_json(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        screen = await open_case_screen(pilot)
        signals = screen.query_one(SignalList).plain
        # error_ratio is written as a percentage, 251.82 calls as 252, 4.197 rps as 4.2 rps,
        # 30.2 errors as 30 and a 60 s window as 1 m.
        assert (
            "statistic error_ratio · current 12.0 % · baseline median 1.5 % · threshold 5.0 % "
            "· window 1 m · traffic 252 calls, 4.2 rps, 30 errors"
        ) in signals
        assert (
            "statistic p95_s · current 1.92 s · baseline median 0.84 s · threshold 1.68 s "
            "· window 1 m · traffic 252 calls, 4.2 rps"
        ) in signals
        assert (
            'query (sum(increase(llm_traces_span_metrics_calls_total{service_name="rag-api",'
            'span_name="chat gpt-4o",status_code="STATUS_CODE_ERROR"}[60s])) or vector(0))'
        ) in signals
        for raw in ['"calls"', "251.82", "statistics", "queries", "baseline_mad", "{'"]:
            assert raw not in signals, f"{raw!r} is raw evidence"

        await focus_pane(pilot, "signals")
        pane = screen.query_one("#signals", ScrollPane)
        await pilot.pause(0.1)
        text = screen_text(app)
        assert "traffic 252 calls, 4.2 rps, 30 errors" in text, "pairs wrap whole"
        query_lines = [line for line in text.splitlines() if "query (sum(increase" in line]
        assert len(query_lines) == 1 and query_lines[0].rstrip(" ▁▂▃▄▅▆▇█").endswith("…")

        await pilot.press("j", "j", "j")
        assert pane.scroll_y == 3
        await pilot.press("k")
        assert pane.scroll_y == 2
        text = screen_text(app)
        assert "CASE-7  Error spike on rag-api: chat calls rate-limited" in text
        assert "state     INVESTIGATING" in text


async def test_question_mark_lists_every_binding_by_pane_with_descriptions(
    fake: FakeAgent,
) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys screen")
        text = app.screen.query_one("#help-text", QuietStatic).plain
        titles = [line for line in text.splitlines() if line and not line.startswith(" ")]
        assert titles[:4] == [
            "Open cases (focused)",
            "Service panels",
            "Overview screen",
            "Everywhere",
        ]
        for row in [
            "  ⏎  Open case  cases.open",
            "  ↓ j  Next case  cases.down",
            "  home g  First case  cases.first",
            "  ↓ j  Scroll down  pane.down",
            "  pgdn  Page down  pane.page_down",
            "  r  Ask the agent now  overview.refresh",
            "  tab  Next pane: service panels, open cases  overview.next_pane",
            "  q ^c ^q  Quit  app.quit",
            "  ?  List every key of this screen  app.keys",
        ]:
            assert row in text, f"{row!r} not in the keys list:\n{text}"
        rows = [line.split("  ") for line in text.splitlines() if line.startswith("  ")]
        assert all(len(row) == 4 and row[2] and row[2] != row[3] for row in rows), rows
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), "the overview")

        await open_case_screen(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys screen")
        text = app.screen.query_one("#help-text", QuietStatic).plain
        titles = [line for line in text.splitlines() if line and not line.startswith(" ")]
        assert titles[:5] == [
            "Span tree (focused)",
            "Signals",
            "Span detail",
            "Case screen",
            "Everywhere",
        ]
        for row in [
            "  ↓ j  Next span  spans.down",
            "  ← h  Parent span  spans.parent",
            "  esc  Back to the screen the case was opened from  case.back",
            "  shift+tab  Previous pane  case.prev_pane",
            "  q ^c ^q  Quit  app.quit",
        ]:
            assert row in text, f"{row!r} not in the keys list:\n{text}"
        assert "Keys" in screen_text(app)


async def test_ctrl_c_quits_like_q(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert app.return_code is None
        await pilot.press("ctrl+c")
        await pilot.pause(0.2)
        assert app.return_code == 0, "ctrl+c did not quit"
        assert "ctrl+q" not in screen_text(app)


# Connection


async def test_lost_agent_keeps_data_and_screen_then_recovers(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: connected(app), "connected")
        screen = await open_case_screen(pilot)

        await fake.stop()
        await until(
            pilot, lambda: "disconnected — retrying" in status_text(app), "disconnected"
        )
        assert app.screen is screen
        assert "cannot reach " + fake.url + ": connection refused" in status_text(app)
        assert "state INVESTIGATING" in screen.query_one(CaseHeader).plain
        await until(pilot, lambda: "disconnected — retrying" in screen_text(app), "the words")

        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), "the overview")
        assert "disconnected — retrying" in status_text(app)
        assert metric(app, "rag-api", "rate") == "rate 4.2 rps"
        assert app.overview_screen.query_one(CaseTable).case_ids == ["CASE-7", "CASE-6"]

        fake.overview["services"][0]["rate_rps"] = 5.0
        await fake.start()
        await until(pilot, lambda: connected(app), "connected again")
        await until(pilot, lambda: metric(app, "rag-api", "rate") == "rate 5.0 rps", "new data")
        assert "disconnected" not in status_text(app)


@pytest.mark.parametrize("key", ["wrong-key", None])
async def test_a_refused_key_reads_as_a_401_status(fake: FakeAgent, key: str | None) -> None:
    app = console(fake, key=key)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.link is not None and app.link.state == "refused", "401")
        text = status_text(app)
        assert "key refused — retrying" in text
        assert "401 Unauthorized: missing or invalid API key" in text
        assert "PROVEAI_API_KEY" in text
        await until(pilot, lambda: "401 Unauthorized" in screen_text(app), "the reason")
        assert "Traceback" not in screen_text(app)


# Client and command line


async def test_client_errors_are_readable_lines(fake: FakeAgent) -> None:
    client = AgentClient(fake.url, KEY, timeout_s=1.0)
    try:
        with pytest.raises(AgentError) as missing:
            await client.case("CASE-99")
        assert missing.value.status == 404
        assert missing.value.message == "404 Not Found: no case CASE-99"

        await fake.stop()
        with pytest.raises(AgentError) as unreachable:
            await client.overview()
        assert unreachable.value.unreachable
        assert unreachable.value.message == f"cannot reach {fake.url}: connection refused"
    finally:
        await client.close()


def test_command_line_takes_the_agent_and_key_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("PROVEAI_URL", "http://10.0.0.5:8470/")
    monkeypatch.setenv("PROVEAI_API_KEY", "from-env")
    args = parse_args([])
    assert args.client.base_url == "http://10.0.0.5:8470"
    assert args.client.has_key

    args = parse_args(["--agent", "https://agent.example:9000", "--api-key", "k"])
    assert args.client.base_url == "https://agent.example:9000"

    monkeypatch.delenv("PROVEAI_URL")
    assert parse_args([]).client.base_url == "http://127.0.0.1:8470"


def test_command_line_refuses_a_url_that_is_not_http(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--agent", "127.0.0.1:8470"])
    assert stopped.value.code == 2
    assert "not an http(s) URL" in capsys.readouterr().err


# Formatting, by hand


def test_numbers_are_written_for_people() -> None:
    assert fmt.rate(4.2) == "4.2 rps"
    assert fmt.rate(0.05) == "0.05 rps"
    assert fmt.rate(123.4) == "123 rps"
    assert fmt.rate(None) == "no data"
    assert fmt.count(251.82431999999997) == "252"
    assert fmt.window(60) == "1 m" and fmt.window(300) == "5 m" and fmt.window(45) == "45 s"
    assert fmt.window(90) == "90 s" and fmt.window(7200) == "2 h"
    assert fmt.seconds(9.998) == "10.0 s", "the unit follows the rounded value"


def test_rates_have_one_rule_for_decimals_zero_included() -> None:
    # Two decimals below 1 rps, one below 100, none above, judged on the rounded value.
    assert fmt.rate(0) == "0.00 rps"
    assert fmt.rate(0.0) == "0.00 rps"
    assert fmt.rate(0.6) == "0.60 rps"
    assert fmt.rate(0.004) == "<0.01 rps", "alive, though it rounds to zero"
    assert fmt.rate(0.996) == "1.0 rps"
    assert fmt.rate(1.0) == "1.0 rps"
    assert fmt.rate(4.197071999999999) == "4.2 rps"
    assert fmt.rate(99.96) == "100 rps"
    assert fmt.percent(0.015) == "1.5 %"
    assert fmt.percent(0.0) == "0.0 %"
    assert fmt.percent(0.0001) == "<0.1 %"
    assert fmt.percent(None) == "no data"
    assert fmt.seconds(0.84) == "0.84 s"
    assert fmt.seconds(0.085) == "85 ms"
    assert fmt.seconds(12.34) == "12.3 s"
    assert fmt.seconds(None, missing=fmt.DASH) == "—"
    assert fmt.seconds(float("nan")) == "no data"
    assert fmt.span_duration(0, 1_840_000_000) == "1.84 s"


def test_ages_are_coarse() -> None:
    now = datetime(2025, 6, 2, 9, 30, 0, tzinfo=UTC)
    assert fmt.age("2025-06-02T09:29:30Z", now) == "<1m"
    assert fmt.age("2025-06-02T09:16:00Z", now) == "14m"
    assert fmt.age("2025-06-02T06:25:00Z", now) == "3h05m"
    assert fmt.age("2025-05-29T09:30:00Z", now) == "4d"
    assert fmt.age(None, now) == "—"


def test_spark_line_scales_between_lowest_and_highest_and_leaves_gaps() -> None:
    assert spark_line([0, 1, 2, None, 7], 5) == "▁▂▃ █"
    assert spark_line([0, 1, 2, None, 7], 7) == "  ▁▂▃ █"
    assert spark_line([5, 6, 7], 2) == "▁█"
    assert spark_line([3, 3], 2) == "▄▄"
    assert spark_line([None, None], 2) == "  "


def test_message_parts_are_written_as_the_agent_sent_them() -> None:
    call = {"type": "tool_call", "id": "c1", "name": "web_search", "arguments": {"q": "wind"}}
    assert part_text(call) == 'tool call web_search({"q":"wind"})'
    answer = {"type": "tool_call_response", "id": "c1", "response": "3 results"}
    assert part_text(answer) == "tool result 3 results"
    assert part_text({"type": "text", "content": "Hello"}) == "Hello"
    assert part_text({"type": "image"}) == "[image]"


def test_spark_line_draws_zero_as_the_lowest_block() -> None:
    assert spark_line([0, 0, 0, 0], 4) == "▁▁▁▁"
    assert spark_line([0.0, None, 0.0], 3) == "▁ ▁"
    assert spark_line([0, 2, 2], 3) == "▁██"


LONG_ROW = {
    "id": "CASE-12",
    "severity": "critical",
    "state": "REMEDIATION_SUGGESTED",
    "class": "COHERENCE_DEGRADATION",
    "service": "retrieval-gateway-eu",
    "age": "3h05m",
    "title": "answers drift",
}


def test_case_columns_fit_80_columns_by_abbreviating_class_then_state() -> None:
    # 7 + 8 + 21 + 21 + 20 + 5 = 82 cells, 94 with padding: too wide for 79. The short class
    # (COHER_DEGR, 10) makes it 83, still too wide; the short state (SUGGESTED, 9) makes it
    # 71. No column is cut, and the 6 cells left are too few for the title.
    rows, widths = fit_columns([LONG_ROW], 79)
    assert widths == {
        "id": 7,
        "severity": 8,
        "state": 9,
        "class": 10,
        "service": 20,
        "age": 5,
    }
    assert rows[0]["class"] == "COHER_DEGR" and rows[0]["state"] == "SUGGESTED"
    assert rows[0]["service"] == "retrieval-gateway-eu"


def test_case_columns_keep_full_names_and_the_title_where_they_fit() -> None:
    # At 159 cells: 94 for the base columns, 63 spare, enough for the whole title (13).
    rows, widths = fit_columns([LONG_ROW], 159)
    assert rows == [LONG_ROW]
    assert widths["class"] == 21 and widths["state"] == 21 and widths["title"] == 13


def test_case_columns_cut_service_last_and_keep_every_column() -> None:
    # At 64 cells the short forms give 71: service is cut by 7 to 13 cells ("retrieval-ga…").
    _, widths = fit_columns([LONG_ROW], 64)
    assert list(widths) == ["id", "severity", "state", "class", "service", "age"]
    assert widths["service"] == 13 and widths["class"] == 10 and widths["state"] == 9


def test_the_case_header_says_when_the_engine_cannot_name_a_cause() -> None:
    from proveai_tui.widgets.case_header import header_view

    case = {
        "id": "CASE-2",
        "title": "Quality drop in rag-api (coherence)",
        "state": "DETECTED",
        "severity": "high",
        "service": "rag-api",
        "opened_at": "2026-12-03T10:00:00.000Z",
        "hypotheses": [{"hypothesis": "A quantised build", "confidence": 0.3}],
        "analysis": {"unable": True, "missing_evidence": ["no change of rag-api was recorded"]},
    }
    _, plain = header_view(case, datetime(2026, 12, 3, 10, 5, tzinfo=UTC))
    assert "likely unable to determine root cause (no change of rag-api was recorded)" in plain
    assert "A quantised build" not in plain
