"""The Cases screen follows the agent's live stream: new cases, changed ones, ended ones.

The console's safety-net poll is a minute here and nothing presses `r`, so whatever the
table shows within a few seconds came over the stream.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import pytest

from agentfix import OPERATOR_KEY, READ_KEY
from consolefix import until as wait_until
from proveai_agent.signals import Signal
from proveai_tui.app import ConsoleApp
from proveai_tui.client import AgentClient
from proveai_tui.feed import StreamSource
from proveai_tui.screens.cases import CasesScreen
from proveai_tui.widgets.case_table import CaseTable

pytestmark = pytest.mark.console

SIZE = (80, 24)
WITHIN_S = 5.0


until = partial(wait_until, timeout_s=WITHIN_S)
"""Waits at most WITHIN_S seconds for a state of the console."""


def signal(service: str, at: float) -> Signal:
    return Signal(
        kind="error_spike",
        failure_class="ERROR_SPIKE",
        trigger="anomaly_detection",
        service=service,
        span_name="POST /ask",
        at=at,
        severity="high",
        summary=f"error ratio 0.31 on {service} against 0.01 before",
    )


def listed(app: ConsoleApp) -> list[str]:
    return app.screen.query_one(CaseTable).case_ids


async def transition(http: Any, agent: Any, case_id: str, **body: Any) -> None:
    async with http.post(
        f"{agent.url}/api/cases/{case_id}/transition",
        json={"actor": "ana", **body},
        headers={"X-API-Key": OPERATOR_KEY},
    ) as response:
        assert response.status == 200, await response.text()


async def test_the_filtered_case_list_follows_the_stream(agent: Any, http: Any) -> None:
    now = time.time() - 7200  # past: an update dated before its case would be ignored
    first = await agent.case_service.on_signal(signal("billing", now))
    await agent.case_service.on_signal(signal("search", now))
    client = AgentClient(agent.url, READ_KEY)
    app = ConsoleApp(client, StreamSource(client, poll_s=60.0))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, CasesScreen), "the cases screen")
        await until(pilot, lambda: len(listed(app)) == 2, "both open cases")
        await pilot.press("slash", *"service:billing", "enter")
        await until(pilot, lambda: listed(app) == [first["id"]], "the billing case alone")

        # A new case of the filtered service comes in on top; one of another does not.
        other = await agent.case_service.on_signal(signal("search", now + 3600))
        second = await agent.case_service.on_signal(signal("billing", now + 3600))
        await until(pilot, lambda: listed(app) == [second["id"], first["id"]], "the new case")
        assert other["id"] not in listed(app)

        # A change of state shows in its row; a case that ends leaves the open list.
        await transition(http, agent, first["id"], to="TRIAGED", severity="critical")
        table = app.screen.query_one(CaseTable)
        await until(
            pilot,
            lambda: any(c["state"] == "TRIAGED" for c in table.cases if c["id"] == first["id"]),
            "the triaged state",
        )
        await transition(http, agent, second["id"], to="CLOSED", reason="false_positive")
        await until(pilot, lambda: listed(app) == [first["id"]], "the closed case to leave")
        assert "1" in str(app.screen.query_one("#cases-list-heading").render())


async def test_free_text_is_left_to_the_agent(agent: Any) -> None:
    now = time.time() - 7200  # past: an update dated before its case would be ignored
    await agent.case_service.on_signal(signal("billing", now))
    client = AgentClient(agent.url, READ_KEY)
    app = ConsoleApp(client, StreamSource(client, poll_s=60.0))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, CasesScreen), "the cases screen")
        await until(pilot, lambda: len(listed(app)) == 1, "the open case")
        await pilot.press("slash", *"error", "enter")
        await until(pilot, lambda: len(listed(app)) == 1, "the text filter's answer")
        # Its title would match, but only the agent matches text: it waits for a read.
        new = await agent.case_service.on_signal(signal("search", now + 3600))
        await pilot.pause(2.0)
        assert new["id"] not in listed(app)
        await pilot.press("r")
        await until(pilot, lambda: new["id"] in listed(app), "the new case after a read")
