"""Class scores and change correlation of a case, on hand-built signals and changes.

Weights used below (cases/correlate.py): signal specificity agent_loop 1.0, score_drop 0.9,
latency_regression and error_spike 0.8; a change lifts a class by 0.15 × time weight ×
affinity; scores are then divided by the largest.
"""

from __future__ import annotations

from typing import Any

import pytest

from proveai_agent.cases.correlate import assess, base_scores, time_weight, topics
from proveai_agent.store.changes import Change

T = 1_800_000_000.0
"""When the case's first signal was seen."""


def signal(kind: str, failure_class: str, **candidates: float) -> dict[str, Any]:
    return {"kind": kind, "failure_class": failure_class, "candidates": candidates}


def change(at: float, kind: str, source: str, summary: str, service: str = "rag-api") -> Change:
    return Change(
        at=at,
        service=service,
        kind=kind,
        summary=summary,
        before=None,
        after=None,
        source=source,
    )


def doc(c: Change) -> dict[str, Any]:
    return {"summary": c.summary, "service": c.service, "kind": c.kind, "source": c.source}


def test_topics_come_from_the_file_folder_and_name_not_the_whole_path() -> None:
    # The workspace sits under a folder named "search-results": only "retrieval/search.toml"
    # and the summary count.
    edit = change(T, "file", "/srv/search-results/app/config/logging.yaml", "logging.yaml: 2")
    assert topics(edit) == set()
    assert topics(change(T, "file", "/srv/app/retrieval/search.toml", "search.toml: 2")) == {
        "retrieval"
    }
    assert topics(change(T, "file", "/srv/app/prompts/answer.txt", "answer.txt: 4")) == {
        "prompt"
    }


def test_a_deploy_marker_is_about_deploying_and_what_its_summary_names() -> None:
    marker = change(T, "deploy", "api", "serve the answer model as a 4-bit quantised build")
    assert topics(marker) == {"deploy", "model"}
    assert topics(change(T, "deploy", "api", "new invoice PDF layout")) == {"deploy"}


def test_an_attribute_change_is_about_its_key_and_the_spans_it_moved_on() -> None:
    moved = change(
        T,
        "attribute",
        "gen_ai.request.model",
        "gen_ai.request.model of embeddings changed from minilm to bge-small",
    )
    assert topics(moved) == {"model", "embedding"}


@pytest.mark.parametrize(
    ("before_s", "weight"),
    [(0, 1.0), (900, 1.0), (2250, 0.65), (3600, 0.3), (3601, 0.0), (-1, 0.0)],
)
def test_time_weight_is_full_for_15_minutes_then_falls_to_a_third_at_an_hour(
    before_s: float, weight: float
) -> None:
    # Between 900 s and 3600 s the weight falls linearly from 1 to 0.3: at 2250 s, half way,
    # it is 1 − 0.5 × 0.7 = 0.65. A change after the first signal cannot have caused it.
    assert time_weight(T - before_s, T) == pytest.approx(weight)


def test_base_scores_weigh_specific_signals_above_their_symptoms() -> None:
    # agent_loop 1.0 × 1.0; latency 0.8 × 1.0; error spike 0.8 × 1.0; divided by 1.0.
    scores = base_scores(
        [
            signal("latency_regression", "LATENCY_REGRESS"),
            signal("agent_loop", "AGENT_LOOP", AGENT_LOOP=1.0),
            signal("error_spike", "ERROR_SPIKE"),
        ]
    )
    assert scores == {"AGENT_LOOP": 1.0, "LATENCY_REGRESS": 0.8, "ERROR_SPIKE": 0.8}


def test_the_planted_change_is_marked_and_unrelated_ones_are_listed_unmarked() -> None:
    signals = [signal("score_drop", "RETRIEVAL_DRIFT", RETRIEVAL_DRIFT=0.8, HALLUCINATION=0.3)]
    index = change(T - 40, "file", "/w/rag-api/retrieval/index_manifest.json", "manifest: 3")
    logging = change(T - 50, "file", "/w/rag-api/config/logging.yaml", "logging.yaml: 2")
    billing = change(T - 120, "deploy", "api", "invoice PDF layout", service="billing-api")
    other = change(T - 20, "attribute", "gen_ai.response.model", "model of chat", "agent")

    scores, recent = assess("rag-api", signals, T, [billing, logging, index, other], doc)

    by_summary = {item["summary"]: item for item in recent}
    # index: time 1 × (RETRIEVAL_DRIFT 1.0 × retrieval/index affinity 1.0) = 1.0.
    assert by_summary["manifest: 3"]["correlated"] is True
    assert by_summary["manifest: 3"]["correlation"] == 1.0
    # logging: no topic, affinity 0.1 → 0.1. Other services: 0.
    assert by_summary["logging.yaml: 2"]["correlation"] == pytest.approx(0.1)
    assert [item["correlated"] for item in recent] == [True, False, False, False]
    assert recent[0]["summary"] == "manifest: 3"
    # RETRIEVAL_DRIFT 1.0 + 0.15 × 1.0 = 1.15; HALLUCINATION 0.3/0.8 = 0.375 + 0.15 × 0.5
    # (retrieval affinity) = 0.45; divided by 1.15.
    assert scores["RETRIEVAL_DRIFT"] == 1.0
    assert scores["HALLUCINATION"] == pytest.approx(0.45 / 1.15, abs=1e-3)


def test_a_change_after_the_first_signal_is_listed_nowhere_near_the_cause() -> None:
    signals = [signal("latency_regression", "LATENCY_REGRESS")]
    later = change(T + 30, "file", "/w/rag-api/retrieval/search.toml", "search.toml: 2")
    _, recent = assess("rag-api", signals, T, [later], doc)
    assert recent[0]["correlated"] is False
    assert recent[0]["correlation"] == 0.0


def test_a_prompt_change_before_a_quality_drop_supports_prompt_regression() -> None:
    # relevance drop: RETRIEVAL_DRIFT 0.8, HALLUCINATION 0.3 → base 1.0 and 0.375.
    # The template edit correlates with RETRIEVAL_DRIFT at 1.0 × prompt affinity 0.3 = 0.3 and
    # with HALLUCINATION at 0.375 × 0.6 = 0.225: not marked by those classes alone...
    signals = [signal("score_drop", "RETRIEVAL_DRIFT", RETRIEVAL_DRIFT=0.8, HALLUCINATION=0.3)]
    edit = change(T - 25, "file", "/w/rag-api/prompts/answer.txt", "answer.txt: 4 lines")
    scores, recent = assess("rag-api", signals, T, [edit], doc)
    assert recent[0]["correlated"] is False
    assert "PROMPT_REGRESSION" not in scores


def test_a_prompt_change_before_an_agent_loop_is_marked_and_ranks_prompt_regression_second():
    signals = [
        signal("agent_loop", "AGENT_LOOP", AGENT_LOOP=1.0),
        signal("latency_regression", "LATENCY_REGRESS"),
    ]
    edit = change(T - 30, "file", "/w/app/prompts/planner.txt", "planner.txt: 3")
    scores, recent = assess("rag-api", signals, T, [edit], doc)
    # AGENT_LOOP: 1.0 + 0.15 × prompt affinity 1.0 = 1.15. PROMPT_REGRESSION: 0.9 × 1.0 +
    # 0.15 × 1.0 = 1.05. LATENCY_REGRESS: 0.8 + 0.15 × 0 (no prompt affinity) = 0.8.
    assert recent[0]["correlated"] is True
    assert list(scores) == ["AGENT_LOOP", "PROMPT_REGRESSION", "LATENCY_REGRESS"]
    assert scores["PROMPT_REGRESSION"] == pytest.approx(1.05 / 1.15, abs=1e-3)
    assert scores["LATENCY_REGRESS"] == pytest.approx(0.8 / 1.15, abs=1e-3)


def test_no_signals_give_no_scores_and_mark_nothing() -> None:
    edit = change(T - 30, "file", "/w/rag-api/prompts/answer.txt", "answer.txt: 3")
    scores, recent = assess("rag-api", [], T, [edit], doc)
    assert scores == {}
    assert recent[0]["correlated"] is False


def test_words_count_at_the_start_of_a_word_only_and_the_service_name_says_nothing() -> None:
    # "research" holds "search" but is no search; the service's own name is left out too.
    marker = change(T, "deploy", "api", "research-agent 0.9.2: keep the whole history")
    marker.service = "research-agent"
    assert topics(marker) == {"deploy", "context"}
    assert topics(change(T, "deploy", "api", "web_search client 2.0")) == {
        "deploy",
        "retrieval",
    }


def test_a_file_is_about_its_path_and_its_lines_only_when_the_path_says_nothing() -> None:
    template = change(
        T,
        "file",
        "/w/app/prompts/answer.txt",
        "answer.txt: 2 lines changed (+1 -1): -cite the chunk ids",
    )
    assert topics(template) == {"prompt"}
    plain = change(
        T,
        "file",
        "/w/app/config/app.yaml",
        "app.yaml: 2 lines changed (+1 -1): -temperature: 0.2",
    )
    assert topics(plain) == {"generation"}
