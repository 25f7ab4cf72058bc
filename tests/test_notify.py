"""Case notifications, against local servers that check Alertmanager v2 and webhook requests."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web

from proveai_agent.notify import Notifier, NotifyConfig

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
CASE_URL = "http://agent.example:8470/api/cases"


class FakeReceiver:
    """Alertmanager's `POST /api/v2/alerts` and a webhook at `POST /hook` on one port.

    Alerts are checked against the v2 API's postableAlerts schema: a list of objects with
    `labels` (required) and `annotations` mapping strings to strings, RFC 3339 `startsAt`
    and `endsAt`, and a string `generatorURL`; a departure is recorded in `problems` and
    answered 400, as Alertmanager does. `statuses` queues answers before the normal 200;
    `hang` makes the alerts endpoint wait until the test ends.
    """

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.hooks: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.statuses: list[int] = []
        self.hang = False
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v2/alerts", self.post_alerts)
        app.router.add_post("/hook", self.post_hook)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _record(self, request: web.Request, into: list[dict[str, Any]]) -> Any:
        entry: dict[str, Any] = {"headers": dict(request.headers), "json": None}
        into.append(entry)
        if request.content_type != "application/json":
            self.problems.append(f"content type {request.content_type}")
            return None
        try:
            entry["json"] = await request.json()
        except ValueError:
            self.problems.append("not JSON")
        return entry["json"]

    async def post_alerts(self, request: web.Request) -> web.Response:
        body = await self._record(request, self.alerts)
        if self.hang:
            await self.release.wait()
        if self.statuses:
            return web.Response(status=self.statuses.pop(0), text="scripted failure")
        problem = alerts_problem(body)
        if problem:
            self.problems.append(problem)
            return web.json_response(problem, status=400)
        return web.Response(status=200)

    async def post_hook(self, request: web.Request) -> web.Response:
        await self._record(request, self.hooks)
        return web.Response(status=204)


def alerts_problem(body: Any) -> str | None:
    """What is wrong with a postableAlerts body, or None."""
    if not isinstance(body, list):
        return "the body must be a list of alerts"
    for alert in body:
        if not isinstance(alert, dict):
            return "an alert must be an object"
        unknown = set(alert) - {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
        if unknown:
            return f"unknown fields {sorted(unknown)}"
        for key in ("labels", "annotations"):
            value = alert.get(key, {})
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                return f"{key} must map strings to strings"
            if not all(LABEL_NAME.match(name) for name in value):
                return f"invalid {key} name in {sorted(value)}"
        if not alert.get("labels"):
            return "labels are required"
        for key in ("startsAt", "endsAt"):
            if key in alert and not (isinstance(alert[key], str) and RFC3339.match(alert[key])):
                return f"{key} is not an RFC 3339 date-time: {alert[key]!r}"
        if "generatorURL" in alert and not isinstance(alert["generatorURL"], str):
            return "generatorURL must be a string"
    return None


@pytest.fixture
async def receiver() -> AsyncIterator[FakeReceiver]:
    server = FakeReceiver()
    await server.start()
    yield server
    await server.stop()


@contextmanager
def running(notifier: Notifier) -> Iterator[asyncio.Task[None]]:
    task = asyncio.create_task(notifier.run())
    try:
        yield task
    finally:
        task.cancel()


def a_case(**overrides: Any) -> dict[str, Any]:
    case: dict[str, Any] = {
        "id": "CASE-3",
        "title": "Retrieval drift in rag-api",
        "state": "INVESTIGATING",
        "severity": "high",
        "advisory": False,
        "service": "rag-api",
        "opened_at": "2025-01-02T03:00:00.000Z",
        "updated_at": "2025-01-02T03:05:00.000Z",
        "trigger": "quality_drop",
        "failure_class": "RETRIEVAL_DRIFT",
        "class_scores": {"RETRIEVAL_DRIFT": 0.82},
        "signals": [{"kind": "score_drop"}, {"kind": "latency_regression"}],
        "context_snapshot": {"prompts": [{"text": "PROMPT-SECRET"}]},
        "recent_changes": [],
        "hypotheses": [
            {
                "cause_id": "prompt",
                "hypothesis": "The prompt template changed",
                "confidence": 0.2,
            },
            {
                "cause_id": "embedding_model_changed",
                "hypothesis": "The embedding model changed under the index",
                "confidence": 0.74,
            },
        ],
        "remediation_suggestions": [
            {"id": "CASE-3-S1", "action": "Roll back the embedding model", "effort": "medium"}
        ],
        "narrative": "",
        "timeline": [],
        "resolution": None,
        "tickets": [],
    }
    case.update(overrides)
    return case


def config(**overrides: Any) -> NotifyConfig:
    values: dict[str, Any] = {"timeout_s": 2, "retries": 2, "backoff_s": 0.01}
    values.update(overrides)
    return NotifyConfig(**values)


def near_now(stamp: str) -> bool:
    return abs(datetime.fromisoformat(stamp).timestamp() - time.time()) < 10


async def test_an_opened_case_fires_one_alert_in_the_v2_shape(receiver: FakeReceiver) -> None:
    notifier = Notifier(config(alertmanager_url=receiver.base, case_url=CASE_URL))

    with running(notifier):
        notifier.notify("opened", a_case())
        assert await notifier.drain(5)

    assert receiver.problems == []
    [request] = receiver.alerts
    assert request["headers"]["Content-Type"].startswith("application/json")
    assert request["json"] == [
        {
            "labels": {
                "alertname": "ProveAICase",
                "case": "CASE-3",
                "service": "rag-api",
                "severity": "high",
                "failure_class": "RETRIEVAL_DRIFT",
                "event": "opened",
            },
            "annotations": {
                "summary": "CASE-3 opened: Retrieval drift in rag-api",
                "description": (
                    "Severity high; state INVESTIGATING; service rag-api; "
                    "class RETRIEVAL_DRIFT; leading hypothesis: "
                    "The embedding model changed under the index (confidence 0.74); "
                    "suggested: Roll back the embedding model."
                ),
                "case_url": "http://agent.example:8470/api/cases/CASE-3",
            },
            "startsAt": "2025-01-02T03:00:00.000Z",
            "generatorURL": "http://agent.example:8470/api/cases/CASE-3",
        }
    ]


async def test_resolved_ends_every_alert_the_case_fired(receiver: FakeReceiver) -> None:
    notifier = Notifier(config(alertmanager_url=receiver.base))

    with running(notifier):
        notifier.notify("opened", a_case(severity="medium"))
        notifier.notify("escalated", a_case(severity="high"))
        notifier.notify("resolved", a_case(severity="high", state="RESOLVED"))
        assert await notifier.drain(5)

    assert receiver.problems == []
    opened, escalated, resolved = (request["json"] for request in receiver.alerts)
    assert [a["labels"]["event"] for a in opened + escalated] == ["opened", "escalated"]
    assert "endsAt" not in opened[0] and "endsAt" not in escalated[0]
    assert escalated[0]["labels"]["severity"] == "high"
    assert near_now(escalated[0]["startsAt"])
    # The same label sets and start times as fired, now ended: Alertmanager clears them.
    assert [(a["labels"], a["startsAt"]) for a in resolved] == [
        (opened[0]["labels"], "2025-01-02T03:00:00.000Z"),
        (escalated[0]["labels"], escalated[0]["startsAt"]),
    ]
    assert all(near_now(a["endsAt"]) for a in resolved)
    assert (
        resolved[0]["annotations"]["summary"] == "CASE-3 resolved: Retrieval drift in rag-api"
    )


async def test_resolved_without_a_fired_alert_ends_the_opened_one(
    receiver: FakeReceiver,
) -> None:
    notifier = Notifier(config(alertmanager_url=receiver.base))

    with running(notifier):
        notifier.notify("resolved", a_case())
        assert await notifier.drain(5)

    [alert] = receiver.alerts[0]["json"]
    assert alert["labels"]["event"] == "opened"
    assert alert["startsAt"] == "2025-01-02T03:00:00.000Z"
    assert near_now(alert["endsAt"])


async def test_the_webhook_gets_the_event_and_the_case_summary(receiver: FakeReceiver) -> None:
    notifier = Notifier(
        config(webhook_url=f"{receiver.base}/hook", webhook_authorization="Bearer hook-secret")
    )

    with running(notifier):
        notifier.notify("verification_failed", a_case())
        assert await notifier.drain(5)

    [request] = receiver.hooks
    assert request["headers"]["Authorization"] == "Bearer hook-secret"
    assert request["headers"]["Content-Type"].startswith("application/json")
    assert request["json"] == {
        "event": "verification_failed",
        "case": {
            "id": "CASE-3",
            "title": "Retrieval drift in rag-api",
            "state": "INVESTIGATING",
            "severity": "high",
            "advisory": False,
            "service": "rag-api",
            "trigger": "quality_drop",
            "failure_class": "RETRIEVAL_DRIFT",
            "opened_at": "2025-01-02T03:00:00.000Z",
            "updated_at": "2025-01-02T03:05:00.000Z",
            "signals": 2,
            "top_confidence": 0.74,
        },
    }


async def test_5xx_answers_are_retried_until_delivered(receiver: FakeReceiver) -> None:
    receiver.statuses = [500, 503]
    notifier = Notifier(config(alertmanager_url=receiver.base, retries=3))

    with running(notifier):
        notifier.notify("opened", a_case())
        assert await notifier.drain(5)

    assert len(receiver.alerts) == 3
    assert receiver.problems == []


async def test_a_4xx_answer_is_not_retried_and_is_logged(
    receiver: FakeReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [400]
    notifier = Notifier(config(alertmanager_url=receiver.base, retries=3))

    with caplog.at_level(logging.WARNING, "proveai_agent.notify"), running(notifier):
        notifier.notify("opened", a_case())
        assert await notifier.drain(5)

    assert len(receiver.alerts) == 1
    assert f"{receiver.base}/api/v2/alerts" in caplog.text
    assert "HTTP 400" in caplog.text


async def test_a_receiver_that_never_answers_blocks_neither_notify_nor_the_webhook(
    receiver: FakeReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.hang = True
    notifier = Notifier(
        config(
            alertmanager_url=f"http://am-user:am-password@127.0.0.1:{receiver.port}",
            webhook_url=f"{receiver.base}/hook?token=query-secret",
            timeout_s=0.3,
            retries=1,
        )
    )

    with caplog.at_level(logging.WARNING, "proveai_agent.notify"), running(notifier):
        started = time.monotonic()
        for _ in range(3):
            notifier.notify("opened", a_case())
        assert time.monotonic() - started < 0.1
        await asyncio.sleep(0.2)
        assert len(receiver.hooks) == 3  # while Alertmanager is still hanging
        assert await notifier.drain(10)

    assert len(receiver.alerts) == 6  # three messages, each tried twice
    assert f"not delivered to {receiver.base}/api/v2/alerts: no answer" in caplog.text
    assert "am-password" not in caplog.text and "am-user" not in caplog.text


async def test_a_full_queue_drops_the_oldest_message(
    receiver: FakeReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(config(alertmanager_url=receiver.base, queue_size=2))

    with caplog.at_level(logging.WARNING, "proveai_agent.notify"):
        for number in range(1, 5):
            notifier.notify("opened", a_case(id=f"CASE-{number}"))
    with running(notifier):
        assert await notifier.drain(5)

    assert [r["json"][0]["labels"]["case"] for r in receiver.alerts] == ["CASE-3", "CASE-4"]
    assert caplog.text.count("queue full") == 2
    assert "CASE-1" in caplog.text and "CASE-2" in caplog.text


def test_notify_never_raises_to_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(config(alertmanager_url="http://127.0.0.1:9", webhook_url="http://x/"))

    with caplog.at_level(logging.WARNING, "proveai_agent.notify"):
        notifier.notify("opened", {})
        notifier.notify("exploded", a_case())

    assert all(r.queue.empty() for r in notifier.receivers)
    assert caplog.text.count("not queued") == 2


def test_nothing_configured_sends_nothing() -> None:
    notifier = Notifier(NotifyConfig())

    notifier.notify("opened", a_case())

    assert notifier.receivers == []
