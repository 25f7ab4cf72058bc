"""The case lifecycle through the API, the agent's own steps, verification and recurrence.

The table of legal transitions is DESIGN.md's; every other (from, to) pair is refused with
409 and the reason, and nothing changes.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from agentfix import OPERATOR_KEY, READ_KEY
from proveai_agent.cases import verification
from proveai_agent.signals import Signal
from stackfix import VMHandle, exposition

STATES = [
    "DETECTED",
    "TRIAGED",
    "INVESTIGATING",
    "REMEDIATION_SUGGESTED",
    "FIX_APPLIED",
    "VERIFYING",
    "RESOLVED",
    "CLOSED",
]
OPEN = STATES[:6]
BY_ENGINEER = {
    ("DETECTED", "TRIAGED"),
    ("TRIAGED", "INVESTIGATING"),
    ("REMEDIATION_SUGGESTED", "FIX_APPLIED"),
    *((state, "CLOSED") for state in OPEN),
    ("RESOLVED", "DETECTED"),
    ("CLOSED", "DETECTED"),
}
BY_AGENT = {
    ("INVESTIGATING", "REMEDIATION_SUGGESTED"),
    ("FIX_APPLIED", "VERIFYING"),
    ("VERIFYING", "RESOLVED"),
    ("VERIFYING", "INVESTIGATING"),
}
SUGGESTION = {
    "id": "CASE-1-S1",
    "cause_id": "model-version-changed",
    "action": "Pin the previous model version.",
    "verification": {"query": "vector(1)", "comparator": ">=", "threshold": 0.5, "window_s": 2},
}
EXTRA = {
    "FIX_APPLIED": {"suggestion_id": "CASE-1-S1"},
    "CLOSED": {"reason": "wont_fix"},
    "TRIAGED": {"severity": "critical", "owner": "ana"},
}


def signal(at: float, span: str = "chat") -> Signal:
    return Signal(
        kind="latency_regression",
        failure_class="LATENCY_REGRESS",
        trigger="anomaly_detection",
        service="rag-api",
        span_name=span,
        at=at,
        severity="high",
        summary="p95 4 s against 1 s",
    )


async def opened(agent, state: str = "DETECTED", suggestions: bool = True) -> dict[str, Any]:
    doc = await agent.case_service.on_signal(signal(time.time()))
    doc["state"] = state
    doc["remediation_suggestions"] = [SUGGESTION] if suggestions else []
    await agent.case_store.update(1, doc, time.time())
    return doc


async def move(http, agent, to: str, key: str = OPERATOR_KEY, **body: Any) -> tuple[int, Any]:
    payload = {"to": to, "actor": "ana", **EXTRA.get(to, {}), **body}
    async with http.post(
        f"{agent.url}/api/cases/CASE-1/transition", json=payload, headers={"X-API-Key": key}
    ) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(("start", "to"), sorted(BY_ENGINEER))
async def test_an_engineer_makes_each_engineer_transition(agent, http, start, to) -> None:
    await opened(agent, start)
    status, doc = await move(http, agent, to, note="checked")
    assert status == 200, doc
    event = next(e for e in reversed(doc["timeline"]) if e.get("from") == start)
    assert (event["to"], event["actor"], event["note"]) == (to, "ana", "checked")


@pytest.mark.parametrize(
    ("start", "to"),
    [
        pair
        for pair in itertools.product(STATES, STATES)
        if pair not in BY_ENGINEER and pair not in BY_AGENT
    ],
)
async def test_every_other_transition_is_refused_with_the_reason(
    agent, http, start, to
) -> None:
    before = await opened(agent, start)
    status, answer = await move(http, agent, to)
    assert status == 409
    assert f"a case in {start} cannot move to {to}" in answer["error"]
    after = await agent.case_store.get(1)
    assert after["state"] == start and after["timeline"] == before["timeline"]


@pytest.mark.parametrize(("start", "to"), sorted(BY_AGENT))
async def test_the_agent_s_transitions_are_refused_to_an_engineer(
    agent, http, start, to
) -> None:
    await opened(agent, start)
    status, answer = await move(http, agent, to)
    assert status == 409
    assert answer["error"] == f"only the agent moves a case from {start} to {to}"


async def test_triage_sets_severity_and_owner(agent, http) -> None:
    await opened(agent)
    status, doc = await move(http, agent, "TRIAGED")
    assert status == 200
    assert (doc["severity"], doc["owner"]) == ("critical", "ana")


async def test_investigating_a_case_with_suggestions_moves_on_to_them_at_once(agent, http):
    await opened(agent, "TRIAGED")
    status, doc = await move(http, agent, "INVESTIGATING")
    assert status == 200
    assert doc["state"] == "REMEDIATION_SUGGESTED"
    assert [e["to"] for e in doc["timeline"][-2:]] == ["INVESTIGATING", "REMEDIATION_SUGGESTED"]
    assert doc["timeline"][-1]["actor"] == "agent"


async def test_investigating_a_case_without_suggestions_stays_there(agent, http) -> None:
    await opened(agent, "TRIAGED", suggestions=False)
    status, doc = await move(http, agent, "INVESTIGATING")
    assert (status, doc["state"]) == (200, "INVESTIGATING")


async def test_suggestions_that_come_after_the_investigation_started_move_it_on(agent, http):
    await opened(agent, "TRIAGED", suggestions=False)
    await move(http, agent, "INVESTIGATING")
    analysis = {
        "hypotheses": [],
        "remediation_suggestions": [SUGGESTION],
        "narrative": "",
        "analysis": {"verdict": "root cause model-version-changed"},
    }
    await agent.case_service.attach_analysis("CASE-1", analysis)
    doc = await agent.case_store.get(1)
    assert doc["state"] == "REMEDIATION_SUGGESTED"
    last = doc["timeline"][-2:]
    assert [e["type"] for e in last] == ["analysis", "transition"]
    assert (last[1]["from"], last[1]["to"], last[1]["actor"]) == (
        "INVESTIGATING",
        "REMEDIATION_SUGGESTED",
        "agent",
    )


async def test_an_applied_fix_is_verified_at_once(agent, http) -> None:
    await opened(agent, "REMEDIATION_SUGGESTED")
    status, doc = await move(http, agent, "FIX_APPLIED", root_cause="model-version-changed")
    assert status == 200
    assert doc["state"] == "VERIFYING"
    assert doc["verification"]["query"] == "vector(1)"
    assert doc["fix"]["suggestion_id"] == "CASE-1-S1"


@pytest.mark.parametrize(
    ("to", "body", "message"),
    [
        ("FIX_APPLIED", {"suggestion_id": None}, "needs the suggestion_id"),
        ("FIX_APPLIED", {"suggestion_id": "CASE-1-S7"}, "has no suggestion CASE-1-S7"),
        ("CLOSED", {"reason": "bored"}, "closing needs a reason"),
        ("CLOSED", {"reason": "duplicate"}, "needs duplicate_of"),
        (
            "CLOSED",
            {"reason": "duplicate", "duplicate_of": "CASE-1"},
            "cannot duplicate itself",
        ),
        ("NIRVANA", {}, "is not a state"),
    ],
)
async def test_a_transition_missing_what_it_needs_is_refused(agent, http, to, body, message):
    await opened(agent, "REMEDIATION_SUGGESTED")
    status, answer = await move(http, agent, to, **body)
    assert status == 409 and message in answer["error"]


@pytest.mark.parametrize(
    "body",
    [{"actor": "ana"}, {"to": "TRIAGED"}, {"to": 3, "actor": "ana"}, {"to": "x", "actor": ""}],
)
async def test_a_malformed_transition_is_a_400(agent, http, body) -> None:
    await opened(agent)
    async with http.post(
        f"{agent.url}/api/cases/CASE-1/transition",
        json=body,
        headers={"X-API-Key": OPERATOR_KEY},
    ) as response:
        assert response.status == 400


async def test_transitions_need_an_operator_key_and_a_case(agent, http) -> None:
    await opened(agent)
    status, _ = await move(http, agent, "TRIAGED", key=READ_KEY)
    assert status == 403
    async with http.post(
        f"{agent.url}/api/cases/CASE-9/transition",
        json={"to": "TRIAGED", "actor": "ana"},
        headers={"X-API-Key": OPERATOR_KEY},
    ) as response:
        assert response.status == 404


async def test_notes_go_in_the_timeline(agent, http) -> None:
    await opened(agent)
    async with http.post(
        f"{agent.url}/api/cases/CASE-1/notes",
        json={"actor": "ana", "text": "provider status page is green"},
        headers={"X-API-Key": OPERATOR_KEY},
    ) as response:
        assert response.status == 201
        doc = await response.json()
    assert doc["timeline"][-1] == {
        "at": doc["updated_at"],
        "type": "note",
        "actor": "ana",
        "text": "provider status page is green",
    }
    for bad in ({"actor": "ana"}, {"text": "x"}, {"actor": "ana", "text": "x" * 10_001}):
        async with http.post(
            f"{agent.url}/api/cases/CASE-1/notes", json=bad, headers={"X-API-Key": OPERATOR_KEY}
        ) as response:
            assert response.status == 400


async def test_a_resolved_failure_that_recurs_opens_its_case_again(agent) -> None:
    now = time.time()
    await opened(agent, "RESOLVED")
    again = await agent.case_service.on_signal(signal(now + 60))
    assert (again["id"], again["state"]) == ("CASE-1", "DETECTED")
    assert again["timeline"][-2]["to"] == "DETECTED"
    assert again["timeline"][-2]["actor"] == "agent"
    other = await agent.case_service.on_signal(signal(now + 61, span="retrieve"))
    assert other["id"] == "CASE-1"  # it is open again: the new signal joins it


# ---------------------------------------------------------------- verification


def spec(query: str, comparator: str, threshold: float, started: float) -> dict[str, Any]:
    return {
        "query": query,
        "comparator": comparator,
        "threshold": threshold,
        "window_s": 60,
        "started_at": started,
    }


async def test_verification_holds_when_the_worst_value_of_the_window_is_fine(
    vm: VMHandle,
) -> None:
    # A score at 0.9 for the 60 s after the fix, one sample every 10 s; ≥ 0.8 holds.
    now = float(int(time.time()) - 120)
    samples = "".join(
        f'fixed_score{{service_name="rag-api"}} 0.9 {int((now - 60 + 10 * i) * 1000)}\n'
        for i in range(7)
    )
    vm.import_prometheus(samples)
    query = 'fixed_score{service_name="rag-api"}'
    held = await verification.judge(vm.source(), spec(query, ">=", 0.8, now - 60), now, 4)
    assert held is not None and held[0] is True
    assert "worst 0.9" in held[1]


async def test_verification_waits_then_fails_when_one_sample_breaks_it(vm: VMHandle) -> None:
    # 0.9 every 10 s except one sample at 0.5, 30 s before `now`: the worst value of the
    # window [now - 80, now - 20] is 0.5, below 0.8. With verification started 200 s before
    # the check the deadline (4 windows of 60 s) is still ahead and the judge waits; started
    # 240 s before, the deadline is reached and the fix failed.
    now = float(int(time.time()) - 600)
    lines = [
        f'broken_score{{service_name="rag-api"}} {0.5 if i == 27 else 0.9} '
        f"{int((now - 300 + 10 * i) * 1000)}\n"
        for i in range(31)
    ]
    vm.import_prometheus(exposition([]) + "".join(lines))
    query = 'broken_score{service_name="rag-api"}'
    early = await verification.judge(
        vm.source(), spec(query, ">=", 0.8, now - 100), now - 30, 4
    )
    assert early is None
    late = await verification.judge(vm.source(), spec(query, ">=", 0.8, now - 270), now - 30, 4)
    assert late is not None and late[0] is False
    assert "did not stay >= 0.8" in late[1] and "worst 0.5" in late[1]


async def test_the_agent_resolves_a_verified_fix_with_its_time_to_remediate(
    agent_factory, prometheus_factory, http
) -> None:
    prometheus = prometheus_factory(None)
    agent = await agent_factory(prometheus_url=prometheus.url)
    await opened(agent, "REMEDIATION_SUGGESTED")
    _, doc = await move(http, agent, "FIX_APPLIED")
    assert doc["state"] == "VERIFYING"

    started = doc["verification"]["started_at"]
    await agent.watch_once(started + 1)
    assert (await agent.case_store.get(1))["state"] == "VERIFYING"  # before its window
    await agent.watch_once(started + 3)
    resolved = await agent.case_store.get(1)

    assert resolved["state"] == "RESOLVED"
    resolution = resolved["resolution"]
    assert resolution["root_cause"] == "model-version-changed"
    assert resolution["fix_applied"] == "Pin the previous model version."
    assert resolution["time_to_remediate_s"] > 0


async def test_a_fix_that_does_not_hold_goes_back_to_investigating(
    agent_factory, prometheus_factory, http
) -> None:
    prometheus = prometheus_factory(None)
    agent = await agent_factory(prometheus_url=prometheus.url)
    doc = await opened(agent, "REMEDIATION_SUGGESTED")
    doc["remediation_suggestions"][0]["verification"]["query"] = "vector(0)"
    await agent.case_store.update(1, doc, time.time())
    _, doc = await move(http, agent, "FIX_APPLIED")

    started = doc["verification"]["started_at"]
    await agent.watch_once(started + 3)
    assert (await agent.case_store.get(1))["state"] == "VERIFYING"
    await agent.watch_once(started + 9)  # past 4 windows of 2 s
    failed = await agent.case_store.get(1)

    transitions = [e["to"] for e in failed["timeline"] if e["type"] == "transition"]
    assert transitions[-2:] == ["INVESTIGATING", "REMEDIATION_SUGGESTED"]
    assert "did not stay >= 0.5" in failed["timeline"][-2]["note"]
