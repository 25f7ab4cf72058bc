"""The scenario library's files, and what each effect does to the planned traces.

The planners are deterministic for a seed and draw the same random numbers whatever the
active effects, so an effect is checked against the healthy plan of the same seed.
"""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from proveai_agent.simulate import PlannedSpan
from proveai_agent.simulate.agents import plan_task
from proveai_agent.simulate.changes import AgentApi, ChangePlayer, _header_key
from proveai_agent.simulate.faults import Effect
from proveai_agent.simulate.library import (
    LIBRARY,
    WORKSPACE,
    Scenario,
    ScenarioError,
    load,
    scenarios,
)
from proveai_agent.simulate.rag import CONTEXT_WINDOW, QUESTIONS, plan_query

VALID = """
class = "RETRIEVAL_DRIFT"
root_cause = "index-not-refreshed"
service = "rag-api"
description = "The index was not rebuilt."

[fault]
label = "searches miss"
retrieval_miss_ratio = 0.6

[fix]
action = "Rebuild the index."

[verification]
query = 'up{service="{rag}"}'
comparator = ">="
threshold = 0.75
window_s = 120

[[changes]]
at_s = -40
kind = "file"
service = "rag-api"
planted = true
path = "retrieval/search.toml"
replace = [["top_k = 4", "top_k = 5"]]

[[changes]]
at_s = -120
kind = "deploy"
service = "billing-api"
summary = "billing-api 3.1.0"

[[changes]]
at_s = -20
kind = "attribute"
service = "research-agent"
span = "chat"
key = "gen_ai.response.model"
value = "gpt-4o-2024-11-20"
"""


def write(tmp_path: Path, text: str, name: str = "some-scenario") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "scenario.toml").write_text(text)
    return folder / "scenario.toml"


def spans(plan: PlannedSpan, name: str) -> list[PlannedSpan]:
    return [span for span in plan.walk() if span.name == name]


def scores(plan: PlannedSpan) -> dict[str, float]:
    (chat,) = [s for s in plan.walk() if s.name.startswith("chat ")]
    return {
        str(e.attributes["gen_ai.evaluation.name"]): float(
            e.attributes["gen_ai.evaluation.score.value"]
        )
        for e in chat.events
        if e.name == "gen_ai.evaluation.result"
    }


# ---------------------------------------------------------------- the library


def test_every_scenario_folder_loads_with_its_ground_truth() -> None:
    found = scenarios()
    folders = sorted(p.parent.name for p in LIBRARY.glob("*/scenario.toml"))
    assert sorted(found) == [name for name in folders if not name.startswith("_")]
    for scenario in found.values():
        assert scenario.fix and scenario.verification.query
        assert (
            "{rag}" in scenario.verification.query or "{agent}" in scenario.verification.query
        )
        assert sum(change.planted for change in scenario.changes) == 1
        assert len(scenario.changes) >= 3


def test_the_verification_query_names_the_run_services() -> None:
    scenario = scenarios()["agent-loop-planner-prompt"]
    query = scenario.verification.for_run("s03").query
    assert 'service_name="research-agent-s03"' in query
    assert "{agent}" not in query


def test_a_valid_file_loads(tmp_path: Path) -> None:
    scenario = load(write(tmp_path, VALID))
    assert (scenario.name, scenario.failure_class, scenario.root_cause) == (
        "some-scenario",
        "RETRIEVAL_DRIFT",
        "index-not-refreshed",
    )
    assert [c.at_s for c in scenario.changes] == [-120, -40, -20]
    assert scenario.effect == Effect(retrieval_miss_ratio=0.6)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('class = "RETRIEVAL_DRIFT"', 'class = "SLOWNESS"', "is not a failure class"),
        ('root_cause = "index-not-refreshed"', 'root_cause = "Index Not"', "lowercase slug"),
        ('service = "rag-api"\ndesc', 'service = "billing"\ndesc', "service must be one of"),
        ("retrieval_miss_ratio = 0.6", "retrieval_miss_ratio = -1", "0 or more"),
        ("retrieval_miss_ratio = 0.6", "warp_factor = 9", "unknown effect 'warp_factor'"),
        ("retrieval_miss_ratio = 0.6", "retrieval_miss_ratio = 0", "changes nothing"),
        ('comparator = ">="', 'comparator = "~"', "comparator must be one of"),
        ("window_s = 120", "window_s = -5", "window_s must be a positive integer"),
        ('path = "retrieval/search.toml"', 'path = "../../etc/passwd"', "inside the workspace"),
        ('path = "retrieval/search.toml"', 'path = "/etc/passwd"', "inside the workspace"),
        ('path = "retrieval/search.toml"', 'path = "missing.txt"', "no workspace file"),
        ('"top_k = 4", "top_k = 5"', '"top_k = 99", "top_k = 5"', "is not in rag-api/"),
        ("planted = true\n", "", "exactly one change must be planted, found 0"),
        ('kind = "deploy"', 'kind = "reboot"', "kind must be one of"),
        ("at_s = -120", 'at_s = "soon"', "at_s must be a number"),
    ],
)
def test_a_bad_file_is_refused_with_where_and_why(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(ScenarioError, match=message) as raised:
        load(path)
    assert str(path) in str(raised.value)


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"scenario\.toml"):
        load(write(tmp_path, "class = [unclosed\n\x00"))


def test_a_scenario_needs_two_unrelated_changes(tmp_path: Path) -> None:
    text = VALID.split("[[changes]]\nat_s = -120")[0]
    with pytest.raises(ScenarioError, match="two unrelated changes"):
        load(write(tmp_path, text))


# ---------------------------------------------------------------- effects


def test_missed_searches_return_no_relevant_chunk_and_score_low() -> None:
    healthy = [plan_query(random.Random(i)) for i in range(200)]
    missed = [
        plan_query(random.Random(i), Effect(retrieval_miss_ratio=1.0)) for i in range(200)
    ]
    for plan in missed:
        (retrieve,) = spans(plan, "retrieve")
        if retrieve.error:
            continue
        question = next(
            q for q in QUESTIONS if q.text == retrieve.attributes["gen_ai.retrieval.query.text"]
        )
        documents = json.loads(str(retrieve.attributes["gen_ai.retrieval.documents"]))
        assert not {d["id"] for d in documents} & set(question.relevant)
    # Means by hand from the effect: relevance 0.87 healthy, 0.32 on a miss.
    relevance = [scores(p)["relevance"] for p in healthy if spans(p, "rerank")]
    relevance_missed = [scores(p)["relevance"] for p in missed if spans(p, "rerank")]
    assert sum(relevance) / len(relevance) == pytest.approx(0.87, abs=0.02)
    assert sum(relevance_missed) / len(relevance_missed) == pytest.approx(0.32, abs=0.02)


def test_more_output_tokens_multiply_the_healthy_count_of_the_same_seed() -> None:
    for seed in range(50):
        healthy = plan_query(random.Random(seed))
        longer = plan_query(random.Random(seed), Effect(output_token_factor=8.0))
        before = [s for s in healthy.walk() if s.name.startswith("chat ")]
        after = [s for s in longer.walk() if s.name.startswith("chat ")]
        if not before or "gen_ai.usage.output_tokens" not in before[0].attributes:
            continue
        tokens = int(before[0].attributes["gen_ai.usage.output_tokens"])
        assert after[0].attributes["gen_ai.usage.output_tokens"] == round(tokens * 8)


def test_an_overflowing_call_fills_the_context_window_and_is_cut_off() -> None:
    plans = [plan_query(random.Random(i), Effect(overflow_ratio=1.0)) for i in range(40)]
    chats = [s for p in plans for s in p.walk() if s.name.startswith("chat ")]
    with_usage = [c for c in chats if "gen_ai.usage.input_tokens" in c.attributes]
    assert with_usage
    for chat in with_usage:
        assert int(chat.attributes["gen_ai.usage.input_tokens"]) >= 0.93 * CONTEXT_WINDOW
        assert chat.attributes["gen_ai.response.finish_reasons"] == ["length"]


def test_a_looping_planner_repeats_one_search_with_the_same_arguments() -> None:
    for seed in range(20):
        plan = plan_task(random.Random(seed), Effect(loop_repeats=5))
        searches = spans(plan, "execute_tool web_search")
        arguments = [s.attributes["gen_ai.tool.call.arguments"] for s in searches]
        most = max(arguments.count(a) for a in arguments)
        # The first search plus 5 to 8 repeats of it.
        assert 6 <= most <= 9


def test_a_failing_tool_is_retried_with_the_same_arguments_each_time() -> None:
    plan = plan_task(random.Random(3), Effect(tool_error_retries=6))
    searches = spans(plan, "execute_tool web_search")
    failed = [s for s in searches if s.error]
    assert len(failed) == 7
    assert len({s.attributes["gen_ai.tool.call.arguments"] for s in failed}) == 1
    assert all(s.attributes["error.type"] == "SearchBackendError" for s in failed)


def test_a_slow_retriever_stretches_only_the_search() -> None:
    healthy = plan_query(random.Random(7))
    slow = plan_query(random.Random(7), Effect(retrieval_latency_factor=20.0))
    (before,) = spans(healthy, "retrieve")
    (after,) = spans(slow, "retrieve")
    ratio = (after.end_ns - after.start_ns) / (before.end_ns - before.start_ns)
    assert 20 * 0.85 <= ratio <= 20 * 1.15


# ---------------------------------------------------------------- changes


class Markers(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Markers.received.append((self.headers.get("X-API-Key", ""), body))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def markers() -> Any:
    Markers.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Markers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_changes_play_at_their_times_around_the_onset(tmp_path: Path, markers: str) -> None:
    scenario: Scenario = scenarios()["latency-slow-retriever"]
    player = ChangePlayer(scenario, 100.0, "x1", tmp_path, AgentApi(markers, "k-1"))
    search = tmp_path / "rag-api-x1" / "retrieval" / "search.toml"
    assert (
        search.read_text() == (WORKSPACE / "rag-api" / "retrieval" / "search.toml").read_text()
    )

    # At 100 - 120 s (clamped to 0) the unrelated marker, at 50 s the logging edit, at 75 s
    # the planted edit, at 80 s the unrelated attribute on the other service.
    assert len(player.play_due(0.0)) == 1
    assert Markers.received == [
        (
            "k-1",
            {
                "kind": "deploy",
                "service": "billing-api-x1",
                "summary": "billing-api 3.1.0: new invoice PDF layout",
                "version": "3.1.0",
            },
        )
    ]
    assert player.next_s() == 50.0
    player.play_due(74.9)
    assert "hnsw_ef = 64" in search.read_text()
    player.play_due(75.0)
    assert "hnsw_ef = 4096" in search.read_text()
    assert player.attributes("research-agent-x1") == ()
    player.play_due(80.0)
    assert player.attributes("research-agent-x1") == (
        ("chat", "gen_ai.response.model", "gpt-4o-2024-11-20"),
    )
    assert player.next_s() is None


def test_a_marker_the_agent_refuses_is_reported_not_fatal(tmp_path: Path) -> None:
    scenario = scenarios()["latency-slow-retriever"]
    player = ChangePlayer(scenario, 100.0, None, tmp_path, AgentApi("http://127.0.0.1:9", None))
    (line,) = player.play_due(0.0)
    assert "not sent" in line


def test_a_reused_workspace_already_as_it_should_be_is_not_rewritten(tmp_path: Path) -> None:
    scenario = scenarios()["latency-slow-retriever"]
    ChangePlayer(scenario, 100.0, None, tmp_path, AgentApi(None, None))
    search = tmp_path / "rag-api" / "retrieval" / "search.toml"
    before = search.stat().st_mtime_ns
    ChangePlayer(scenario, 100.0, None, tmp_path, AgentApi(None, None))
    assert search.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ("X-API-Key=abc", "abc"),
        ("x-api-key = a%2Cb , other=1", "a,b"),
        ("Authorization=Bearer%20tok", "tok"),
        ("Authorization=Basic%20xyz", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_the_key_comes_from_the_standard_headers_variable(headers: str, key: str | None):
    assert _header_key(headers) == key
