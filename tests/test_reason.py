"""The local model in the engine: it picks among the evidence's candidates, or is left out.

The real SmolLM2-135M-Instruct answers within the schema; the tiny random-weight model of
modelfix shows that a model that runs out of time leaves the evidence ranking standing.
"""

from __future__ import annotations

from typing import Any

from proveai_agent.config import EngineConfig
from proveai_agent.engine.reason import NARRATIVE_CHARS, ModelReasoner
from proveai_agent.engine.service import Engine
from test_engine import case, change, signal

CANDIDATES = ["model-version-changed", "provider-degraded", "retriever-slow"]
SUMMARY = (
    "service rag-api; classes {'LATENCY_REGRESS': 1.0}\n"
    "signal: rag-api / chat gpt-4o-mini: p95 latency 4.1s over 60s (baseline median 1.1s)\n"
    "change: gen_ai.response.model of chat changed from gpt-4o-mini-2024-07-18 to "
    "gpt-4o-mini-2025-04-14\n"
    "candidate model-version-changed: the model behind the same name moved to a slower "
    "version (evidence 1.00)\n"
    "candidate provider-degraded: the provider is slower with no change here (evidence 0.50)\n"
    "candidate retriever-slow: the vector search became slow (evidence 0.25)"
)


def test_smollm2_picks_one_of_the_candidates_and_writes_a_short_narrative(smollm2) -> None:
    choice, narrative = ModelReasoner(smollm2).choose(SUMMARY, CANDIDATES, timeout_s=60)
    assert choice in CANDIDATES
    assert 0 < len(narrative) <= NARRATIVE_CHARS


async def test_a_model_out_of_time_leaves_the_evidence_ranking(tiny_model) -> None:
    edit = change("attribute", "gen_ai.response.model", "gen_ai.response.model of chat changed")
    doc = case({"LATENCY_REGRESS": 1.0}, [signal("latency_regression")], [edit])

    async def stages(_: dict[str, Any]) -> set[str]:
        return {"chat"}

    async def nothing(*_: Any) -> None:
        return None

    config = EngineConfig(model_timeout_s=0.02)
    engine = Engine(nothing, stages, nothing, config, reasoner=ModelReasoner(tiny_model))
    result = await engine.analyse(doc)

    assert result["analysis"]["root_cause"] == "model-version-changed"
    assert result["analysis"]["model"]["used"] is True
    assert result["analysis"]["model"]["answered"] is False
    assert result["narrative"].startswith("Most likely model-version-changed")
