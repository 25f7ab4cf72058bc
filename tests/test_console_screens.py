"""The Cases, Changes and Audit screens and moving between screens, driven at 80×24.

Layout and scale run against the fake agent; filtering, paging, the change log and the audit
chain run against the real agent, with every expected list counted by hand from the cases,
changes and records the test makes.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from agentfix import OPERATOR_KEY
from consolefix import screen_text
from consolefix import until as wait_until
from proveai_agent.signals import Signal
from proveai_tui.app import ConsoleApp
from proveai_tui.client import AgentClient
from proveai_tui.feed import PollingSource
from proveai_tui.screens.audit import AuditScreen, RecordTable
from proveai_tui.screens.case import CaseScreen
from proveai_tui.screens.cases import CasesScreen, parse_filter
from proveai_tui.screens.changes import ChangesScreen, ChangeTable
from proveai_tui.screens.help import HelpScreen
from proveai_tui.screens.overview import OverviewScreen
from proveai_tui.widgets.case_table import CaseTable
from proveai_tui.widgets.quiet_static import QuietStatic

FIXTURES = Path(__file__).parent / "console_fixtures"
sys.path.insert(0, str(FIXTURES))

from fake_agent import FakeAgent  # noqa: E402

pytestmark = pytest.mark.console

KEY = "console-test-key"
SIZE = (80, 24)
T0 = 1_800_000_000.0


until = partial(wait_until, timeout_s=8.0)
"""Waits at most 8.0 s for a state of the console."""


def console(url: str, key: str) -> ConsoleApp:
    """A console that polls rarely, so that the screens' own requests stand out."""
    client = AgentClient(url, key, timeout_s=5.0)
    return ConsoleApp(client, PollingSource(client, interval_s=30))


def table(app: ConsoleApp) -> CaseTable:
    assert isinstance(app.screen, CasesScreen), type(app.screen).__name__
    return app.screen.query_one(CaseTable)


def record_rows(app: ConsoleApp) -> list[list[str]]:
    """The audit table's rows as the screen shows them (a sequence number, then a time)."""
    row = re.compile(r"^ \d+ .*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    return [line.split() for line in screen_text(app).splitlines() if row.match(line)]


def heading(app: ConsoleApp) -> str:
    return app.screen.query_one("#cases-list-heading", QuietStatic).plain


def message(app: ConsoleApp) -> str:
    line = app.screen.query_one("#cases-message", QuietStatic)
    return line.plain if line.display else ""


async def cases_screen(pilot: Pilot) -> CasesScreen:
    """Press 2 and wait for the first page."""
    await pilot.press("2")
    await until(pilot, lambda: isinstance(pilot.app.screen, CasesScreen), "the cases screen")
    screen = pilot.app.screen
    assert isinstance(screen, CasesScreen)
    await until(pilot, lambda: screen.total is not None and not screen.loading, "the cases")
    return screen


async def apply_filter(pilot: Pilot, typed: str) -> None:
    """Type a filter after `/` as a user does, then wait for the agent's answer."""
    screen = pilot.app.screen
    assert isinstance(screen, CasesScreen)
    await pilot.press("slash")
    field = screen.query_one("#cases-filter", Input)
    await until(pilot, lambda: field.has_focus, "the filter line")
    field.value = ""
    await pilot.press(*typed)
    await pilot.press("enter")
    await pilot.pause(0.05)
    await until(pilot, lambda: not screen.loading, "the filtered cases")


async def paste_filter(pilot: Pilot, typed: str) -> None:
    """Put text in the filter line at once, as a paste does, and press enter."""
    screen = pilot.app.screen
    assert isinstance(screen, CasesScreen)
    await pilot.press("slash")
    field = screen.query_one("#cases-filter", Input)
    await until(pilot, lambda: field.has_focus, "the filter line")
    field.value = typed
    await pilot.press("enter")
    await pilot.pause(0.05)
    await until(pilot, lambda: not screen.loading, "the answer")


# The fake agent, with as many cases as a test wants


def fake_case(number: int, **fields: Any) -> dict[str, Any]:
    """A case summary as `/api/cases` lists it."""
    case = {
        "id": f"CASE-{number}",
        "title": f"Error spike in svc-{number % 7} / chat",
        "state": "DETECTED",
        "severity": "high",
        "advisory": False,
        "service": f"svc-{number % 7}",
        "trigger": "anomaly_detection",
        "failure_class": "ERROR_SPIKE",
        "opened_at": "2025-06-02T09:00:00Z",
        "updated_at": "2025-06-02T09:00:00Z",
        "signals": 1,
        "top_confidence": None,
    }
    case.update(fields)
    return case


@pytest.fixture
async def fake() -> AsyncIterator[FakeAgent]:
    server = FakeAgent(KEY)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def case_requests(fake: FakeAgent) -> list[str]:
    return [path for path, _ in fake.requests if path.startswith("/api/cases?")]


async def test_keys_1_to_4_switch_screens_and_each_keeps_its_place(fake: FakeAgent) -> None:
    app = console(fake.url, KEY)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, OverviewScreen)
        screen = await cases_screen(pilot)
        await pilot.press("a")
        await until(pilot, lambda: table(app).row_count == 3, "all three cases")
        await pilot.press("j", "j")
        assert table(app).highlighted_case == "CASE-3"

        await pilot.press("3")
        await until(pilot, lambda: isinstance(app.screen, ChangesScreen), "changes")
        await pilot.press("4")
        await until(pilot, lambda: isinstance(app.screen, AuditScreen), "audit")
        await pilot.press("1")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), "overview")
        assert app.screen is app.overview_screen

        await pilot.press("2")
        await until(pilot, lambda: app.screen is screen, "the same cases screen")
        assert not screen.open_only, "the open/all choice was kept"
        assert table(app).highlighted_case == "CASE-3", "the cursor was kept"
        assert "Cases · 3" in heading(app)


async def test_enter_opens_the_case_and_escape_returns_to_the_cases_screen(
    fake: FakeAgent,
) -> None:
    app = console(fake.url, KEY)
    async with app.run_test(size=SIZE) as pilot:
        screen = await cases_screen(pilot)
        await apply_filter(pilot, "service:embedder")
        assert table(app).case_ids == ["CASE-6"]
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CaseScreen), "the case screen")
        case_screen = app.screen
        assert isinstance(case_screen, CaseScreen) and case_screen.case_id == "CASE-6"
        await until(pilot, lambda: case_screen.case is not None, "the case to load")

        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen, "back on the cases screen")
        assert screen.filter.service == "embedder"
        await until(pilot, lambda: table(app).case_ids == ["CASE-6"], "the filtered list")


async def test_the_cases_screen_fits_80x24_with_every_column_in_words(fake: FakeAgent) -> None:
    fake.cases["items"][0]["top_confidence"] = 0.714
    app = console(fake.url, KEY)
    async with app.run_test(size=SIZE) as pilot:
        await cases_screen(pilot)
        await until(pilot, lambda: "Quit" in screen_text(app), "the footer")
        text = screen_text(app)
        lines = text.splitlines()
        assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
        for expected in [
            "Prove AI · cases",
            "Open cases · 2 · by newest",
            " case    severity  class            state          service   age   conf",
            " CASE-7  high      ERROR_SPIKE      INVESTIGATING  rag-api",
            " CASE-6  medium    LATENCY_REGRESS  DETECTED       embedder",
            "/ Filter",
            "s Sort",
            "a Open/all",
            "q Quit",
        ]:
            assert expected in text, f"{expected!r} not on screen:\n{text}"
        # 0.714 is written with two decimals; CASE-6 has no ranked hypothesis yet.
        assert [str(c) for c in table(app).get_row("CASE-7")][-1] == "0.71"
        assert [str(c) for c in table(app).get_row("CASE-6")][-1] == "—"


async def test_ten_thousand_cases_come_a_page_at_a_time_and_a_filter_in_one_request(
    fake: FakeAgent,
) -> None:
    # Every third case resolved; services svc-0 … svc-6 by case number modulo 7.
    fake.cases["items"] = [
        fake_case(
            n,
            state="RESOLVED" if n % 3 == 0 else "DETECTED",
            top_confidence=round(n / 10_000, 4),
        )
        for n in range(10_000, 0, -1)
    ]
    app = console(fake.url, KEY)
    async with app.run_test(size=SIZE) as pilot:
        started = time.monotonic()
        await cases_screen(pilot)
        # Open: 10 000 less the 3 333 multiples of 3.
        assert table(app).row_count == 200
        assert "200 of 6,667" in heading(app)
        assert table(app).case_ids[:3] == ["CASE-10000", "CASE-9998", "CASE-9997"]
        assert all("limit=200" in path for path in case_requests(fake))

        await pilot.press("end")
        await until(pilot, lambda: table(app).row_count == 400, "the second page")
        paged = [path for path in case_requests(fake) if "cursor=" in path]
        # 10 000 down to 9 701 holds 300 numbers, 100 of them multiples of 3: the first
        # page's 200 open cases end at CASE-9701.
        assert len(paged) == 1 and "cursor=CASE-9701" in paged[0], paged

        before = len(case_requests(fake))
        await apply_filter(pilot, "service:svc-3 state:resolved")
        asked = case_requests(fake)[before:]
        assert len(asked) == 1 and "service=svc-3" in asked[0] and "state=RESOLVED" in asked[0]
        # Multiples of 3 that are 3 modulo 7 are 21k + 3: 3, 24, …, 9 999, k = 0 … 476.
        assert "200 of 477" in heading(app)
        assert table(app).case_ids[0] == "CASE-9999"
        assert time.monotonic() - started < 20


async def test_s_cycles_the_sort_column_and_shift_s_reverses_it(fake: FakeAgent) -> None:
    fake.cases["items"] = [
        fake_case(4, severity="low", top_confidence=0.9, service="b-svc"),
        fake_case(3, severity="critical", top_confidence=0.2, service="c-svc"),
        fake_case(2, severity="medium", top_confidence=None, service="a-svc"),
        fake_case(1, severity="high", top_confidence=0.6, service="d-svc"),
    ]
    app = console(fake.url, KEY)
    async with app.run_test(size=SIZE) as pilot:
        await cases_screen(pilot)
        assert table(app).case_ids == ["CASE-4", "CASE-3", "CASE-2", "CASE-1"]
        await pilot.press("s")
        assert "by severity" in heading(app)
        assert table(app).case_ids == ["CASE-3", "CASE-1", "CASE-2", "CASE-4"]
        await pilot.press("S")
        assert "by severity, reversed" in heading(app)
        assert table(app).case_ids == ["CASE-4", "CASE-2", "CASE-1", "CASE-3"]
        await pilot.press("s", "s", "s")
        assert "by service" in heading(app)
        assert table(app).case_ids == ["CASE-2", "CASE-4", "CASE-3", "CASE-1"]
        await pilot.press("s", "s")
        assert "by confidence" in heading(app)
        # Most confident first; the case without a ranked hypothesis last.
        assert table(app).case_ids == ["CASE-4", "CASE-1", "CASE-3", "CASE-2"]
        await pilot.press("s")
        assert "by newest" in heading(app)


async def test_the_keys_list_names_the_new_bindings_with_their_ids(fake: FakeAgent) -> None:
    app = console(fake.url, KEY)
    async with app.run_test(size=SIZE) as pilot:
        await cases_screen(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys screen")
        text = app.screen.query_one("#help-text", QuietStatic).plain
        for row in [
            "  /  Filter: state:X class:Y service:Z and words in the title  cases.filter",
            "  esc  Clear the filter and close its line  cases.clear_filter",
            "  s  Sort by the next column  cases.sort",
            "  S  Reverse the order  cases.reverse",
            "  a  Show all cases or open ones  cases.all",
            "  1  Go to the overview  app.overview",
            "  2  Go to every case  app.cases",
            "  3  Go to the change log  app.changes",
            "  4  Go to the audit log  app.audit",
        ]:
            assert row in text, f"{row!r} not in the keys list:\n{text}"


async def test_changes_fit_80x24_newest_first_with_before_and_after(fake: FakeAgent) -> None:
    app = console(fake.url, KEY)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await until(pilot, lambda: isinstance(app.screen, ChangesScreen), "changes")
        changes = app.screen.query_one(ChangeTable)
        await until(pilot, lambda: changes.row_count == 3, "three changes")
        text = screen_text(app)
        assert "Changes · 3, newest first" in text
        rows = [line for line in text.splitlines() if line.startswith((" 06-01", " 06-02"))]
        assert [row.split()[:3] for row in rows] == [
            ["06-02", "09:12", "embedder"],
            ["06-02", "09:05", "rag-api"],
            ["06-01", "13:40", "rag-api"],
        ]
        assert "v2.4.0 → v2.4.1" in rows[1]
        detail = app.screen.query_one("#change-detail", QuietStatic).plain
        assert "text-embed-3-small → text-embed-3-large" in detail
        assert all(len(line) <= 80 for line in text.splitlines())


async def test_audit_at_80x24_says_broken_at_record_n_in_words(fake: FakeAgent) -> None:
    fake.audit_verdict = {
        "ok": False,
        "records": 3,
        "first_bad": 3,
        "reason": "its content does not match its hash: it was changed",
    }
    app = console(fake.url, KEY)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await until(pilot, lambda: isinstance(app.screen, AuditScreen), "audit")
        records = app.screen.query_one(RecordTable)
        await until(pilot, lambda: records.row_count == 6, "six records")
        text = screen_text(app)
        assert "✗ chain BROKEN at record 3: its content does not match" in text
        verdict = app.screen.query_one("#audit-verdict", QuietStatic).plain
        assert verdict == (
            "✗ chain BROKEN at record 3: its content does not match its hash: it was changed"
            " (3 records read up to it)"
        )
        rows = [row[:2] for row in record_rows(app)]
        assert rows == [
            ["6", "unchecked"],
            ["5", "unchecked"],
            ["4", "unchecked"],
            ["3", "BROKEN"],
            ["2", "ok"],
            ["1", "ok"],
        ]


# The real agent


def signal(
    service: str,
    at: float,
    kind: str = "error_spike",
    severity: str = "high",
    subject: str | None = None,
) -> Signal:
    return Signal(
        kind=kind,
        failure_class="LATENCY_REGRESS" if kind == "latency_regression" else "ERROR_SPIKE",
        trigger="anomaly_detection",
        service=service,
        span_name="chat",
        at=at,
        severity=severity,
        summary=f"{kind} on {service}",
        subject=subject,
    )


async def move(agent, case_id: str, **body: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{agent.url}/api/cases/{case_id}/transition",
            json={"actor": "ana", **body},
            headers={"X-API-Key": OPERATOR_KEY},
        ) as response,
    ):
        assert response.status == 200, await response.text()


async def some_cases(agent) -> None:
    """Eight cases; each service opens its own case.

    CASE-1 rag-api       ERROR_SPIKE      high      TRIAGED
    CASE-2 embedder      LATENCY_REGRESS  medium    DETECTED
    CASE-3 rag-api-eu    ERROR_SPIKE      critical  CLOSED
    CASE-4 search        LATENCY_REGRESS  low       TRIAGED
    CASE-5 checkout      ERROR_SPIKE      high      DETECTED   subject 50%
    CASE-6 pay_gate      ERROR_SPIKE      medium    DETECTED
    CASE-7 quotes        ERROR_SPIKE      low       DETECTED   subject it's "raw"
    CASE-8 billing       LATENCY_REGRESS  critical  CLOSED
    """
    made = [
        ("rag-api", "error_spike", "high", None),
        ("embedder", "latency_regression", "medium", None),
        ("rag-api-eu", "error_spike", "critical", None),
        ("search", "latency_regression", "low", None),
        ("checkout", "error_spike", "high", "50%"),
        ("pay_gate", "error_spike", "medium", None),
        ("quotes", "error_spike", "low", 'it\'s "raw"'),
        ("billing", "latency_regression", "critical", None),
    ]
    for index, (service, kind, severity, subject) in enumerate(made):
        await agent.case_service.on_signal(
            signal(service, T0 + index, kind=kind, severity=severity, subject=subject)
        )
    for case_id in ("CASE-1", "CASE-4"):
        await move(agent, case_id, to="TRIAGED")
    for case_id in ("CASE-3", "CASE-8"):
        await move(agent, case_id, to="CLOSED", reason="false_positive")


async def test_filters_show_exactly_the_cases_counted_by_hand(agent) -> None:
    await some_cases(agent)
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=SIZE) as pilot:
        await cases_screen(pilot)
        # Open: all but the closed CASE-3 and CASE-8, newest first.
        assert table(app).case_ids == [
            "CASE-7",
            "CASE-6",
            "CASE-5",
            "CASE-4",
            "CASE-2",
            "CASE-1",
        ]
        assert "Open cases · 6" in heading(app)

        for typed, expected in [
            ("state:triaged", ["CASE-4", "CASE-1"]),
            ("state:CLOSED", ["CASE-8", "CASE-3"]),
            ("class:latency_regress", ["CASE-4", "CASE-2"]),
            ("class:LAT_REGR state:closed", ["CASE-8"]),
            ("service:rag-api", ["CASE-1"]),
            # Words match titles and service names: rag-api and rag-api-eu, open ones only.
            ("rag-api", ["CASE-1"]),
            ("state:open search", ["CASE-4"]),
            ("SEARCH", ["CASE-4"]),
            ("service:rag-api-eu state:closed", ["CASE-3"]),
            ("class:ERROR_SPIKE service:embedder", []),
        ]:
            await apply_filter(pilot, typed)
            assert table(app).case_ids == expected, typed
            assert message(app) == "", typed
        assert "none match" in heading(app)

        await pilot.press("escape")
        await until(pilot, lambda: len(table(app).case_ids) == 6, "the unfiltered list")
        assert app.screen.filter.empty


async def test_a_toggles_between_open_and_all_cases(agent) -> None:
    await some_cases(agent)
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=SIZE) as pilot:
        await cases_screen(pilot)
        assert len(table(app).case_ids) == 6
        await pilot.press("a")
        await until(pilot, lambda: len(table(app).case_ids) == 8, "all eight cases")
        assert "Cases · 8" in heading(app)
        await apply_filter(pilot, "rag-api")
        # All states now: rag-api (TRIAGED) and rag-api-eu (CLOSED).
        assert table(app).case_ids == ["CASE-3", "CASE-1"]
        await pilot.press("a")
        await until(pilot, lambda: table(app).case_ids == ["CASE-1"], "the open one")
        assert "Open cases · 1" in heading(app)


async def test_sorting_orders_the_loaded_cases(agent) -> None:
    await some_cases(agent)
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=SIZE) as pilot:
        await cases_screen(pilot)
        await pilot.press("a")
        await until(pilot, lambda: len(table(app).case_ids) == 8, "all eight cases")
        await pilot.press("s")
        # critical 8, 3; high 5, 1; medium 6, 2; low 7, 4 — ties newest first.
        expected = ["CASE-8", "CASE-3", "CASE-5", "CASE-1", "CASE-6", "CASE-2", "CASE-7"]
        assert table(app).case_ids == [*expected, "CASE-4"]
        await pilot.press("s", "s")
        assert "by state" in heading(app)
        # DETECTED 7, 6, 5, 2; TRIAGED 4, 1; CLOSED 8, 3.
        assert table(app).case_ids == [
            "CASE-7",
            "CASE-6",
            "CASE-5",
            "CASE-2",
            "CASE-4",
            "CASE-1",
            "CASE-8",
            "CASE-3",
        ]


async def test_paging_goes_past_200_when_the_cursor_reaches_the_end(agent) -> None:
    for n in range(450):
        await agent.case_service.on_signal(signal(f"svc-{n}", T0 + n))
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=SIZE) as pilot:
        screen = await cases_screen(pilot)
        assert table(app).row_count == 200
        assert "200 of 450" in heading(app) and "more at the end" in heading(app)
        assert table(app).case_ids[0] == "CASE-450"
        assert table(app).case_ids[-1] == "CASE-251"

        await pilot.press("end")
        await until(pilot, lambda: table(app).row_count == 400, "the second page")
        await pilot.press("end")
        await until(pilot, lambda: table(app).row_count == 450, "the last page")
        ids = table(app).case_ids
        assert ids == [f"CASE-{n}" for n in range(450, 0, -1)], "every case once, in order"
        assert screen.next_cursor is None and "more at the end" not in heading(app)
        assert "Open cases · 450" in heading(app)


async def test_hostile_filter_text_gets_a_message_or_an_exact_empty_answer(agent) -> None:
    await some_cases(agent)
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=SIZE) as pilot:
        await cases_screen(pilot)
        await pilot.press("a")
        await until(pilot, lambda: len(table(app).case_ids) == 8, "all eight cases")

        # Wildcards and quotes are literal text: one title has "50%", one service "pay_gate",
        # one title `it's "raw"`.
        for typed, expected in [
            ("%", ["CASE-5"]),
            ("50%", ["CASE-5"]),
            ("_", ["CASE-6"]),
            ("y_g", ["CASE-6"]),
            ("it's", ["CASE-7"]),
            ('"raw"', ["CASE-7"]),
            ("'", ["CASE-7"]),
            ("%%", []),
            ("\\", []),
            ("'; DROP TABLE cases; --", []),
            ("état:open", []),
        ]:
            await paste_filter(pilot, typed)
            assert table(app).case_ids == expected, typed
            assert message(app) == "", typed

        await paste_filter(pilot, "rag-api")
        shown = table(app).case_ids
        assert shown == ["CASE-3", "CASE-1"]
        for typed, said in [
            ("x" * 10_000, "the filter is 10,000 characters long; at most 500"),
            ("rag\x07api", "control character (U+0007)"),
            ("\x1b[31mred", "control character (U+001B)"),
            ("state:", "state: needs a value"),
            ("state:SLEEPING", "no state 'SLEEPING'"),
        ]:
            await paste_filter(pilot, typed)
            assert said in message(app), (typed, message(app))
            assert table(app).case_ids == shown, "a refused filter changes nothing"
            assert app.screen.filter.text == "rag-api"
        await pilot.press("escape")
        await until(pilot, lambda: len(table(app).case_ids) == 8, "the unfiltered list")

        # Tabs and newlines are spaces between words.
        await paste_filter(pilot, "state:triaged\tservice:search\n")
        assert table(app).case_ids == ["CASE-4"]


def test_the_filter_reads_keys_values_and_words() -> None:
    parsed = parse_filter("  State:investig class:token_expl Service:Rag-API  slow  answers ")
    assert parsed.state == "INVESTIGATING"
    assert parsed.failure_class == "TOKEN_EXPLOSION"
    assert parsed.service == "Rag-API"
    assert parsed.text == "slow answers"
    assert parsed.params(open_only=True) == {
        "state": "INVESTIGATING",
        "class": "TOKEN_EXPLOSION",
        "service": "Rag-API",
        "q": "slow answers",
    }
    words = parse_filter("Error spike on rag-api: chat")
    assert words.text == "Error spike on rag-api: chat" and not words.state
    assert parse_filter("").params(open_only=True) == {"state": "open"}
    assert parse_filter("").params(open_only=False) == {}


async def post_changes(agent, *bodies: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.post(
                f"{agent.url}/api/changes", json=body, headers={"X-API-Key": OPERATOR_KEY}
            ) as response:
                assert response.status == 201, await response.text()


async def test_changes_are_listed_newest_first_and_filtered_by_service(agent) -> None:
    # Posted out of order; their times put them in the order d, b, c, a, newest first.
    await post_changes(
        agent,
        {"service": "rag-api", "summary": "a", "time": "2025-06-02T09:00:00Z"},
        {
            "service": "rag-api",
            "summary": "b",
            "time": "2025-06-02T11:00:00Z",
            "before": "v1",
            "version": "v2",
        },
        {"service": "embedder", "summary": "c", "time": "2025-06-02T10:00:00Z"},
        {"service": "embedder", "summary": "d", "time": "2025-06-02T12:00:00Z"},
    )
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await until(pilot, lambda: isinstance(app.screen, ChangesScreen), "changes")
        changes = app.screen.query_one(ChangeTable)
        await until(pilot, lambda: changes.row_count == 4, "four changes")
        assert [c["summary"] for c in changes.changes] == ["d", "b", "c", "a"]
        assert "v1 → v2" in screen_text(app)

        await pilot.press("slash")
        await pilot.press(*"embedder", "enter")
        await until(pilot, lambda: changes.row_count == 2, "the embedder's two")
        assert [c["summary"] for c in changes.changes] == ["d", "c"]
        assert "Changes of embedder · 2, newest first" in screen_text(app)

        await pilot.press("escape")
        await until(pilot, lambda: changes.row_count == 4, "every service again")


async def test_more_than_the_agents_500_still_shows_the_newest(agent) -> None:
    await post_changes(
        agent,
        *({"service": "rag-api", "summary": f"change {n}", "time": T0 + n} for n in range(620)),
    )
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await until(pilot, lambda: isinstance(app.screen, ChangesScreen), "changes")
        changes = app.screen.query_one(ChangeTable)
        await until(pilot, lambda: changes.row_count == 500, "the newest 500")
        summaries = [c["summary"] for c in changes.changes]
        # The newest 500 of 620 are changes 619 down to 120.
        assert summaries == [f"change {n}" for n in range(619, 119, -1)]
        assert "newest 500, newest first" in screen_text(app)


def tamper(path: Path, *statements: str) -> None:
    """Change the audit table behind the agent's back, its guard triggers dropped first."""
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for statement in statements:
            conn.execute(statement)


async def test_audit_shows_the_chain_holds_then_broken_at_the_tampered_record(agent) -> None:
    # One case: its signal and DETECTED, then TRIAGED and CLOSED by people: four records.
    await agent.case_service.on_signal(signal("rag-api", time.time()))
    await move(agent, "CASE-1", to="TRIAGED")
    await move(agent, "CASE-1", to="CLOSED", reason="false_positive")
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await until(pilot, lambda: isinstance(app.screen, AuditScreen), "audit")
        screen = app.screen
        records = screen.query_one(RecordTable)
        await until(pilot, lambda: records.row_count == 4, "four records")
        verdict = screen.query_one("#audit-verdict", QuietStatic).plain
        assert verdict.startswith("✓ chain holds: 4 records checked")
        rows = record_rows(app)
        assert [(row[0], row[3], row[4], row[5]) for row in rows] == [
            ("4", "ana", "case.transition", "CASE-1"),
            ("3", "ana", "case.transition", "CASE-1"),
            ("2", "agent", "case.transition", "CASE-1"),
            ("1", "agent", "case.signal", "CASE-1"),
        ]

        tamper(agent.config.db_path, "UPDATE audit SET actor = 'eve' WHERE seq = 3")
        await pilot.press("r")
        await until(pilot, lambda: "BROKEN" in screen_text(app), "the broken chain")
        verdict = screen.query_one("#audit-verdict", QuietStatic).plain
        assert verdict.startswith(
            "✗ chain BROKEN at record 3: its content does not match its hash"
        ), verdict
        rows = record_rows(app)
        assert [(row[0], row[1], row[4]) for row in rows] == [
            ("4", "unchecked", "ana"),
            ("3", "BROKEN", "eve"),
            ("2", "ok", "agent"),
            ("1", "ok", "agent"),
        ]


async def test_audit_names_a_deleted_record(agent) -> None:
    await agent.case_service.on_signal(signal("rag-api", time.time()))
    await move(agent, "CASE-1", to="TRIAGED")
    tamper(agent.config.db_path, "DELETE FROM audit WHERE seq = 2")
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await until(pilot, lambda: isinstance(app.screen, AuditScreen), "audit")
        records = app.screen.query_one(RecordTable)
        await until(pilot, lambda: records.row_count == 2, "the two records left")
        verdict = app.screen.query_one("#audit-verdict", QuietStatic).plain
        assert verdict.startswith("✗ chain BROKEN at record 3: sequence 3 where 2 was next")
