"""Cases: a signal opens CASE-n with its context; signals of a service in the window join it."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from agentfix import READ_KEY
from proveai_agent.signals import Signal
from proveai_agent.spans import Span

T0 = 1_800_000_000.0


def signal(
    at: float,
    service: str = "rag-api",
    kind: str = "latency_regression",
    span_name: str = "chat",
    severity: str = "high",
) -> Signal:
    return Signal(
        kind=kind,
        failure_class="LATENCY_REGRESS" if kind == "latency_regression" else "ERROR_SPIKE",
        trigger="anomaly_detection",
        service=service,
        span_name=span_name,
        at=at,
        severity=severity,
        summary=f"{kind} on {service} at {at:.0f}",
        evidence={"current": 6.1, "baseline_median": 0.8},
    )


def span(trace: int, span_id: int, duration_s: float, at: float, **kw) -> Span:
    fields = dict(
        trace_id=f"{trace:032x}",
        span_id=f"{span_id:016x}",
        parent_span_id=None,
        service="rag-api",
        name="chat",
        kind="SPAN_KIND_CLIENT",
        status="STATUS_CODE_OK",
        status_message="",
        start_ns=int((at - duration_s) * 1e9),
        end_ns=int(at * 1e9),
    )
    fields.update(kw)
    return Span(**fields)


async def test_a_signal_opens_a_detected_case_with_the_slowest_traces_as_exemplars(agent):
    spans = [span(i, i, 0.5 + i / 10, T0 - 30) for i in range(1, 11)]
    spans.append(span(99, 99, 50.0, T0 - 30, service="other-service"))
    await agent.span_store.write(spans, [])

    doc = await agent.case_service.on_signal(signal(T0))

    assert doc["id"] == "CASE-1"
    assert doc["state"] == "DETECTED"
    assert doc["trigger"] == "anomaly_detection"
    assert doc["failure_class"] == "LATENCY_REGRESS"
    assert [s["kind"] for s in doc["signals"]] == ["latency_regression"]
    traces = doc["context_snapshot"]["traces"]
    # The five slowest chat spans of rag-api are traces 10, 9, 8, 7 and 6.
    assert [t["trace_id"] for t in traces] == [f"{i:032x}" for i in (10, 9, 8, 7, 6)]
    assert traces[0]["spans"][0]["duration_s"] == 1.5


async def test_signals_of_one_service_within_the_window_join_its_case(agent):
    first = await agent.case_service.on_signal(signal(T0))
    joined = await agent.case_service.on_signal(
        signal(T0 + 600, kind="error_spike", severity="critical")
    )
    again = await agent.case_service.on_signal(signal(T0 + 700))
    assert first["id"] == joined["id"] == again["id"] == "CASE-1"
    # Two distinct findings; the repeated one is counted, not duplicated.
    assert [(s["kind"], s["count"]) for s in again["signals"]] == [
        ("latency_regression", 2),
        ("error_spike", 1),
    ]
    assert again["severity"] == "critical"
    # A repeated finding carries its latest numbers, in its summary too.
    assert again["signals"][0]["summary"] == "latency_regression on rag-api at 1800000700"
    assert again["signals"][0]["first_seen"] == "2027-01-15T08:00:00.000Z"


async def test_a_signal_after_the_window_or_for_another_service_opens_a_new_case(agent):
    await agent.case_service.on_signal(signal(T0))
    other = await agent.case_service.on_signal(signal(T0 + 10, service="research-agent"))
    # Grouping counts from the case's last signal: 901 s later is outside the 900 s window.
    late = await agent.case_service.on_signal(signal(T0 + 901))
    assert other["id"] == "CASE-2"
    assert late["id"] == "CASE-3"


async def test_case_api_lists_filters_and_pages(agent, http):
    for i in range(3):
        await agent.case_service.on_signal(signal(T0 + i * 1000))
    await agent.case_service.on_signal(signal(T0, service="research-agent", kind="error_spike"))
    headers = {"X-API-Key": READ_KEY}
    async with http.get(f"{agent.url}/api/cases?limit=2", headers=headers) as r:
        page = await r.json()
    assert page["total"] == 4
    assert [c["id"] for c in page["items"]] == ["CASE-4", "CASE-3"]
    assert page["next"] == "CASE-3"
    async with http.get(f"{agent.url}/api/cases?limit=2&cursor=CASE-3", headers=headers) as r:
        assert [c["id"] for c in (await r.json())["items"]] == ["CASE-2", "CASE-1"]
    async with http.get(f"{agent.url}/api/cases?class=ERROR_SPIKE", headers=headers) as r:
        assert [c["service"] for c in (await r.json())["items"]] == ["research-agent"]
    async with http.get(f"{agent.url}/api/cases?q=research", headers=headers) as r:
        assert (await r.json())["total"] == 1
    async with http.get(f"{agent.url}/api/cases?state=open", headers=headers) as r:
        assert (await r.json())["total"] == 4
    async with http.get(f"{agent.url}/api/cases/CASE-2", headers=headers) as r:
        case = await r.json()
    assert case["id"] == "CASE-2" and case["state"] == "DETECTED"
    for bad in ("CASE-99", "case-1", "CASE-x"):
        async with http.get(f"{agent.url}/api/cases/{bad}", headers=headers) as r:
            assert r.status == 404
    async with http.get(f"{agent.url}/api/cases?limit=0", headers=headers) as r:
        assert r.status == 400


async def test_a_case_can_be_opened_by_hand_from_a_stored_trace(agent, http):
    await agent.span_store.write([span(7, 1, 0.4, time.time())], [])
    headers = {"X-API-Key": "test-operator-key-0123456789"}
    body = {"trace_id": f"{7:032x}", "title": "Customer says the answer was wrong"}
    async with http.post(f"{agent.url}/api/cases", json=body, headers=headers) as r:
        assert r.status == 201
        case = await r.json()
    assert case["trigger"] == "manual" and case["service"] == "rag-api"
    assert case["context_snapshot"]["traces"][0]["trace_id"] == f"{7:032x}"
    for bad in ({"trace_id": "zz", "title": "x"}, {"trace_id": f"{7:032x}"}, []):
        async with http.post(f"{agent.url}/api/cases", json=bad, headers=headers) as r:
            assert r.status == 400
    async with http.post(
        f"{agent.url}/api/cases", json={**body, "trace_id": "1" * 32}, headers=headers
    ) as r:
        assert r.status == 404


async def test_the_stream_pushes_a_case_when_it_opens(agent, http):
    async with http.ws_connect(
        f"{agent.url}/api/stream", headers={"X-API-Key": READ_KEY}
    ) as ws:
        for _ in range(100):  # the subscription is registered once the handler runs
            if len(agent.hub):
                break
            await asyncio.sleep(0.01)
        await agent.case_service.on_signal(signal(T0))
        message = await ws.receive_json(timeout=5)
    assert message["type"] == "case"
    assert message["data"]["id"] == "CASE-1"
    assert message["data"]["state"] == "DETECTED"


async def test_the_stream_needs_a_key(agent, http):
    async with http.get(f"{agent.url}/api/stream") as r:
        assert r.status == 401


def drift_signal(at: float) -> Signal:
    return Signal(
        kind="drift",
        failure_class="LATENCY_REGRESS",
        trigger="drift",
        service="rag-api",
        span_name=None,
        at=at,
        severity="low",
        summary="mean latency 1.4 s over 6 h against 1.0 s over the week before",
        subject="latency_mean_s",
        advisory=True,
    )


async def test_slow_drift_opens_an_advisory_case_that_an_incident_turns_into_a_real_one(agent):
    doc = await agent.case_service.on_signal(drift_signal(T0))
    assert (doc["advisory"], doc["trigger"], doc["title"]) == (
        True,
        "drift",
        "Slow drift in rag-api (latency_mean_s)",
    )

    joined = await agent.case_service.on_signal(signal(T0 + 60))
    assert joined["id"] == doc["id"]
    assert joined["advisory"] is False


async def test_a_case_lists_the_changes_before_its_first_signal_and_marks_the_cause(agent):
    # A model change on rag-api 30 s before a latency regression: time weight 1, the
    # model topic's affinity to LATENCY_REGRESS 1, so correlation 1. A change of another
    # service is listed, not marked; one after the first signal is not listed.
    from proveai_agent.store.changes import Change

    def change(at: float, service: str, summary: str) -> Change:
        return Change(at, service, "deploy", summary, None, None, "api")

    await agent.change_store.add(change(T0 - 30, "rag-api", "answer model gpt-4o-mini-2025"))
    await agent.change_store.add(change(T0 - 20, "billing-api", "invoice layout"))
    await agent.change_store.add(change(T0 + 5, "rag-api", "answer model rollback"))

    doc = await agent.case_service.on_signal(signal(T0))

    recent = [(c["service"], c["summary"], c["correlated"]) for c in doc["recent_changes"]]
    assert recent == [
        ("rag-api", "answer model gpt-4o-mini-2025", True),
        ("billing-api", "invoice layout", False),
    ]
    assert doc["recent_changes"][0]["correlation"] == 1.0
    assert doc["failure_class"] == "LATENCY_REGRESS"


async def test_stopping_the_agent_closes_the_stream_as_going_away(agent_factory, http):
    agent = await agent_factory()
    async with http.ws_connect(
        f"{agent.url}/api/stream", headers={"X-API-Key": READ_KEY}
    ) as ws:
        for _ in range(100):
            if len(agent.hub):
                break
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(agent.stop())
        message = await ws.receive(timeout=5)
        await stopping
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert message.data == aiohttp.WSCloseCode.GOING_AWAY
    assert message.extra == "agent stopping"
