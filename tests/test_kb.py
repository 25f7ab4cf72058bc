"""The knowledge base with the real all-MiniLM-L6-v2: seeds, learning and feedback.

The loop the engine promises: after a case is resolved, the same failure's next
occurrence ranks the proven fix first with higher confidence; "not helpful" on a
suggestion lowers it the next time.
"""

from __future__ import annotations

from typing import Any

import pytest

from proveai_agent.config import EngineConfig
from proveai_agent.engine.kb import SEEDS, KnowledgeBase
from proveai_agent.engine.local import NamedEmbedder
from proveai_agent.engine.service import Engine, signature_of
from proveai_agent.store.kb import KbStore
from test_engine import case, change, signal


@pytest.fixture
async def knowledge(agent, minilm) -> KnowledgeBase:
    kb = KnowledgeBase(
        KbStore(agent._writer, agent._reader), NamedEmbedder("all-minilm-l6-v2", minilm)
    )
    await kb.load()
    return kb


def coherence_case() -> dict[str, Any]:
    edit = change(
        "file", "/w/svc/config/generation.toml", "generation.toml: -frequency_penalty"
    )
    drop = signal("score_drop", subject="coherence", evidence={"query": "q", "threshold": 0.78})
    return case({"COHERENCE_DEGRADATION": 1.0}, [drop], [edit])


async def analyse(doc: dict[str, Any], kb: KnowledgeBase) -> dict[str, Any]:
    async def stages(_: dict[str, Any]) -> set[str]:
        return set()

    async def nothing(*_: Any) -> None:
        return None

    return await Engine(nothing, stages, nothing, EngineConfig(), memory=kb).analyse(doc)


def confidence_of(result: dict[str, Any], cause: str) -> float:
    return next(h["confidence"] for h in result["hypotheses"] if h["cause_id"] == cause)


async def test_seeds_are_added_once_per_embedding_model(agent, knowledge) -> None:
    seeds = SEEDS.read_text().count("[[entry]]")
    assert len(await knowledge.store.all("all-minilm-l6-v2")) == seeds
    await knowledge.load()
    assert len(await knowledge.store.all("all-minilm-l6-v2")) == seeds


async def test_a_resolved_case_makes_its_fix_first_and_surer_next_time(knowledge) -> None:
    doc = coherence_case()
    before = await analyse(doc, knowledge)
    cause = "repetition-penalty-removed"
    assert before["analysis"]["root_cause"] == cause

    await knowledge.learn(signature_of(doc), cause, "restore frequency_penalty", "CASE-7")
    after = await analyse(doc, knowledge)

    assert after["analysis"]["root_cause"] == cause
    assert after["analysis"]["confidence"] > before["analysis"]["confidence"]
    (first, *_) = after["remediation_suggestions"]
    assert (first["cause_id"], first["similar_case"]) == (cause, "CASE-7")


async def test_not_helpful_lowers_the_suggestion_next_time(knowledge) -> None:
    doc = coherence_case()
    cause = "repetition-penalty-removed"
    before = await analyse(doc, knowledge)

    await knowledge.feedback(signature_of(doc), cause, helpful=False, case_id="CASE-8")
    after = await analyse(doc, knowledge)

    assert confidence_of(after, cause) < confidence_of(before, cause)


async def test_similar_signatures_are_closer_than_unrelated_ones(knowledge) -> None:
    loop = "AGENT_LOOP. signals: agent_loop web_search. changes: planner.txt edited"
    found = knowledge.similar(loop)
    assert found[0][0].cause_id == "planner-prompt-changed"
    assert found[0][1] > found[-1][1]
