"""The console's live stream against the real agent: pushed cases, coalescing, restarts.

The console reads the whole state once per connection, then follows the agent's websocket.
Its safety-net poll is set to a minute here, so anything that shows up within a few seconds
came over the stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentfix import OPERATOR_KEY, READ_KEY, agent_config
from consolefix import screen_text, status_text
from consolefix import until as wait_until
from proveai_agent.agent import Agent
from proveai_agent.signals import Signal
from proveai_agent.stack.native import free_port
from proveai_tui.app import ConsoleApp, parse_args
from proveai_tui.client import AgentClient
from proveai_tui.feed import COALESCE_S, Snapshot, StreamSource
from proveai_tui.screens.case import CaseScreen
from proveai_tui.widgets.case_header import CaseHeader
from proveai_tui.widgets.case_table import CaseTable
from stackfix import VMHandle

pytestmark = pytest.mark.console

SIZE = (80, 24)
SLOW_POLL_S = 60.0
PUSHED_WITHIN_S = 3.0


until = partial(wait_until, timeout_s=5.0)
"""Waits at most 5.0 s for a state of the console."""


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
        evidence={"current": 0.31, "baseline_median": 0.01},
    )


def summary(number: int, state: str = "DETECTED", updated_at: str = "") -> dict[str, Any]:
    """A case as the agent's "case" messages and its case list carry it."""
    stamp = updated_at or f"2030-01-01T00:00:{number % 60:02d}.000Z"
    return {
        "id": f"CASE-{number}",
        "title": f"Error spike on svc-{number}",
        "state": state,
        "severity": "high",
        "advisory": False,
        "service": f"svc-{number}",
        "trigger": "anomaly_detection",
        "failure_class": "ERROR_SPIKE",
        "opened_at": stamp,
        "updated_at": stamp,
        "signals": 1,
        "top_confidence": None,
    }


@dataclass
class Restartable:
    """One agent address that can be stopped and started again on the same port and data."""

    port: int
    data_dir: Path
    agent: Agent | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Agent:
        assert self.agent is None
        agent = Agent(agent_config(self.data_dir, listen=f"127.0.0.1:{self.port}"))
        await agent.start()
        self.agent = agent
        return agent

    async def stop(self) -> None:
        agent, self.agent = self.agent, None
        assert agent is not None
        await agent.stop()


@pytest.fixture
async def restartable(tmp_path: Path) -> AsyncIterator[Restartable]:
    """A running agent on a port of its own; whichever runs at the end is stopped."""
    handle = Restartable(free_port(), tmp_path / "agent")
    await handle.start()
    try:
        yield handle
    finally:
        if handle.agent is not None:
            await handle.stop()


def console(url: str) -> tuple[ConsoleApp, StreamSource]:
    client = AgentClient(url, OPERATOR_KEY, timeout_s=1.0)
    source = StreamSource(client, poll_s=SLOW_POLL_S)
    return ConsoleApp(client, source), source


def connected(app: ConsoleApp) -> bool:
    return app.link is not None and app.link.state == "connected"


def table(app: ConsoleApp) -> CaseTable:
    return app.overview_screen.query_one(CaseTable)


def row_text(app: ConsoleApp, case_id: str) -> str:
    cases = table(app)
    row = cases.get_row_at(cases.case_ids.index(case_id))
    return " ".join(getattr(cell, "plain", str(cell)) for cell in row)


async def subscribed(agent: Agent, count: int = 1, timeout_s: float = 5.0) -> None:
    """Wait until the agent's hub has `count` subscribers, i.e. a stream is open."""
    deadline = time.monotonic() + timeout_s
    while len(agent.hub) < count:
        assert time.monotonic() < deadline, "no stream opened"
        await asyncio.sleep(0.02)


async def transition(url: str, case_id: str, to: str) -> dict[str, Any]:
    body = {"to": to, "actor": "alice"}
    async with (
        aiohttp.ClientSession(headers={"X-API-Key": OPERATOR_KEY}) as http,
        http.post(f"{url}/api/cases/{case_id}/transition", json=body) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


# The agent's side


@pytest.mark.integration
async def test_the_agent_pushes_the_15m_overview_after_a_watch_cycle_to_subscribers(
    tmp_path: Path, vm: VMHandle
) -> None:
    agent = Agent(
        agent_config(tmp_path / "agent", victoriametrics_url=vm.url, listen="127.0.0.1:0")
    )
    await agent.start()
    computed: list[int] = []
    real_overview = agent.overview

    async def counting(range_s: int) -> dict[str, Any]:
        computed.append(range_s)
        return await real_overview(range_s)

    agent.overview = counting  # type: ignore[method-assign]
    try:
        await agent.watch_once(time.time())
        assert computed == [], "the overview was computed with nobody subscribed"

        headers = {"X-API-Key": READ_KEY}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.ws_connect(f"{agent.url}/api/stream") as socket,
        ):
            await subscribed(agent)
            await agent.watch_once(time.time())
            message = await socket.receive_json(timeout=5)
            async with http.get(f"{agent.url}/api/overview?range=15m") as response:
                assert response.status == 200
                served = await response.json()
    finally:
        await agent.stop()

    assert computed[0] == 900
    assert message["type"] == "overview"
    pushed = message["data"]
    assert pushed["sources"]["victoriametrics"]["up"] is True
    assert pushed["sources"]["prometheus"] == {"up": False, "error": "not configured"}
    assert pushed == served


# The console's side, in the pilot


async def test_a_case_opened_in_the_agent_appears_without_a_poll_and_follows_transitions(
    restartable: Restartable,
) -> None:
    agent = restartable.agent
    assert agent is not None
    app, _ = console(restartable.url)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app), "connected")
        await subscribed(agent)
        assert table(app).case_ids == []

        doc = await agent.case_service.on_signal(signal("shop-api", time.time()))
        case_id = doc["id"]
        await until(
            pilot,
            lambda: table(app).case_ids == [case_id],
            "the pushed case",
            timeout_s=PUSHED_WITHIN_S,
        )
        assert "DETECTED" in row_text(app, case_id)
        assert "shop-api" in row_text(app, case_id)

        await transition(restartable.url, case_id, "TRIAGED")
        await until(
            pilot,
            lambda: "TRIAGED" in row_text(app, case_id),
            "triaged",
            timeout_s=PUSHED_WITHIN_S,
        )

        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CaseScreen), "the case screen")
        screen = app.screen
        assert isinstance(screen, CaseScreen)
        await until(pilot, lambda: screen.case is not None, "the case to load")

        await transition(restartable.url, case_id, "INVESTIGATING")
        header = screen.query_one(CaseHeader)
        await until(
            pilot,
            lambda: "state INVESTIGATING" in header.plain,
            "the case screen to follow the transition",
            timeout_s=PUSHED_WITHIN_S,
        )


async def test_an_agent_restart_shows_disconnected_keeps_the_case_screen_and_reconnects(
    restartable: Restartable,
) -> None:
    agent = restartable.agent
    assert agent is not None
    doc = await agent.case_service.on_signal(signal("shop-api", time.time()))
    case_id = doc["id"]
    app, _ = console(restartable.url)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: table(app).case_ids == [case_id], "the case list")
        await until(pilot, lambda: connected(app), "connected")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CaseScreen), "the case screen")
        screen = app.screen
        assert isinstance(screen, CaseScreen)
        await until(pilot, lambda: screen.case is not None, "the case to load")
        header = screen.query_one(CaseHeader)
        assert "state DETECTED" in header.plain

        stopping = datetime.now(UTC)
        await restartable.stop()
        await until(
            pilot, lambda: "disconnected — retrying" in status_text(app), "disconnected"
        )
        assert app.screen is screen
        assert app.last_data is not None and app.last_data >= stopping, "data held until lost"
        assert "state DETECTED" in header.plain
        assert "last data " in status_text(app)
        assert "since " in status_text(app)
        await until(
            pilot,
            lambda: f"cannot reach {restartable.url}: connection refused" in status_text(app),
            "the reason after a failed reconnection",
        )
        await until(pilot, lambda: "disconnected — retrying" in screen_text(app), "the words")

        agent = await restartable.start()
        await until(pilot, lambda: connected(app), "connected again", timeout_s=10.0)
        await subscribed(agent)
        assert app.screen is screen
        assert "disconnected" not in status_text(app)

        second = await agent.case_service.on_signal(signal("shop-retriever", time.time()))
        await until(
            pilot,
            lambda: table(app).case_ids == [second["id"], case_id],
            "a case pushed by the restarted agent",
            timeout_s=PUSHED_WITHIN_S,
        )
        assert app.screen is screen


# The stream source on its own, against the real agent


class Recorder:
    """A deliver function that keeps what it was given and when."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[float, Snapshot]] = []

    def __call__(self, snapshot: Snapshot) -> None:
        self.snapshots.append((time.monotonic(), snapshot))

    @property
    def last_cases(self) -> list[dict[str, Any]] | None:
        for _, snapshot in reversed(self.snapshots):
            if snapshot.cases is not None:
                return snapshot.cases
        return None


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def following(
    restartable: Restartable,
) -> AsyncIterator[tuple[Agent, StreamSource, Recorder]]:
    """A stream source following the agent, its deliveries recorded; stopped at the end."""
    agent = restartable.agent
    assert agent is not None
    client = AgentClient(restartable.url, READ_KEY, timeout_s=1.0)
    source = StreamSource(client, poll_s=SLOW_POLL_S)
    recorder = Recorder()
    task = asyncio.create_task(source.run(recorder))
    try:
        await eventually(lambda: recorder.last_cases == [], "the first full read")
        await subscribed(agent)
        yield agent, source, recorder
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_a_storm_of_200_case_messages_is_a_handful_of_deliveries(
    following: tuple[Agent, StreamSource, Recorder],
) -> None:
    agent, _, recorder = following
    before = len(recorder.snapshots)

    for number in range(1, 201):
        agent.hub.publish("case", summary(number))
    await eventually(
        lambda: len(recorder.last_cases or []) == 200, "all 200 cases delivered", 5.0
    )
    await asyncio.sleep(3 * COALESCE_S)

    storm = recorder.snapshots[before:]
    assert 1 <= len(storm) <= 5, f"{len(storm)} deliveries for 200 messages"
    times = [at for at, _ in storm]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= COALESCE_S * 0.9 for gap in gaps), gaps
    assert [case["id"] for case in recorder.last_cases or []] == [
        f"CASE-{n}" for n in range(200, 0, -1)
    ]
    assert all(snapshot.error is None for _, snapshot in storm)


async def test_a_case_leaves_the_list_when_no_longer_open_and_old_updates_are_ignored(
    following: tuple[Agent, StreamSource, Recorder],
) -> None:
    agent, _, recorder = following

    agent.hub.publish("case", summary(1, updated_at="2030-01-01T00:00:10.000Z"))
    agent.hub.publish("case", summary(2, updated_at="2030-01-01T00:00:10.000Z"))
    await eventually(lambda: len(recorder.last_cases or []) == 2, "two cases")

    agent.hub.publish("case", summary(1, "TRIAGED", updated_at="2030-01-01T00:00:20.000Z"))
    agent.hub.publish("case", summary(1, "DETECTED", updated_at="2030-01-01T00:00:15.000Z"))
    agent.hub.publish("case", summary(2, "RESOLVED", updated_at="2030-01-01T00:00:20.000Z"))
    await eventually(lambda: len(recorder.last_cases or []) == 1, "the resolved case gone")
    await asyncio.sleep(3 * COALESCE_S)
    assert [(c["id"], c["state"]) for c in recorder.last_cases or []] == [("CASE-1", "TRIAGED")]


async def test_malformed_stream_messages_are_ignored_with_a_log_line(
    following: tuple[Agent, StreamSource, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    agent, source, recorder = following
    caplog.set_level(logging.DEBUG, logger="proveai_tui.feed")
    bad: list[tuple[str, Any]] = [
        ("case", {"id": 7, "state": "DETECTED"}),
        ("case", {"title": "no id"}),
        ("case", {"id": "CASE-8", "state": ["DETECTED"]}),
        ("overview", {"services": "not a list"}),
        ("surprise", {"id": "CASE-9", "state": "DETECTED"}),
        ("case", {"id": "CASE-10", "state": "DETECTED", "title": "x" * (9 << 20)}),
    ]
    for kind, data in bad:
        agent.hub.publish(kind, data)
    agent.hub.publish("case", summary(11))
    await eventually(lambda: recorder.last_cases == [summary(11)], "the good message after")

    ignored = [r for r in caplog.records if r.getMessage().startswith("ignored")]
    assert len(ignored) == len(bad), [r.getMessage() for r in ignored]
    assert all(snapshot.error is None for _, snapshot in recorder.snapshots)

    before = len(ignored)
    for text in ("not json {", "[1, 2]", '{"type": "case", "data": [1]}', "[" * 100_000):
        source.apply_message(text)
    ignored = [r for r in caplog.records if r.getMessage().startswith("ignored")]
    assert len(ignored) == before + 4
    assert source.cases() == [summary(11)]


async def test_a_refused_key_on_the_stream_says_401_and_keeps_retrying(
    restartable: Restartable,
) -> None:
    client = AgentClient(restartable.url, "wrong-key", timeout_s=1.0)
    source = StreamSource(client, poll_s=SLOW_POLL_S)
    recorder = Recorder()
    task = asyncio.create_task(source.run(recorder))
    try:
        await eventually(lambda: len(recorder.snapshots) >= 2, "two tries")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    errors = [snapshot.error for _, snapshot in recorder.snapshots]
    assert all(error is not None and error.status == 401 for error in errors)
    assert errors[0] is not None
    assert errors[0].message.startswith("401 Unauthorized: invalid API key")
    first, second = (at for at, _ in recorder.snapshots[:2])
    assert second - first >= 0.5 * 0.9


def test_interval_sets_the_stream_sources_safety_net_poll() -> None:
    args = parse_args(["--agent", "http://127.0.0.1:9", "--interval", "45"])
    assert args.interval == 45.0
    assert parse_args(["--agent", "http://127.0.0.1:9"]).interval == 30.0


def test_stream_messages_are_plain_json_objects() -> None:
    """The wire format the source reads is the agent's: {"type": ..., "data": {...}}."""
    client = AgentClient("http://127.0.0.1:9")
    source = StreamSource(client)
    source.apply_message(json.dumps({"type": "case", "data": summary(3)}))
    source.apply_message(json.dumps({"type": "case", "data": summary(5)}))
    source.apply_message(json.dumps({"type": "case", "data": summary(4)}))
    assert [case["id"] for case in source.cases()] == ["CASE-5", "CASE-4", "CASE-3"]
