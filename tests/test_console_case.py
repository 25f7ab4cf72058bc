"""The case screen's views at 80×24 and 200×60: timeline, evidence, hypotheses, suggestions,
context and the waterfall, on cases of the real agent and on hand-built documents."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from agentfix import OPERATOR_KEY
from consolefix import screen_text, until
from proveai_agent.cases.lifecycle import Request
from proveai_agent.signals import Signal
from proveai_agent.spans import Span
from proveai_agent.store.changes import Change
from proveai_tui.app import ConsoleApp
from proveai_tui.client import AgentClient
from proveai_tui.feed import PollingSource
from proveai_tui.screens.case import CaseScreen
from proveai_tui.screens.help import HelpScreen
from proveai_tui.widgets.case_changes import CaseChanges
from proveai_tui.widgets.context_view import ContextView
from proveai_tui.widgets.hypotheses import HypothesisList, confidence_bar
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.scroll_pane import ScrollPane
from proveai_tui.widgets.suggestions import SuggestionList
from proveai_tui.widgets.timeline import Timeline
from proveai_tui.widgets.waterfall import Waterfall, bar_cells, waterfall_lines

FIXTURES = Path(__file__).parent / "console_fixtures"
sys.path.insert(0, str(FIXTURES))

from fake_agent import FakeAgent  # noqa: E402

pytestmark = pytest.mark.console

KEY = "console-case-test-key"
SMALL, LARGE = (80, 24), (200, 60)
NS = 1_000_000_000
T0_NS = 1_748_856_420 * NS


@pytest.fixture
async def fake() -> AsyncIterator[FakeAgent]:
    server = FakeAgent(KEY)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def console(url: str, key: str) -> ConsoleApp:
    client = AgentClient(url, key, timeout_s=2.0)
    return ConsoleApp(client, PollingSource(client, interval_s=0.3))


async def open_case(pilot: Pilot, case_id: str) -> CaseScreen:
    """Push the case screen directly, as choosing the case in a list does."""
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    await app.push_screen(CaseScreen(case_id, app.client))
    screen = app.screen
    assert isinstance(screen, CaseScreen)
    await until(pilot, lambda: screen.case is not None, "the case to load")
    await pilot.pause(0.1)
    return screen


async def show_view(pilot: Pilot, key: str, pane_id: str) -> None:
    await pilot.press(key)
    await until(
        pilot,
        lambda: pilot.app.screen.focused is not None and pilot.app.screen.focused.id == pane_id,
        f"view {key}",
    )
    await pilot.pause(0.05)


def serve(fake: FakeAgent, case: dict[str, Any]) -> None:
    fake.case_overrides[case["id"]] = case


def span(
    span_id: int, parent: int | None, name: str, start_s: float, end_s: float, **kw
) -> dict:
    return {
        "trace_id": "ab" * 16,
        "span_id": f"{span_id:016x}",
        "parent_span_id": f"{parent:016x}" if parent is not None else None,
        "service": "agent-svc",
        "name": name,
        "kind": "SPAN_KIND_INTERNAL",
        "status": kw.pop("status", "STATUS_CODE_OK"),
        "start_ns": T0_NS + round(start_s * NS),
        "end_ns": T0_NS + round(end_s * NS),
        **kw,
    }


def loop_trace() -> dict[str, Any]:
    """invoke_agent 0–10 s; 50 search calls of 0.1 s every 0.15 s from 0.1 s; chat 8–10 s."""
    spans = [span(1, None, "invoke_agent planner", 0, 10)]
    for i in range(50):
        start = 0.1 + 0.15 * i
        spans.append(span(10 + i, 1, "execute_tool search", start, start + 0.1))
    spans.append(span(99, 1, "chat gpt-4o", 8, 10))
    return {"trace_id": "ab" * 16, "spans": spans}


def hand_case(**fields: Any) -> dict[str, Any]:
    case = {
        "id": "CASE-7",
        "title": "Agent loop in agent-svc",
        "state": "REMEDIATION_SUGGESTED",
        "severity": "high",
        "service": "agent-svc",
        "opened_at": "2025-06-02T09:16:00Z",
        "updated_at": "2025-06-02T09:24:00Z",
        "trigger": "trace_pattern",
        "failure_class": "AGENT_LOOP",
        "signals": [],
        "context_snapshot": {"traces": [loop_trace()]},
        "recent_changes": [],
        "hypotheses": [],
        "remediation_suggestions": [],
        "timeline": [],
    }
    case.update(fields)
    return case


# Bars, by hand


def test_a_confidence_bar_has_one_cell_per_tenth_rounded_half_up() -> None:
    # 0.62 × 10 = 6.2 → 6 cells; 0.05 × 10 + 0.5 = 1 → 1 cell; 0.35 → 3.5 + 0.5 = 4 cells.
    assert confidence_bar(0.62) == "██████░░░░ 0.62"
    assert confidence_bar(0.05) == "█░░░░░░░░░ 0.05"
    assert confidence_bar(0.35) == "████░░░░░░ 0.35"
    assert confidence_bar(1.0) == "██████████ 1.00"
    assert confidence_bar(0) == "░░░░░░░░░░ 0.00"
    # Out of range is drawn at the nearest end with its own number; not a number, no bar.
    assert confidence_bar(1.3) == "██████████ 1.30"
    assert confidence_bar("high") == "░░░░░░░░░░ —"
    assert confidence_bar(None) == "░░░░░░░░░░ —"


def test_a_span_covers_the_cells_from_the_floor_of_its_start_to_the_ceiling_of_its_end() -> (
    None
):
    # A 10 s trace on 37 cells is 3.7 cells a second: 2.5 s → 9.25, 5 s → 18.5.
    assert bar_cells(2.5, 5.0, 0.0, 10.0, 37) == range(9, 19)
    assert bar_cells(0.0, 10.0, 0.0, 10.0, 37) == range(0, 37)
    # An instant at the very end still gets the last cell; one before t0 the first.
    assert bar_cells(10.0, 10.0, 0.0, 10.0, 37) == range(36, 37)
    assert bar_cells(-1.0, -1.0, 0.0, 10.0, 37) == range(0, 1)


def test_repeated_siblings_are_one_counted_row_and_a_loop_in_words() -> None:
    # At 100 cells: label 40, bars 100 - 40 - 9 = 51 cells, 5.1 cells a second.
    lines = [line.plain for line in waterfall_lines(loop_trace(), 100)]
    assert lines[0] == f"trace {'ab' * 16}  52 spans  10.0 s"
    assert lines[1] == "loop: execute_tool search × 50 under invoke_agent planner"
    rows = lines[3:]
    assert len(rows) == 3, "50 repeats make one row"
    assert rows[0] == f"{'invoke_agent planner':<40} {'█' * 51}  10.0 s"
    # The first call starts at 0.1 s (cell 0), the last ends at 7.55 s (ceil 38.5 = 39),
    # and calls start every 0.765 cells, so cells 0 to 38 are all covered.
    assert rows[1] == f"{'  execute_tool search × 50 loop':<40} {'▒' * 39}{' ' * 12}  7.45 s"
    # chat: 8 s → cell 40.8 → 40, to the end.
    assert rows[2] == f"{'  chat gpt-4o':<40} {' ' * 40}{'█' * 11}  2.00 s"


def test_fewer_repeats_than_a_loop_are_drawn_one_by_one_and_errors_are_said() -> None:
    spans = [span(1, None, "root", 0, 4)]
    spans += [span(2 + i, 1, "retry", i, i + 1, status="STATUS_CODE_ERROR") for i in range(4)]
    lines = [line.plain for line in waterfall_lines({"trace_id": "t", "spans": spans}, 100)]
    assert lines[0] == "trace t  5 spans  4.00 s  4 ERROR"
    assert not any(line.startswith("loop:") for line in lines)
    rows = lines[2:]
    # 51 cells over 4 s, 12.75 a second: retry i covers floor(12.75 i) to ceil(12.75 (i + 1)).
    assert [row[:40].rstrip() for row in rows] == ["root"] + ["  retry ERROR"] * 4
    cells = [(row[41:92].index("█"), row[41:92].count("█")) for row in rows[1:]]
    assert cells == [(0, 13), (12, 14), (25, 14), (38, 13)]


# The views on the real agent's case


LOOP_QUERY = 'max(llm_agent_tool_repeats{service_name="agent-svc"})'


def agent_span(index: int, parent: int | None, name: str, start: float, end: float) -> Span:
    return Span(
        trace_id="cd" * 16,
        span_id=f"{index:016x}",
        parent_span_id=f"{parent:016x}" if parent else None,
        service="agent-svc",
        name=name,
        kind="SPAN_KIND_INTERNAL",
        status="STATUS_CODE_OK",
        status_message="",
        start_ns=int(start * NS),
        end_ns=int(end * NS),
    )


async def worked_case(agent) -> dict[str, Any]:
    """A loop case worked from signal to verified fix on the real agent."""
    now = time.time()
    at = now - 600
    spans = [agent_span(1, None, "invoke_agent planner", at - 30, at - 20)]
    spans += [
        agent_span(2 + i, 1, "execute_tool search", at - 29.5 + i * 0.5, at - 29.2 + i * 0.5)
        for i in range(12)
    ]
    await agent.span_store.write(spans, [])
    await agent.change_store.add(
        Change(
            at - 40,
            "agent-svc",
            "deploy",
            "agent-svc 2.0: new planner prompt",
            None,
            None,
            "api",
        )
    )
    await agent.change_store.add(
        Change(
            at - 30, "billing-api", "deploy", "billing-api invoice layout", None, None, "api"
        )
    )
    doc = await agent.case_service.on_signal(
        Signal(
            kind="agent_loop",
            failure_class="AGENT_LOOP",
            trigger="trace_pattern",
            service="agent-svc",
            span_name="execute_tool search",
            at=at,
            severity="high",
            summary="search repeated 12 times",
            subject="search",
            evidence={"repeats": 12, "query": LOOP_QUERY, "threshold": 5},
        )
    )
    agent.engine.submit(doc["id"])
    await asyncio.wait_for(agent.engine.idle.wait(), 10)
    service = agent.case_service
    await service.transition(
        doc["id"], Request("TRIAGED", "ana", "engineer", "mine", owner="ana")
    )
    await service.add_note(doc["id"], "ana", "looking at the planner")
    await service.transition(doc["id"], Request("INVESTIGATING", "ana", "engineer"))
    await service.feedback(doc["id"], f"{doc['id']}-S1", True, "ana", "matches the deploy")
    ticket = {
        "system": "github",
        "number": 12,
        "url": "https://git.example/acme/agent/issues/12",
    }
    await service.add_ticket(doc["id"], "ana", ticket, None)
    await service.transition(
        doc["id"], Request("FIX_APPLIED", "ana", "engineer", suggestion_id=f"{doc['id']}-S1")
    )
    await service.finish_verification(doc["id"], True, "worst 1 <= 5 over 5 m", time.time())
    stored = await agent.case_store.get(1)
    assert stored is not None and stored["state"] == "RESOLVED"
    return stored


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
async def test_the_timeline_tells_the_whole_case_oldest_first(agent, size) -> None:
    doc = await worked_case(agent)
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=size) as pilot:
        screen = await open_case(pilot, doc["id"])
        await show_view(pilot, "2", "view-timeline")
        lines = [line.split(" · ", 2) for line in screen.query_one(Timeline).plain.splitlines()]
        events = [(kind, what) for _, kind, what in (line for line in lines if len(line) == 3)]
        assert events == [
            ("signal", "search repeated 12 times"),
            ("transition", "→ DETECTED by agent"),
            ("analysis", "root cause planner-prompt-changed · 1 suggestion: CASE-1-S1"),
            ("transition", "DETECTED → TRIAGED by ana · owner ana · note: mine"),
            ("note", "ana: looking at the planner"),
            ("transition", "TRIAGED → INVESTIGATING by ana"),
            (
                "transition",
                "INVESTIGATING → REMEDIATION_SUGGESTED by agent · note: the "
                "engine's suggestions are ready",
            ),
            ("feedback", "ana marked CASE-1-S1 helpful: matches the deploy"),
            ("ticket", "ana created github 12 https://git.example/acme/agent/issues/12"),
            ("transition", "REMEDIATION_SUGGESTED → FIX_APPLIED by ana · suggestion CASE-1-S1"),
            ("verification", f"verifying the fix: {LOOP_QUERY} <= 5 over 5 m (by agent)"),
            ("verification", events[-1][1]),
        ]
        assert events[-1][1].startswith("fix held → RESOLVED: worst 1 <= 5 over 5 m · time to")
        text = screen_text(app)
        assert "signal" in text and "search repeated 12 times" in text
        assert "CASE-1  Agent loop in agent-svc" in text, "the header stays"


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
async def test_evidence_marks_the_correlated_change_in_words(agent, size) -> None:
    doc = await worked_case(agent)
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=size) as pilot:
        screen = await open_case(pilot, doc["id"])
        lines = screen.query_one(CaseChanges).plain.splitlines()
        assert lines[0] == "Recent changes (2)"
        assert lines[1].startswith("correlated 1.00  ")
        assert lines[1].endswith("  deploy  agent-svc  agent-svc 2.0: new planner prompt")
        assert lines[2].startswith("not correlated  ")
        assert lines[2].endswith("  billing-api  billing-api invoice layout")
        pane = screen.query_one("#signals", ScrollPane)
        pane.focus()
        await pilot.press("end")
        await pilot.pause(0.1)
        assert "correlated 1.00" in screen_text(app)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
async def test_suggestions_show_action_effort_precedent_and_verification(agent, size) -> None:
    doc = await worked_case(agent)
    suggestion = doc["remediation_suggestions"][0]
    app = console(agent.url, OPERATOR_KEY)
    async with app.run_test(size=size) as pilot:
        screen = await open_case(pilot, doc["id"])
        await show_view(pilot, "4", "view-suggestions")
        lines = screen.query_one(SuggestionList).plain.splitlines()
        assert lines[0] == "Suggestions (1)"
        # The agent's confidence 0.9 is nine cells of ten.
        assert suggestion["confidence"] == 0.9
        assert lines[1] == "CASE-1-S1  █████████░ 0.90  effort low  fix applied"
        assert lines[2] == "   " + suggestion["action"]
        assert lines[4:] == [
            "   no similar past case",
            f"   verify: {LOOP_QUERY} <= 5 over 5 m",
            "   feedback: helpful (ana): matches the deploy",
        ]
        text = screen_text(app)
        assert "effort low" in text and "verify:" in text


# Hand-built documents through the fake agent


HYPOTHESES = [
    {"cause_id": "tool-error-retried", "hypothesis": "the tool fails", "confidence": 0.35},
    {
        "cause_id": "planner-prompt-changed",
        "failure_class": "AGENT_LOOP",
        "hypothesis": "the prompt lost its tool limit",
        "confidence": 0.62,
        "evidence": ["change fit 1.00", "signal fit 0.80"],
    },
    {"cause_id": "model-swap", "hypothesis": "a new model", "confidence": 0.05},
]


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
async def test_hypotheses_are_ranked_with_bars_and_the_missing_evidence(fake, size) -> None:
    serve(
        fake,
        hand_case(
            hypotheses=HYPOTHESES,
            analysis={
                "unable": True,
                "verdict": "unable to determine root cause",
                "missing_evidence": ["a change to the planner's prompt or tools"],
                "model": {"used": True, "answered": False, "reason": "ran past 15 s"},
            },
        ),
    )
    app = console(fake.url, KEY)
    async with app.run_test(size=size) as pilot:
        screen = await open_case(pilot, "CASE-7")
        await show_view(pilot, "3", "view-hypotheses")
        lines = screen.query_one(HypothesisList).plain.splitlines()
        assert lines[:4] == [
            "Analysis: unable to determine root cause",
            "missing evidence that would decide:",
            "  - a change to the planner's prompt or tools",
            "model did not answer (ran past 15 s): the evidence ranking stands",
        ]
        ranked = [line for line in lines if line[:1].isdigit()]
        assert ranked == [
            "1. ██████░░░░ 0.62  planner-prompt-changed  AGENT_LOOP",
            "2. ████░░░░░░ 0.35  tool-error-retried",
            "3. █░░░░░░░░░ 0.05  model-swap",
        ]
        assert "   evidence: change fit 1.00 · signal fit 0.80" in lines
        text = screen_text(app)
        assert "1. ██████░░░░ 0.62  planner-prompt-changed" in text
        assert "unable to determine root cause" in text
        await show_view(pilot, "4", "view-suggestions")
        suggestions = screen.query_one(SuggestionList).plain
        assert "none: the engine could not determine the root cause" in suggestions


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
async def test_the_waterfall_draws_bars_on_one_axis_and_the_loop_counted(fake, size) -> None:
    serve(fake, hand_case())
    app = console(fake.url, KEY)
    async with app.run_test(size=size) as pilot:
        screen = await open_case(pilot, "CASE-7")
        await show_view(pilot, "6", "view-waterfall")
        text = screen_text(app)
        assert "loop: execute_tool search × 50 under invoke_agent planner" in text
        if size == SMALL:
            # 78 cells inside the pane's padding: label 31, bars 78 - 31 - 9 = 38 cells,
            # 3.8 a second. Calls: 0.1 s → cell 0 to 7.55 s → ceil 28.69 = 29; chat from
            # 8 s → cell 30.4 → 30.
            label, bars = 31, 38
            loop_cells, chat_first = 29, 30
            loop_first = 0
        else:
            # 198 cells: label 48, bars 141, 14.1 a second. Calls: 0.1 s → cell 1.41 → 1
            # to 7.55 s → ceil 106.46 = 107; chat from 8 s → 112.8 → 112.
            label, bars = 48, 141
            loop_first, loop_cells, chat_first = 1, 106, 112
        root = f"{'invoke_agent planner':<{label}} {'█' * bars}  10.0 s"
        loop = (
            f"{'  execute_tool search × 50 loop':<{label}} {' ' * loop_first}"
            f"{'▒' * loop_cells}{' ' * (bars - loop_first - loop_cells)}  7.45 s"
        )
        chat = (
            f"{'  chat gpt-4o':<{label}} {' ' * chat_first}{'█' * (bars - chat_first)}  2.00 s"
        )
        for line in (root, loop, chat):
            assert line in text, f"{line!r} not on screen:\n{text}"
        assert screen.query_one(Waterfall).plain.count("execute_tool search") == 2


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
async def test_the_context_view_shows_prompts_chunks_outputs_and_scores(fake, size) -> None:
    case = json.loads((FIXTURES / "case_CASE-7.json").read_text())
    case["context_snapshot"]["model_outputs"] = [
        {
            "span_id": "a3ce929d0e0e4736",
            "direction": "output",
            "role": "assistant",
            "parts": [{"type": "text", "content": "[REDACTED] press the reset button."}],
        }
    ]
    serve(fake, case)
    app = console(fake.url, KEY)
    async with app.run_test(size=size) as pilot:
        screen = await open_case(pilot, "CASE-7")
        await show_view(pilot, "5", "view-context")
        lines = screen.query_one(ContextView).plain.splitlines()
        assert lines[:4] == [
            "Scores",
            "relevance 0.963 · groundedness 0.412",
            "Prompts (2)",
            "system · span chat gpt-4o",
        ]
        assert "Model outputs (1)" in lines
        assert "[REDACTED] press the reset button." in lines, "shown as the agent sent it"
        assert "Retrieved chunks (3)" in lines
        assert "router-reset#1 · score 0.9132 · kb/routers.md · span vector search" in lines
        assert "Scores" in screen_text(app)
        await pilot.press("end")
        await pilot.pause(0.1)
        assert "Firmware updates install overnight" in screen_text(app)


# Keys


async def test_every_view_has_a_key_with_an_id_and_brackets_step_through_them(fake) -> None:
    serve(fake, hand_case())
    app = console(fake.url, KEY)
    async with app.run_test(size=SMALL) as pilot:
        screen = await open_case(pilot, "CASE-7")
        tabs = screen.query_one("#case-views", QuietStatic)
        assert tabs.plain.startswith("[1 Evidence]  2 Timeline  3 Hypotheses")
        await pilot.press("right_square_bracket")
        assert screen.view == "timeline" and tabs.plain.startswith("1 Evidence  [2 Timeline]")
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert screen.view == "waterfall", "the views wrap round"
        await pilot.press("1")
        assert screen.view == "evidence"
        assert screen.focused is not None and screen.focused.id == "spans"

        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys screen")
        text = app.screen.query_one("#help-text", QuietStatic).plain
        for row in [
            "  1  View 1: signals and recent changes, span tree, span detail"
            "  case.view_evidence",
            "  2  View 2: everything that happened to the case, oldest first"
            "  case.view_timeline",
            "  6  View 6: the exemplar traces on a time axis, loops folded"
            "  case.view_waterfall",
            "  ]  Next view, in the order of the keys 1 to 6  case.next_view",
            "  [  Previous view  case.prev_view",
        ]:
            assert row in text, f"{row!r} not in the keys list:\n{text}"


# Odd, missing and huge fields


ODD = {
    "id": "CASE-7",
    "timeline": [
        "not an event",
        {"type": "transition"},
        {"kind": "opened", "at": "yesterday"},
        {"type": "mystery", "at": "2025-06-02T09:00:00Z", "weight": 3, "nested": {"a": 1}},
        {"type": "feedback"},
        {"type": "ticket", "system": "jira", "key": "OPS-4"},
    ],
    "hypotheses": [{"confidence": "sure"}, "a string", {"hypothesis": None, "confidence": 7}],
    "remediation_suggestions": [{"verification": "not a mapping"}, {"id": "S2"}],
    "recent_changes": [None, {"correlated": "maybe"}],
    "analysis": {"unable": True, "missing_evidence": "not a list", "model": "odd"},
    "class_scores": {"AGENT_LOOP": None},
    "context_snapshot": {
        "traces": [
            {
                "trace_id": "t1",
                "spans": [
                    {"span_id": "a", "parent_span_id": "b", "name": "cycle a"},
                    {"span_id": "b", "parent_span_id": "a", "name": "cycle b", "start_ns": "x"},
                    {"span_id": "c", "name": None, "start_ns": 5, "end_ns": 1},
                    "not a span",
                ],
            },
            {"trace_id": "t2", "spans": "none"},
        ],
        "prompts": [{"parts": "not a list"}, 4],
        "retrieved_chunks": [{"content": None}],
        "eval_scores": {"relevance": "high"},
    },
}


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
async def test_odd_fields_show_in_every_view_without_a_traceback(fake, size) -> None:
    serve(fake, ODD)
    app = console(fake.url, KEY)
    async with app.run_test(size=size) as pilot:
        screen = await open_case(pilot, "CASE-7")
        for key, pane in [
            ("2", "view-timeline"),
            ("3", "view-hypotheses"),
            ("4", "view-suggestions"),
            ("5", "view-context"),
            ("6", "view-waterfall"),
        ]:
            await show_view(pilot, key, pane)
            assert screen_text(app).strip()
        timeline = screen.query_one(Timeline).plain
        assert "transition · → — by —" in timeline
        assert "mystery · weight 3" in timeline
        assert "ticket · — created jira OPS-4" in timeline
        hypotheses = screen.query_one(HypothesisList).plain
        assert "1. ██████████ 7.00  —" in hypotheses
        assert "2. ░░░░░░░░░░ —  —" in hypotheses
        suggestions = screen.query_one(SuggestionList).plain
        assert "verify: no query, an engineer has to judge the fix" in suggestions
        waterfall = screen.query_one(Waterfall).plain
        assert "cycle a" in waterfall and "cycle b" in waterfall, "a parent cycle loses no span"
        assert "trace t2  0 spans  —" in waterfall


async def test_a_huge_prompt_and_five_thousand_spans_neither_hang_nor_crash(fake) -> None:
    prompt = "word " * 20_000
    spans = [span(1, None, "invoke_agent planner", 0, 100)]
    spans += [
        span(2 + i, 1, "execute_tool search", i * 0.01, i * 0.01 + 0.005) for i in range(2500)
    ]
    spans += [
        span(3000 + i, 1, f"step {i}", 30 + i * 0.02, 30.01 + i * 0.02) for i in range(2499)
    ]
    case = hand_case(
        context_snapshot={
            "traces": [{"trace_id": "ab" * 16, "spans": spans}],
            "prompts": [
                {
                    "span_id": f"{1:016x}",
                    "role": "user",
                    "parts": [{"type": "text", "content": prompt}],
                }
            ],
        }
    )
    assert len(prompt) == 100_000 and len(spans) == 5000
    serve(fake, case)
    app = console(fake.url, KEY)
    async with app.run_test(size=SMALL) as pilot:
        started = time.monotonic()
        screen = await open_case(pilot, "CASE-7")
        await show_view(pilot, "5", "view-context")
        assert "… 96,000 more characters not shown" in screen.query_one(ContextView).plain
        await show_view(pilot, "6", "view-waterfall")
        waterfall = screen.query_one(Waterfall).plain
        assert "loop: execute_tool search × 2500 under invoke_agent planner" in waterfall
        # Rows: the root, the loop, 2499 steps; 300 drawn, 2201 steps left out.
        assert "… 2201 more rows (2201 spans) not drawn" in waterfall
        await pilot.press("end")
        await pilot.pause(0.1)
        assert "not drawn" in screen_text(app)
        assert time.monotonic() - started < 20
