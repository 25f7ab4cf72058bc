"""Actions on the case screen, driven by the pilot at 80×24 against the real agent.

After each step the test reads both what the screen shows and what the agent stored
(GET /api/cases/{id}); the expected values come from the lifecycle's rules and the API's
field limits, not from the console's own output.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aiohttp
import pytest
from textual import events
from textual.pilot import Pilot
from textual.widgets import Input, OptionList

from agentfix import OPERATOR_KEY
from consolefix import screen_text
from consolefix import until as wait_until
from proveai_agent.signals import Signal
from proveai_tui.app import ConsoleApp, parse_args
from proveai_tui.client import AgentClient
from proveai_tui.feed import PollingSource
from proveai_tui.screens.case import CaseScreen
from proveai_tui.screens.case_actions import ACTION_BINDINGS
from proveai_tui.screens.help import HelpScreen
from proveai_tui.widgets.dialogs import ChoiceDialog, ConfirmDialog, TextDialog
from proveai_tui.widgets.quiet_static import QuietStatic
from test_tickets import FakeTracker, github_config, jira_config

pytestmark = pytest.mark.console

SIZE = (80, 24)
ACTOR = "dana"
HEADERS = {"X-API-Key": OPERATOR_KEY}

SUGGESTIONS = [
    {
        "id": "CASE-1-S1",
        "cause_id": "model-version-changed",
        "hypothesis": "The model version changed under the service",
        "action": "Pin the previous model version",
        "effort": "low",
        "confidence": 0.81,
        "similar_case": None,
        "verification": {
            "query": 'histogram_quantile(0.95, rate(chat_bucket{service="rag-api"}[5m]))',
            "comparator": "<=",
            "threshold": 1.5,
            "window_s": 300,
        },
    },
    {
        "id": "CASE-1-S2",
        "cause_id": "retriever-slow",
        "hypothesis": "The retriever got slower",
        "action": "Scale the vector store out",
        "effort": "medium",
        "confidence": 0.55,
        "similar_case": None,
        "verification": {
            "query": 'avg(retrieve_seconds{service="rag-api"})',
            "comparator": "<=",
            "threshold": 0.4,
            "window_s": 120,
        },
    },
]


until = partial(wait_until, timeout_s=5.0)
"""Waits at most 5.0 s for a state of the console."""


def analysis(suggestions: list[dict[str, Any]]) -> dict[str, Any]:
    """An analysis in the shape the engine attaches (engine/service.py)."""
    return {
        "hypotheses": [
            {
                "cause_id": s["cause_id"],
                "failure_class": "LATENCY_REGRESS",
                "hypothesis": s["hypothesis"],
                "confidence": s["confidence"],
                "evidence": ["latency fit 0.90"],
            }
            for s in suggestions
        ],
        "remediation_suggestions": suggestions,
        "narrative": "p95 4 s against 1 s after the model changed.",
        "analysis": {
            "root_cause": suggestions[0]["cause_id"] if suggestions else None,
            "confidence": suggestions[0]["confidence"] if suggestions else 0.0,
            "unable": not suggestions,
            "verdict": f"root cause {suggestions[0]['cause_id']}" if suggestions else "unable",
            "missing_evidence": [],
            "model": {"used": False},
            "duration_s": 0.01,
            "signature": "LATENCY_REGRESS. signals: latency_regression chat. changes: none",
            "stages": [],
        },
    }


def signal(service: str = "rag-api") -> Signal:
    return Signal(
        kind="latency_regression",
        failure_class="LATENCY_REGRESS",
        trigger="anomaly_detection",
        service=service,
        span_name="chat",
        at=time.time(),
        severity="high",
        summary="p95 4 s against 1 s",
    )


async def open_case(agent, suggestions: bool = True, service: str = "rag-api") -> str:
    doc = await agent.case_service.on_signal(signal(service))
    if suggestions:
        await agent.case_service.attach_analysis(doc["id"], analysis(SUGGESTIONS))
    return doc["id"]


async def stored(agent, case_id: str = "CASE-1") -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers=HEADERS) as session,
        session.get(f"{agent.url}/api/cases/{case_id}") as response,
    ):
        assert response.status == 200
        return await response.json()


async def move(agent, case_id: str, to: str, **fields: str) -> None:
    """Set-up through the API, as another engineer would: not the thing under test."""
    async with (
        aiohttp.ClientSession(headers=HEADERS) as session,
        session.post(
            f"{agent.url}/api/cases/{case_id}/transition",
            json={"to": to, "actor": "setup", **fields},
        ) as response,
    ):
        assert response.status == 200, await response.text()


@pytest.fixture(autouse=True)
def actor(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PROVEAI_ACTOR", ACTOR)
    return ACTOR


@pytest.fixture
async def tracker() -> AsyncIterator[FakeTracker]:
    server = FakeTracker()
    await server.start()
    yield server
    await server.stop()


def console(agent, read_only: bool = False) -> ConsoleApp:
    client = AgentClient(agent.url, OPERATOR_KEY, timeout_s=5.0)
    return ConsoleApp(client, PollingSource(client, interval_s=0.2), read_only=read_only)


def visible(app: ConsoleApp) -> str:
    """The screen's words with line breaks and runs of spaces as one space, so that a
    wrapped sentence reads whole."""
    return re.sub(r"\s+", " ", screen_text(app))


def footer(app: ConsoleApp) -> str:
    return screen_text(app).splitlines()[-1]


def notice(app: ConsoleApp) -> str:
    return app.screen.query_one("#action-notice", QuietStatic).plain


async def case_screen(pilot: Pilot, case_id: str = "CASE-1") -> CaseScreen:
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    app.push_screen(CaseScreen(case_id, app.client))
    await until(pilot, lambda: isinstance(app.screen, CaseScreen), "the case screen")
    screen = app.screen
    assert isinstance(screen, CaseScreen)
    await until(pilot, lambda: screen.case is not None, "the case to load")
    await pilot.pause(0.1)
    return screen


async def dialog(pilot: Pilot, kind: type) -> Any:
    await until(pilot, lambda: isinstance(pilot.app.screen, kind), kind.__name__)
    await pilot.pause(0.05)
    return pilot.app.screen


async def pick(pilot: Pilot, label_start: str) -> None:
    """Move the choice dialog's cursor to the entry that starts so, with j and k, and pick."""
    screen = await dialog(pilot, ChoiceDialog)
    labels = [choice.label for choice in screen.choices]
    target = next(i for i, label in enumerate(labels) if label.startswith(label_start))
    options = screen.query_one(OptionList)
    while options.highlighted != target:
        await pilot.press("j" if (options.highlighted or 0) < target else "k")
    await pilot.press("enter")


async def type_text(pilot: Pilot, text: str) -> TextDialog:
    screen = await dialog(pilot, TextDialog)
    await pilot.press(*text)
    await pilot.press("enter")
    return screen


async def paste(pilot: Pilot, text: str) -> TextDialog:
    """Paste into the text dialog, as a terminal delivers a paste, and submit it."""
    screen = await dialog(pilot, TextDialog)
    field = screen.query_one(Input)
    field.value = ""
    field.post_message(events.Paste(text))
    await until(pilot, lambda: field.value != "", "the paste")
    await pilot.press("enter")
    await pilot.pause(0.05)
    return screen


async def confirm(pilot: Pilot) -> str:
    """Send what the confirmation shows; returns what it showed."""
    await dialog(pilot, ConfirmDialog)
    shown = visible(pilot.app)
    await pilot.press("y")
    return shown


async def outcome(pilot: Pilot, start: str) -> str:
    await until(pilot, lambda: notice(pilot.app).startswith(start), f"a {start!r} notice")
    return notice(pilot.app)


async def shows_state(pilot: Pilot, state: str) -> None:
    await until(pilot, lambda: f"state {state}" in visible(pilot.app), f"state {state}")


def last_event(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["timeline"][-1]


# The lifecycle, one action at a time


async def test_triage_sets_severity_and_owner_and_the_screen_moves_on(agent) -> None:
    await open_case(agent, suggestions=False)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        assert "t Triage" in footer(app)
        assert "i Investigate" not in footer(app)

        await pilot.press("t")
        await pick(pilot, "critical")
        await type_text(pilot, "ana")
        shown = await confirm(pilot)
        assert "CASE-1: DETECTED to TRIAGED, by dana" in shown
        assert "severity: critical" in shown and "owner: ana" in shown

        said = await outcome(pilot, "done")
        assert said == "done: CASE-1 is TRIAGED now (severity critical, owner ana)"
        await shows_state(pilot, "TRIAGED")
        assert "severity critical" in visible(app)
        assert said in visible(app)
        await until(pilot, lambda: "i Investigate" in footer(app), "investigate offered")
        assert "t Triage" not in footer(app)

    doc = await stored(agent)
    assert (doc["state"], doc["severity"], doc["owner"]) == ("TRIAGED", "critical", "ana")
    event = last_event(doc)
    assert (event["from"], event["to"], event["actor"]) == ("DETECTED", "TRIAGED", ACTOR)


async def test_investigating_a_case_with_suggestions_moves_it_on_to_them(agent) -> None:
    await open_case(agent)
    await move(agent, "CASE-1", "TRIAGED")
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("i")
        shown = await confirm(pilot)
        assert "CASE-1: TRIAGED to INVESTIGATING, by dana" in shown
        # The agent moves on at once: its suggestions are ready.
        assert await outcome(pilot, "done") == "done: CASE-1 is REMEDIATION_SUGGESTED now"
        await shows_state(pilot, "REMEDIATION_SUGGESTED")
        await until(pilot, lambda: "a Apply fix" in footer(app), "apply fix offered")
        assert "f Resolve" in footer(app)

    doc = await stored(agent)
    assert doc["state"] == "REMEDIATION_SUGGESTED"
    steps = [(e["to"], e["actor"]) for e in doc["timeline"] if e["type"] == "transition"]
    assert steps[-2:] == [("INVESTIGATING", ACTOR), ("REMEDIATION_SUGGESTED", "agent")]


async def suggested(agent) -> None:
    await open_case(agent)
    await move(agent, "CASE-1", "TRIAGED")
    await move(agent, "CASE-1", "INVESTIGATING")


async def test_applying_a_suggestion_shows_its_action_effort_and_verification(agent) -> None:
    await suggested(agent)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("a")
        chooser = await dialog(pilot, ChoiceDialog)
        assert "CASE-1-S1 Pin the previous model version" in visible(app)
        assert "CASE-1-S2 Scale the vector store out" in visible(app)
        assert "effort: low" in visible(app)
        await pick(pilot, "CASE-1-S2")
        assert chooser.is_attached is False
        shown = await confirm(pilot)
        assert "CASE-1: REMEDIATION_SUGGESTED to FIX_APPLIED with the fix of CASE-1-S2" in shown
        assert "action: Scale the vector store out" in shown
        assert "effort: medium" in shown
        assert 'verification: avg(retrieve_seconds{service="rag-api"}) <= 0.4 for 120 s' in (
            shown
        )

        said = await outcome(pilot, "done")
        assert said == (
            "done: CASE-1 is VERIFYING now; the agent runs the fix's verification and"
            " resolves the case when the fix holds"
        )
        await shows_state(pilot, "VERIFYING")

        doc = await stored(agent)
        # Once the case has moved on, the line about VERIFYING goes.
        moved_on = await stored(agent)
        moved_on["state"] = "RESOLVED"
        await agent.case_store.update(1, moved_on, time.time())
        await pilot.press("r")
        await shows_state(pilot, "RESOLVED")
        assert app.screen.notice and not app.screen.query_one("#action-notice").display

    assert doc["state"] == "VERIFYING"
    assert doc["fix"]["suggestion_id"] == "CASE-1-S2"
    assert doc["fix"]["actor"] == ACTOR
    assert doc["verification"]["query"] == 'avg(retrieve_seconds{service="rag-api"})'


async def test_resolving_with_root_cause_and_fix_text_ends_resolved_after_verification(
    agent,
) -> None:
    await suggested(agent)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("f")
        await type_text(pilot, "embedding model swapped")
        await type_text(pilot, "pinned embedder v2")
        shown = await confirm(pilot)
        assert "root cause: embedding model swapped" in shown
        assert "fix: pinned embedder v2" in shown
        await outcome(pilot, "done")
        await shows_state(pilot, "VERIFYING")

        held = await agent.case_service.finish_verification("CASE-1", True, "held", time.time())
        assert held is not None
        # A resolved case leaves the open-case list that the polling source reads, so the
        # screen learns of it on r (or from the agent's stream).
        await pilot.press("r")
        await shows_state(pilot, "RESOLVED")

    doc = await stored(agent)
    assert doc["state"] == "RESOLVED"
    assert doc["fix"]["root_cause"] == "embedding model swapped"
    assert doc["fix"]["fix"] == "pinned embedder v2"
    assert doc["resolution"]["root_cause"] == "embedding model swapped"
    assert doc["resolution"]["fix_applied"] == "pinned embedder v2"


async def test_not_helpful_records_feedback_on_the_chosen_suggestion(agent) -> None:
    await suggested(agent)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("u")
        await pick(pilot, "CASE-1-S1")
        await type_text(pilot, "the model did not change")
        shown = await confirm(pilot)
        assert "note: the model did not change" in shown
        said = await outcome(pilot, "done")
        assert said == "done: CASE-1-S1 marked not helpful on CASE-1"
        assert said in visible(app)

    event = last_event(await stored(agent))
    assert event == {
        "at": event["at"],
        "type": "feedback",
        "suggestion_id": "CASE-1-S1",
        "helpful": False,
        "actor": ACTOR,
        "note": "the model did not change",
    }


async def test_a_note_goes_into_the_timeline(agent) -> None:
    await open_case(agent, suggestions=False)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        assert "n Note" in footer(app)
        await pilot.press("n")
        await type_text(pilot, "paged the retrieval team")
        await confirm(pilot)
        assert await outcome(pilot, "done") == "done: note added to the timeline of CASE-1"

    event = last_event(await stored(agent))
    assert (event["type"], event["actor"], event["text"]) == (
        "note",
        ACTOR,
        "paged the retrieval team",
    )


async def test_closing_as_duplicate_names_the_other_case(agent) -> None:
    await open_case(agent, suggestions=False)
    await open_case(agent, suggestions=False, service="billing")
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot, "CASE-2")
        await pilot.press("x")
        await pick(pilot, "duplicate")
        asked = await type_text(pilot, "CASE-2")
        assert asked.problem == "CASE-2 cannot duplicate itself"
        await pilot.press(*["backspace"] * 6, *"yesterday's", "enter")
        assert asked.problem == '"yesterday\'s" is not a case id such as CASE-12'
        await pilot.press(*["backspace"] * 11, *"case-1", "enter")
        shown = await confirm(pilot)
        assert "reason: duplicate" in shown and "duplicate of: CASE-1" in shown
        said = await outcome(pilot, "done")
        assert said == "done: CASE-2 is CLOSED now (duplicate of CASE-1)"
        await shows_state(pilot, "CLOSED")

    doc = await stored(agent, "CASE-2")
    assert doc["state"] == "CLOSED"
    assert doc["closed"] == {"reason": "duplicate", "duplicate_of": "CASE-1"}
    assert (await stored(agent, "CASE-1"))["state"] == "DETECTED"


# Refusals, failures and second thoughts


async def test_a_refused_transition_shows_the_agents_reason_and_changes_nothing(
    agent,
) -> None:
    await open_case(agent)
    before = await stored(agent)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("a")
        await pick(pilot, "CASE-1-S1")
        await confirm(pilot)
        said = await outcome(pilot, "refused")
        # lifecycle: DETECTED may move to TRIAGED or CLOSED only.
        assert said == (
            "refused: the agent refused it: 409 Conflict: a case in DETECTED cannot move to "
            "FIX_APPLIED; it can move to TRIAGED, CLOSED"
        )
        assert said in visible(app)
        assert "state DETECTED" in visible(app)

    assert await stored(agent) == before


async def test_cancelling_any_dialog_sends_nothing(agent) -> None:
    await open_case(agent)
    before = await stored(agent)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        screen = await case_screen(pilot)
        for keys, step in [
            ("t", ChoiceDialog),  # severity
            ("n", TextDialog),  # the note
            ("x", ChoiceDialog),  # the reason
            ("i", ConfirmDialog),  # the confirmation
        ]:
            await pilot.press(keys)
            await dialog(pilot, step)
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is screen, "the case screen again")
            assert await outcome(pilot, "cancelled") == (
                "cancelled: nothing was sent to the agent"
            )
            screen.say("done", "")  # the next cancellation has to say so again

        await pilot.press("t")
        await pick(pilot, "low")
        await type_text(pilot, "ana")
        await dialog(pilot, ConfirmDialog)
        await pilot.press("n")
        await outcome(pilot, "cancelled")

    assert await stored(agent) == before


async def test_hostile_text_is_refused_in_the_dialog_with_the_reason(agent) -> None:
    await suggested(agent)
    before = await stored(agent)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("f")
        asked = await type_text(pilot, "")
        assert asked.problem == "root cause cannot be empty"
        await type_text(pilot, "   ")
        assert asked.problem == "root cause cannot be empty"
        await paste(pilot, "x" * 10_000)
        # routes.py: root_cause takes at most 200 characters.
        assert asked.problem == (
            "root cause is 10,000 characters long; the agent takes at most 200"
        )
        assert asked.problem in visible(app)
        await paste(pilot, "timeout\x1b[2J\x07")
        assert asked.problem == (
            "root cause has a control character (U+001B) at position 8; "
            "only printable text can be sent"
        )
        assert app.screen is asked
        await pilot.press("escape")

        await pilot.press("n")
        noted = await paste(pilot, "y" * 10_001)
        assert noted.problem == "note is 10,001 characters long; the agent takes at most 10,000"
        await pilot.press("escape")
        await outcome(pilot, "cancelled")
    assert await stored(agent) == before


async def test_a_note_of_the_longest_allowed_length_is_sent_whole(agent) -> None:
    await open_case(agent, suggestions=False)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("n")
        await paste(pilot, "z" * 10_000)
        shown = await confirm(pilot)
        assert "(10,000 characters)" in shown
        await outcome(pilot, "done")
    assert last_event(await stored(agent))["text"] == "z" * 10_000


async def test_an_actor_with_control_characters_is_not_sent(agent, monkeypatch) -> None:
    monkeypatch.setenv("PROVEAI_ACTOR", "eve\x1b]0;owned\x07")
    await open_case(agent, suggestions=False)
    before = await stored(agent)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("n")
        said = await outcome(pilot, "refused")
        assert "control character (U+001B)" in said and "nothing was sent" in said
        assert not isinstance(app.screen, TextDialog)
    assert await stored(agent) == before


# Tickets, against a local server that answers as GitHub and Jira do


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("github", "done: github issue #1 opened: https://github.com/acme/rag-app/issues/1"),
        ("jira", "done: jira issue RAG-1 opened: {base}/jira/browse/RAG-1"),
    ],
)
async def test_a_ticket_is_opened_from_the_case_screen(
    agent_factory, tracker: FakeTracker, system: str, expected: str
) -> None:
    config = github_config(tracker) if system == "github" else jira_config(tracker)
    agent = await agent_factory(tickets=config)
    await open_case(agent, suggestions=False)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("o")
        await pick(pilot, system)
        shown = await confirm(pilot)
        assert f"CASE-1: open a {system} issue, by dana" in shown
        said = await outcome(pilot, "done")
        assert said == expected.format(base=tracker.base)

    assert tracker.problems == []
    assert len(tracker.requests) == 1
    doc = await stored(agent)
    url = expected.format(base=tracker.base).split("opened: ", 1)[1]
    assert [(t["system"], t["url"]) for t in doc["tickets"]] == [(system, url)]


async def test_a_failing_ticket_server_shows_its_reason(
    agent_factory, tracker: FakeTracker
) -> None:
    agent = await agent_factory(tickets=github_config(tracker, github_token="revoked"))
    await open_case(agent, suggestions=False)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("o")
        await pick(pilot, "github")
        await confirm(pilot)
        said = await outcome(pilot, "refused")
        url = f"{tracker.base}/repos/acme/rag-app/issues"
        assert said == (
            "refused: the agent failed it: 502 Bad Gateway: "
            f"github: HTTP 401 from {url}: Bad credentials"
        )
        assert "Bad credentials" in visible(app)

    doc = await stored(agent)
    assert doc.get("tickets", []) == []
    assert last_event(doc)["type"] == "ticket_failed"


# Read-only


async def test_read_only_has_no_action_in_footer_help_or_keys(agent) -> None:
    await suggested(agent)
    before = await stored(agent)
    app = console(agent, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        screen = await case_screen(pilot)
        for binding in ACTION_BINDINGS:
            assert f"{binding.key} {binding.description}" not in footer(app)
        for binding in ACTION_BINDINGS:
            await pilot.press(binding.key)
            await pilot.pause(0.1)
            assert app.screen is screen, f"{binding.key} opened {app.screen!r}"
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys screen")
        keys = app.screen.query_one("#help-text", QuietStatic).plain
        assert "case.back" in keys
        for binding in ACTION_BINDINGS:
            assert binding.id not in keys
    assert await stored(agent) == before


async def test_help_lists_every_action_with_its_id_when_not_read_only(agent) -> None:
    await open_case(agent)
    app = console(agent)
    async with app.run_test(size=SIZE) as pilot:
        await case_screen(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys screen")
        keys = app.screen.query_one("#help-text", QuietStatic).plain
        for binding in ACTION_BINDINGS:
            assert f"  {binding.key}  {binding.tooltip}  {binding.id}" in keys


def test_read_only_comes_from_the_command_line() -> None:
    assert parse_args(["--read-only"]).read_only is True
    assert parse_args([]).read_only is False
