"""The local model's part in an analysis: pick one of the candidate causes, write the narrative.

The model sees the compact evidence summary the engine computed and answers JSON whose
`cause_id` can only be one of the candidates (the schema's enum) and whose `narrative` is
short. It reasons over the evidence; it does not gather any. The engine decides how much
the choice counts (`model_weight`).
"""

from __future__ import annotations

from typing import Any, Protocol

SYSTEM = (
    "You are an on-call assistant for GenAI services. From the evidence, pick the candidate "
    "root cause it supports best and explain it in two sentences for the engineer. Answer "
    "only with JSON."
)
NARRATIVE_CHARS = 300
MAX_TOKENS = 220


class JsonModel(Protocol):
    def complete_json(
        self, system: str, user: str, schema: dict[str, Any], max_tokens: int, timeout_s: float
    ) -> dict[str, Any]: ...


class ModelReasoner:
    """Adapts a schema-constrained local model to the engine's `Reasoner`."""

    def __init__(self, model: JsonModel) -> None:
        self.model = model

    def choose(
        self, summary: str, candidates: list[str], timeout_s: float
    ) -> tuple[str | None, str]:
        schema = {
            "type": "object",
            "properties": {
                "cause_id": {"type": "string", "enum": candidates},
                "narrative": {"type": "string", "maxLength": NARRATIVE_CHARS},
            },
            "required": ["cause_id", "narrative"],
        }
        user = f"Evidence:\n{summary}\n\nCandidates: {', '.join(candidates)}"
        answer = self.model.complete_json(SYSTEM, user, schema, MAX_TOKENS, timeout_s)
        narrative = " ".join(str(answer.get("narrative", "")).split())[:NARRATIVE_CHARS]
        return str(answer["cause_id"]), narrative
