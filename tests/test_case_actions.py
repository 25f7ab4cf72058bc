"""Tickets and notifications from a live agent, against local stand-ins for GitHub and a
webhook receiver that answer as the real services document."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agentfix import OPERATOR_KEY
from proveai_agent.notify import NotifyConfig
from proveai_agent.signals import Signal
from proveai_agent.tickets import TicketConfig


class Remote:
    """A GitHub issues endpoint and a webhook on one local server, recording what came."""

    def __init__(self) -> None:
        self.issues: list[dict[str, Any]] = []
        self.hooks: list[dict[str, Any]] = []
        self.refuse = False
        self.url = ""

    async def issue(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer gh-token" or self.refuse:
            return web.json_response({"message": "Bad credentials"}, status=401)
        body = await request.json()
        self.issues.append(body)
        number = len(self.issues)
        return web.json_response(
            {"number": number, "html_url": f"https://github.example.com/o/r/issues/{number}"},
            status=201,
        )

    async def hook(self, request: web.Request) -> web.Response:
        self.hooks.append(await request.json())
        return web.Response(status=204)


@pytest.fixture
async def remote() -> AsyncIterator[Remote]:
    state = Remote()
    app = web.Application()
    app.router.add_post("/api/v3/repos/o/r/issues", state.issue)
    app.router.add_post("/hook", state.hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


def signal() -> Signal:
    return Signal(
        kind="latency_regression",
        failure_class="LATENCY_REGRESS",
        trigger="anomaly_detection",
        service="rag-api",
        span_name="chat",
        at=time.time(),
        severity="high",
        summary="p95 4 s against 1 s",
    )


async def test_a_ticket_is_created_and_linked_on_the_case(agent_factory, http, remote) -> None:
    tickets = TicketConfig(
        github_url=f"{remote.url}/api/v3", github_repo="o/r", github_token="gh-token", retries=0
    )
    agent = await agent_factory(tickets=tickets)
    await agent.case_service.on_signal(signal())
    async with http.post(
        f"{agent.url}/api/cases/CASE-1/ticket",
        json={"system": "github", "actor": "ana"},
        headers={"X-API-Key": OPERATOR_KEY},
    ) as response:
        assert response.status == 201
        made = await response.json()
    assert made["url"] == "https://github.example.com/o/r/issues/1"
    assert remote.issues[0]["title"].startswith("[CASE-1] ")
    doc = await agent.case_store.get(1)
    assert doc["tickets"][0]["url"] == made["url"]
    assert doc["timeline"][-1]["type"] == "ticket"
    actions = [r["action"] for r in await agent.audit.store.records()]
    assert actions[-1] == "case.ticket"


async def test_a_refused_ticket_is_reported_and_loses_nothing(agent_factory, http, remote):
    tickets = TicketConfig(
        github_url=f"{remote.url}/api/v3", github_repo="o/r", github_token="wrong", retries=0
    )
    agent = await agent_factory(tickets=tickets)
    await agent.case_service.on_signal(signal())
    async with http.post(
        f"{agent.url}/api/cases/CASE-1/ticket",
        json={"system": "github", "actor": "ana"},
        headers={"X-API-Key": OPERATOR_KEY},
    ) as response:
        assert response.status == 502
        assert "Bad credentials" in (await response.json())["error"]
    doc = await agent.case_store.get(1)
    assert doc["state"] == "DETECTED" and doc["tickets"] == []
    assert doc["timeline"][-1]["type"] == "ticket_failed"
    for bad in ({"system": "trello", "actor": "ana"}, {"system": "github"}):
        async with http.post(
            f"{agent.url}/api/cases/CASE-1/ticket",
            json=bad,
            headers={"X-API-Key": OPERATOR_KEY},
        ) as response:
            assert response.status == 400


async def test_a_ticket_without_a_configured_tracker_is_409_and_changes_nothing(
    agent_factory, http
) -> None:
    agent = await agent_factory(tickets=TicketConfig(jira_url="https://jira.example.com"))
    await agent.case_service.on_signal(signal())
    before = await agent.case_store.get(1)
    expected = {
        "github": ("github_repo", "github_token", "[tickets]"),
        "jira": ("jira_project", "jira_token", "[tickets]"),
    }
    for system, settings in expected.items():
        async with http.post(
            f"{agent.url}/api/cases/CASE-1/ticket",
            json={"system": system, "actor": "ana"},
            headers={"X-API-Key": OPERATOR_KEY},
        ) as response:
            assert response.status == 409, system
            message = (await response.json())["error"]
        assert all(name in message for name in settings), message
    # Nothing was attempted, so the case and its timeline are as they were.
    assert await agent.case_store.get(1) == before


async def test_a_case_opening_is_sent_to_the_webhook(agent_factory, remote) -> None:
    agent = await agent_factory(notify=NotifyConfig(webhook_url=f"{remote.url}/hook"))
    await agent.case_service.on_signal(signal())
    assert await agent.notifier.drain(10)
    (hook,) = remote.hooks
    assert hook["event"] == "opened"
    assert hook["case"]["id"] == "CASE-1"
