"""Deploy markers through `/api/changes`: recorded with their time, listed by service."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from agentfix import OPERATOR_KEY, READ_KEY

WRITE = {"X-API-Key": OPERATOR_KEY}
READ = {"X-API-Key": READ_KEY}


async def post(http, agent, body, headers=WRITE):
    async with http.post(f"{agent.url}/api/changes", json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_a_deploy_marker_is_recorded_and_listed(agent, http):
    status, change = await post(
        http,
        agent,
        {
            "service": "rag-api",
            "summary": "retriever 2.3.1",
            "version": "2.3.1",
            "time": "2027-01-15T08:00:00Z",
        },
    )
    assert status == 201
    # 2027-01-15T08:00:00Z is epoch 1800000000; the answer is in RFC 3339 again.
    assert change == {
        "id": 1,
        "at": "2027-01-15T08:00:00.000Z",
        "service": "rag-api",
        "kind": "deploy",
        "summary": "retriever 2.3.1",
        "after": "2.3.1",
        "source": "api",
    }
    async with http.get(f"{agent.url}/api/changes", headers=READ) as r:
        assert (await r.json())["items"] == [change]


async def test_changes_are_filtered_by_service_and_since(agent, http):
    for service, at in (
        ("rag-api", 1_800_000_000),
        ("rag-api", 1_800_000_600),
        ("research-agent", 1_800_000_300),
    ):
        status, _ = await post(http, agent, {"service": service, "summary": "x", "time": at})
        assert status == 201
    async with http.get(
        f"{agent.url}/api/changes?service=rag-api&since=1800000300", headers=READ
    ) as r:
        items = (await r.json())["items"]
    assert [(c["service"], c["at"]) for c in items] == [("rag-api", "2027-01-15T08:10:00.000Z")]
    async with http.get(
        f"{agent.url}/api/changes?since=2027-01-15T08:05:00%2B00:00", headers=READ
    ) as r:
        assert len((await r.json())["items"]) == 2


async def test_a_marker_without_a_time_is_recorded_now(agent, http):
    before = time.time()
    status, change = await post(http, agent, {"service": "s", "summary": "deploy"})
    assert status == 201
    at = datetime.fromisoformat(change["at"]).timestamp()
    assert before - 1 <= at <= time.time() + 1


async def test_a_change_pushes_a_message_on_the_stream(agent, http):
    async with http.ws_connect(f"{agent.url}/api/stream", headers=READ) as ws:
        for _ in range(100):  # the subscription is registered once the handler runs
            if len(agent.hub):
                break
            await asyncio.sleep(0.01)
        _, change = await post(http, agent, {"service": "s", "summary": "deploy"})
        message = await ws.receive_json(timeout=5)
    assert message == {"type": "change", "data": change}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"summary": "no service"}, "service"),
        ({"service": "", "summary": "x"}, "service"),
        ({"service": "s"}, "summary"),
        ({"service": "s", "summary": "x", "kind": "reboot"}, "kind"),
        ({"service": "s", "summary": "x", "time": "yesterday"}, "time"),
        ({"service": "s", "summary": "x", "time": "2027-01-15T08:00:00"}, "time zone"),
        ({"service": "s", "summary": "x", "time": 1e300}, "range"),
        ({"service": "s", "summary": "x", "time": True}, "time"),
        ({"service": "s" * 201, "summary": "x"}, "longer"),
        ({"service": "s", "summary": "x" * 2001}, "longer"),
        ({"service": ["s"], "summary": "x"}, "service"),
        ({"service": "s", "summary": "x", "version": {"v": 1}}, "version"),
    ],
)
async def test_bad_markers_are_refused_with_the_reason_and_nothing_is_stored(
    agent, http, body, reason
):
    status, answer = await post(http, agent, body)
    assert status == 400
    assert reason in answer["error"]
    async with http.get(f"{agent.url}/api/changes", headers=READ) as r:
        assert (await r.json())["items"] == []


@pytest.mark.parametrize(
    "raw",
    [b"[1, 2]", b"{not json", b'{"service": "\xff\xfe"}', b"[" * 100_000, b" " * 70_000],
    ids=["array", "broken", "invalid-utf8", "deep", "oversized"],
)
async def test_malformed_hostile_and_oversized_bodies_are_refused(agent, http, raw):
    headers = {**WRITE, "Content-Type": "application/json"}
    async with http.post(f"{agent.url}/api/changes", data=raw, headers=headers) as r:
        assert r.status in (400, 413)
    async with http.get(f"{agent.url}/api/changes", headers=READ) as r:
        assert (await r.json())["items"] == []


async def test_a_read_key_cannot_post_a_marker(agent, http):
    status, _ = await post(http, agent, {"service": "s", "summary": "x"}, headers=READ)
    assert status == 403


async def test_a_bad_since_is_refused(agent, http):
    async with http.get(f"{agent.url}/api/changes?since=soon", headers=READ) as r:
        assert r.status == 400
