"""The console driven by Textual's pilot at 80×24 against a faithful fake of the agent's API."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from textual.pilot import Pilot

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
from proveai_tui.widgets.service_panel import ServicePanel
from proveai_tui.widgets.signal_list import SignalList
from proveai_tui.widgets.source_health import SourceHealth
from proveai_tui.widgets.span_detail import SpanDetail
from proveai_tui.widgets.span_tree import SpanTree
from proveai_tui.widgets.spark import Spark, spark_line

FIXTURES = Path(__file__).parent / "console_fixtures"
sys.path.insert(0, str(FIXTURES))

from fake_agent import FakeAgent  # noqa: E402

pytestmark = pytest.mark.console

KEY = "console-test-key"
SIZE = (80, 24)
POLL_S = 0.2


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


async def until(pilot: Pilot, condition: Callable[[], bool], what: str, timeout_s=5.0) -> None:
    """Wait for the console to reach a state, failing with what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


def screen_text(app: ConsoleApp) -> str:
    """The whole screen as the terminal would show it, without styles."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def panel(app: ConsoleApp, service: str) -> ServicePanel:
    panels = [p for p in app.overview_screen.query(ServicePanel) if p.service == service]
    assert panels, f"no panel for {service}"
    return panels[0]


def metric(app: ConsoleApp, service: str, name: str) -> str:
    return panel(app, service).query_one(f".{name}", Metric).plain


def status(app: ConsoleApp) -> str:
    bar = app.screen.query_one("#status")
    return " | ".join(w.plain for w in bar.query(QuietStatic) if w.display)


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
        assert "error ratio 12.0 % over 5 m against a baseline of 1.5 %" in signals
        assert "current 0.12 · baseline 0.015 · threshold 0.05 · window_s 300" in signals
        assert "latency_regression  rag-api / chat gpt-4o" in signals

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


async def test_question_mark_lists_the_bindings_with_their_ids(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys screen")
        text = app.screen.query_one("#help-text", QuietStatic).plain
        for expected in [
            "Open case",
            "cases.open",
            "j",
            "cases.down",
            "overview.refresh",
            "app.quit",
            "app.keys",
        ]:
            assert expected in text
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), "the overview")

        await open_case_screen(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys screen")
        text = app.screen.query_one("#help-text", QuietStatic).plain
        assert "case.back" in text and "spans.down" in text


# Connection


async def test_lost_agent_keeps_data_and_screen_then_recovers(fake: FakeAgent) -> None:
    app = console(fake)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: connected(app), "connected")
        screen = await open_case_screen(pilot)

        await fake.stop()
        await until(pilot, lambda: "disconnected — retrying" in status(app), "disconnected")
        assert app.screen is screen
        assert "cannot reach " + fake.url + ": connection refused" in status(app)
        assert "state INVESTIGATING" in screen.query_one(CaseHeader).plain
        await until(pilot, lambda: "disconnected — retrying" in screen_text(app), "the words")

        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), "the overview")
        assert "disconnected — retrying" in status(app)
        assert metric(app, "rag-api", "rate") == "rate 4.2 rps"
        assert app.overview_screen.query_one(CaseTable).case_ids == ["CASE-7", "CASE-6"]

        fake.overview["services"][0]["rate_rps"] = 5.0
        await fake.start()
        await until(pilot, lambda: connected(app), "connected again")
        await until(pilot, lambda: metric(app, "rag-api", "rate") == "rate 5.0 rps", "new data")
        assert "disconnected" not in status(app)


@pytest.mark.parametrize("key", ["wrong-key", None])
async def test_a_refused_key_reads_as_a_401_status(fake: FakeAgent, key: str | None) -> None:
    app = console(fake, key=key)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.link is not None and app.link.state == "refused", "401")
        text = status(app)
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


def test_case_columns_fit_80_columns_by_shortening_service_and_class() -> None:
    row = {
        "id": "CASE-12",
        "severity": "critical",
        "state": "REMEDIATION_SUGGESTED",
        "class": "COHERENCE_DEGRADATION",
        "service": "retrieval-gateway-eu",
        "age": "3h05m",
        "title": "answers drift",
    }
    widths = fit_columns([row], 79)
    assert list(widths) == ["id", "severity", "state", "class", "service", "age"]
    assert widths["id"] == 7 and widths["state"] == 21 and widths["age"] == 5
    assert sum(widths.values()) + 2 * len(widths) <= 79
    assert widths["class"] >= 8 and widths["service"] >= 8
