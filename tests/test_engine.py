"""The remediation engine on hand-built cases: ranking, confidence, honesty, the worker.

Scores by hand from engine/rank.py: evidence = 0.5 × change fit + 0.25 × signal fit +
0.25 × detail fit; joint = evidence × class score; confidence = joint × (0.6 + 0.4 ×
margin over the next hypothesis).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentfix import OPERATOR_KEY, READ_KEY
from proveai_agent.cases.service import rfc3339
from proveai_agent.config import EngineConfig
from proveai_agent.engine import rank
from proveai_agent.engine.service import UNABLE, Engine
from proveai_agent.signals import Signal
from proveai_agent.store.changes import Change

T = 1_800_000_000.0


def signal(kind: str, **extra: Any) -> dict[str, Any]:
    evidence = extra.pop("evidence", {})
    return {"kind": kind, "failure_class": "", "evidence": evidence, **extra}


def change(kind: str, source: str, summary: str, before_s: float = 30) -> dict[str, Any]:
    return {
        "at": rfc3339(T - before_s),
        "service": "svc",
        "kind": kind,
        "source": source,
        "summary": summary,
    }


def case(
    scores: dict[str, float], signals: list[dict[str, Any]], changes: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": "CASE-1",
        "service": "svc",
        "first_signal_at": T,
        "class_scores": scores,
        "signals": signals,
        "recent_changes": changes,
    }


LOOP_SCORES = {"AGENT_LOOP": 1.0, "PROMPT_REGRESSION": 0.913, "LATENCY_REGRESS": 0.696}


def test_a_prompt_edit_before_a_succeeding_loop_names_the_prompt() -> None:
    doc = case(
        LOOP_SCORES,
        [
            signal("agent_loop", evidence={"repeats": 8, "failed": 0}),
            signal("latency_regression", span_name="invoke_agent planner"),
        ],
        [change("file", "/w/svc/prompts/planner.txt", "planner.txt: 2 lines changed")],
    )
    scored = rank.rank(rank.evidence_of(doc, {"invoke_agent"}))

    # planner-prompt-changed: change 1, signal 1, loop succeeding 1 → 1.0.
    # tool-error-retried: no retry/tool words, loop not failing → 0.25 (signal only).
    # The prompt-regression causes: 0.25 × 0.913 = 0.228 (planner excluded, no score drop).
    assert [s.cause.id for s in scored[:2]] == ["planner-prompt-changed", "tool-error-retried"]
    assert scored[0].joint == pytest.approx(1.0)
    assert scored[1].joint == pytest.approx(0.25)
    assert scored[0].confidence == pytest.approx(0.9)  # 1.0 × (0.6 + 0.4 × 0.75)


def test_repeats_that_fail_after_a_tool_client_deploy_name_the_retries() -> None:
    doc = case(
        {"AGENT_LOOP": 1.0, "ERROR_SPIKE": 0.8},
        [
            signal("agent_loop", evidence={"repeats": 7, "failed": 7}),
            signal("error_spike", span_name="execute_tool web_search"),
        ],
        [change("deploy", "api", "agent 2.0: tool client retries every failed call")],
    )
    scored = rank.rank(rank.evidence_of(doc, {"execute_tool"}))
    assert scored[0].cause.id == "tool-error-retried"
    # 0.5 + 0.25 + 0.25 = 1.0; next: planner-prompt-changed 0.25 (signal only, the loop
    # fails) and provider-degraded for ERROR_SPIKE: (0.6 × 0 + 0.25 + 0) × 0.8 = 0.2.
    assert scored[0].joint == pytest.approx(1.0)
    assert scored[1].joint == pytest.approx(0.25)


def test_the_slow_stage_tells_a_slow_retriever_from_the_model_provider() -> None:
    edit = change("file", "/w/svc/retrieval/search.toml", "search.toml: -hnsw_ef = 64")
    retrieval = case({"LATENCY_REGRESS": 1.0}, [signal("latency_regression")], [edit])
    scored = rank.rank(rank.evidence_of(retrieval, {"retrieval"}))
    assert scored[0].cause.id == "retriever-slow"
    assert scored[0].joint == pytest.approx(1.0)

    # The same latency on the model call with no change at all: the provider, with
    # change fit 0.6 × (1 − 0) → 0.3 + 0.25 + 0.25 = 0.8; model-version-changed has no
    # change: 0 + 0.25 + 0.25 = 0.5; retriever-slow 0.25. Confidence 0.8 × (0.6 + 0.4 ×
    # 0.375) = 0.6.
    model = case({"LATENCY_REGRESS": 1.0}, [signal("latency_regression")], [])
    scored = rank.rank(rank.evidence_of(model, {"chat"}))
    assert [s.cause.id for s in scored] == [
        "provider-degraded",
        "model-version-changed",
        "retriever-slow",
    ]
    assert scored[0].confidence == pytest.approx(0.6)


def test_an_attribute_change_counts_only_in_the_scopes_the_cause_names() -> None:
    embed = change(
        "attribute",
        "gen_ai.request.model",
        "gen_ai.request.model of embeddings changed from minilm to bge-small",
    )
    drift = case(
        {"RETRIEVAL_DRIFT": 1.0, "HALLUCINATION": 0.375},
        [signal("score_drop", subject="relevance")],
        [embed],
    )
    scored = rank.rank(rank.evidence_of(drift, set()))
    assert scored[0].cause.id == "embedding-model-changed"
    # model-downgraded has the same key, but for chat-like scopes only: no change fit.
    downgrade = next(s for s in scored if s.cause.id == "model-downgraded")
    assert downgrade.fits["change"] == 0.0


def test_without_changes_two_equal_causes_leave_the_engine_unable_and_saying_why() -> None:
    doc = case({"COHERENCE_DEGRADATION": 1.0}, [signal("score_drop", subject="coherence")], [])
    evidence = rank.evidence_of(doc, set())
    scored = rank.rank(evidence)
    # Every coherence cause: change 0, signal 1, detail 1 → 0.5 each, margin 0:
    # confidence 0.5 × 0.6 = 0.3, below 0.5.
    assert all(s.joint == pytest.approx(0.5) for s in scored)
    assert scored[0].confidence == pytest.approx(0.3)
    (first, second) = rank.missing_evidence(evidence, scored)
    assert first.startswith("no change of svc was recorded in the hour before")
    assert "alike" in second


def test_a_similar_resolved_case_lifts_its_cause_within_the_kb_weight() -> None:
    doc = case({"COHERENCE_DEGRADATION": 1.0}, [signal("score_drop", subject="coherence")], [])
    lifted = rank.rank(rank.evidence_of(doc, set(), {"repetition-penalty-removed": 1.0}))
    assert lifted[0].cause.id == "repetition-penalty-removed"
    assert lifted[0].joint == pytest.approx(0.65)  # 0.5 + 0.15 × 1.0
    assert lifted[1].joint == pytest.approx(0.5)


class Picks:
    """A stand-in model that always answers `choice`, or raises."""

    def __init__(self, choice: str | None, error: Exception | None = None) -> None:
        self.choice = choice
        self.error = error
        self.summaries: list[str] = []

    def choose(self, summary: str, candidates: list[str], timeout_s: float):
        self.summaries.append(summary)
        if self.error:
            raise self.error
        return self.choice, "narrative from the model"


async def analyse(doc: dict[str, Any], reasoner: Any = None) -> dict[str, Any]:
    async def stages(_: dict[str, Any]) -> set[str]:
        return {"chat"}

    async def nothing(*_: Any) -> None:
        return None

    engine = Engine(nothing, stages, nothing, EngineConfig(), reasoner=reasoner)
    return await engine.analyse(doc)


async def test_the_model_cannot_lift_a_weak_cause_past_strong_evidence() -> None:
    edit = change("attribute", "gen_ai.response.model", "gen_ai.response.model of chat changed")
    doc = case({"LATENCY_REGRESS": 1.0}, [signal("latency_regression")], [edit])
    result = await analyse(doc, Picks("retriever-slow"))
    # retriever-slow: 0.25 × 1.1 = 0.275, far below model-version-changed at 1.0.
    assert result["analysis"]["root_cause"] == "model-version-changed"
    assert result["analysis"]["model"] == {
        "used": True,
        "answered": True,
        "choice": "retriever-slow",
    }
    assert result["narrative"] == "narrative from the model"


async def test_a_model_that_fails_or_strays_leaves_the_evidence_ranking() -> None:
    edit = change("attribute", "gen_ai.response.model", "gen_ai.response.model of chat changed")
    doc = case({"LATENCY_REGRESS": 1.0}, [signal("latency_regression")], [edit])
    failed = await analyse(doc, Picks(None, TimeoutError("no answer within 15 s")))
    assert failed["analysis"]["root_cause"] == "model-version-changed"
    assert failed["analysis"]["model"]["answered"] is False
    assert "no answer within 15 s" in failed["analysis"]["model"]["reason"]
    strayed = await analyse(doc, Picks("reboot-the-cluster"))
    assert strayed["analysis"]["model"] == {
        "used": True,
        "answered": False,
        "reason": "chose 'reboot-the-cluster'",
    }


async def test_unable_to_determine_suggests_nothing_and_names_the_missing_evidence() -> None:
    doc = case({"COHERENCE_DEGRADATION": 1.0}, [signal("score_drop", subject="coherence")], [])
    result = await analyse(doc)
    assert result["analysis"]["unable"] is True
    assert result["analysis"]["verdict"] == UNABLE
    assert result["remediation_suggestions"] == []
    assert result["analysis"]["missing_evidence"]


async def test_a_suggestion_verifies_with_the_signal_query_back_past_its_threshold() -> None:
    query = 'avg(score{service_name="svc"})'
    drop = signal(
        "score_drop",
        subject="coherence",
        evidence={"query": query, "threshold": 0.78, "baseline_median": 0.88},
    )
    edit = change(
        "file", "/w/svc/config/generation.toml", "generation.toml: -frequency_penalty"
    )
    result = await analyse(case({"COHERENCE_DEGRADATION": 1.0}, [drop], [edit]))
    (first, *_) = result["remediation_suggestions"]
    assert first["cause_id"] == "repetition-penalty-removed"
    assert first["verification"] == {
        "query": query,
        "comparator": ">=",
        "threshold": 0.78,
        "window_s": 300,
    }
    assert first["effort"] == "low" and first["id"] == "CASE-1-S1"


async def test_a_case_opened_by_the_agent_gets_its_analysis_attached(agent) -> None:
    stored = await opened_with_suggestion(agent)
    assert stored["analysis"]["root_cause"] == "quantized-model-rollout"
    assert stored["hypotheses"][0]["cause_id"] == "quantized-model-rollout"
    assert stored["timeline"][-1]["type"] == "analysis"
    assert stored["remediation_suggestions"][0]["action"].startswith("Roll back")


async def opened_with_suggestion(agent) -> dict[str, Any]:
    await agent.change_store.add(
        Change(
            T - 40,
            "rag-api",
            "deploy",
            "rag-api 1.5.0: 4-bit quantised model",
            None,
            None,
            "api",
        )
    )
    doc = await agent.case_service.on_signal(
        Signal(
            kind="score_drop",
            failure_class="COHERENCE_DEGRADATION",
            trigger="quality_drop",
            service="rag-api",
            span_name=None,
            at=T,
            severity="high",
            summary="coherence 0.52 against 0.88",
            subject="coherence",
        )
    )
    agent.engine.submit(doc["id"])
    await asyncio.wait_for(agent.engine.idle.wait(), 10)
    stored = await agent.case_store.get(1)
    assert stored is not None
    return stored


async def test_feedback_on_a_suggestion_is_kept_in_the_case_timeline(agent, http) -> None:
    doc = await opened_with_suggestion(agent)
    suggestion = doc["remediation_suggestions"][0]["id"]
    body = {"suggestion_id": suggestion, "helpful": False, "actor": "ana", "note": "no build"}
    async with http.post(
        f"{agent.url}/api/cases/CASE-1/feedback", json=body, headers={"X-API-Key": OPERATOR_KEY}
    ) as response:
        assert response.status == 200
        answer = await response.json()
    event = answer["timeline"][-1]
    assert (event["type"], event["suggestion_id"], event["helpful"], event["actor"]) == (
        "feedback",
        suggestion,
        False,
        "ana",
    )
    assert event["note"] == "no build"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"helpful": True, "actor": "ana"}, 400, "suggestion_id"),
        ({"suggestion_id": "CASE-1-S1", "helpful": "yes", "actor": "ana"}, 400, "helpful"),
        ({"suggestion_id": "CASE-1-S1", "helpful": True}, 400, "actor"),
        ({"suggestion_id": "CASE-1-S9", "helpful": True, "actor": "ana"}, 404, "no suggestion"),
        ({"suggestion_id": "x", "helpful": True, "actor": "a" * 201}, 400, "actor"),
    ],
)
async def test_bad_feedback_is_refused_and_changes_nothing(
    agent, http, body: dict[str, Any], status: int, message: str
) -> None:
    before = await opened_with_suggestion(agent)
    async with http.post(
        f"{agent.url}/api/cases/CASE-1/feedback", json=body, headers={"X-API-Key": OPERATOR_KEY}
    ) as response:
        assert response.status == status
        assert message in (await response.json())["error"]
    after = await agent.case_store.get(1)
    assert after is not None and after["timeline"] == before["timeline"]


async def test_feedback_needs_an_operator_key_and_a_known_case(agent, http) -> None:
    await opened_with_suggestion(agent)
    body = {"suggestion_id": "CASE-1-S1", "helpful": True, "actor": "ana"}
    url = f"{agent.url}/api/cases/CASE-1/feedback"
    async with http.post(url, json=body, headers={"X-API-Key": READ_KEY}) as response:
        assert response.status == 403
    async with http.post(url, data=b"[1, 2", headers={"X-API-Key": OPERATOR_KEY}) as response:
        assert response.status == 400
    async with http.post(
        url, data=b" " * (65 * 1024), headers={"X-API-Key": OPERATOR_KEY}
    ) as response:
        assert response.status == 413
    async with http.post(
        f"{agent.url}/api/cases/CASE-99/feedback",
        json=body,
        headers={"X-API-Key": OPERATOR_KEY},
    ) as response:
        assert response.status == 404
