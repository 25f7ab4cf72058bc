"""The traffic simulator, observed through a local OTLP/HTTP receiver."""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import proveai_agent.simulate as simulate_package
from proveai_agent.simulate import agents, rag, runner
from proveai_agent.simulate.faults import Effect, Fault, FaultSchedule

SRC = Path(simulate_package.__file__).resolve().parents[2]
ENTRY = (
    "import argparse, sys\n"
    "from proveai_agent.simulate import runner\n"
    "parser = argparse.ArgumentParser()\n"
    "runner.add_arguments(parser)\n"
    "sys.exit(runner.run(parser.parse_args()))\n"
)
SECOND_NS = 1_000_000_000


# ---------------------------------------------------------------- the OTLP receiver


@dataclass
class Export:
    """One POST the receiver accepted."""

    path: str
    headers: dict[str, str]
    request: ExportTraceServiceRequest


@dataclass
class ReceivedSpan:
    service: str
    resource: dict[str, Any]
    span: Span

    @property
    def attributes(self) -> dict[str, Any]:
        return _attributes(self.span.attributes)


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint on 127.0.0.1 that keeps what it receives."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.exports: list[Export] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[ReceivedSpan]:
        with self.lock:
            exports = list(self.exports)
        found = []
        for export in exports:
            for resource_spans in export.request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append(ReceivedSpan(resource["service.name"], resource, span))
        return found


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_error(415)
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        headers = {key.lower(): value for key, value in self.headers.items()}
        with self.server.lock:
            self.server.exports.append(Export(self.path, headers, request))

        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = _start_receiver()
    yield server
    _stop_receiver(server)


def _start_receiver() -> Receiver:
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _stop_receiver(server: Receiver) -> None:
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- running the simulator


@dataclass
class Simulation:
    """A simulator subprocess and the lines it printed, each with the time it was read."""

    process: subprocess.Popen[str]
    lines: list[tuple[int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "\n".join(self.errors)

    def wait_for_line(self, text: str, timeout_s: float = 10.0) -> int:
        """The wall-clock time (ns) the first line containing `text` was read."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for at_ns, line in list(self.lines):
                if text in line:
                    return at_ns
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r} in {self.lines}")


def _environment(extra: dict[str, str] | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _start(*options: str, env: dict[str, str] | None = None) -> Simulation:
    process = subprocess.Popen(
        [sys.executable, "-u", "-c", ENTRY, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(env),
    )
    simulation = Simulation(process)

    def read_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            simulation.lines.append((time.time_ns(), line.rstrip("\n")))

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            simulation.errors.append(line.rstrip("\n"))

    for target in (read_stdout, read_stderr):
        reader = threading.Thread(target=target, daemon=True)
        reader.start()
        simulation.readers.append(reader)
    return simulation


def _finish(simulation: Simulation, timeout_s: float = 20.0) -> int:
    """Wait for the simulator to exit and for its output to be read; returns its exit code."""
    try:
        simulation.process.wait(timeout=timeout_s)
    finally:
        _kill(simulation)
    for reader in simulation.readers:
        reader.join(timeout=5)
    return simulation.process.returncode


def _kill(simulation: Simulation) -> None:
    if simulation.process.poll() is None:
        simulation.process.kill()
        simulation.process.wait()


@contextmanager
def _running(*options: str) -> Iterator[Simulation]:
    """A simulator without a duration, killed on the way out if the test did not stop it."""
    simulation = _start(*options)
    try:
        yield simulation
    finally:
        _kill(simulation)


def _run(*options: str, env: dict[str, str] | None = None) -> Simulation:
    simulation = _start(*options, env=env)
    returncode = _finish(simulation)
    assert returncode == 0, simulation.stderr
    return simulation


# ---------------------------------------------------------------- reading traces


def _traces(spans: list[ReceivedSpan]) -> dict[bytes, list[ReceivedSpan]]:
    traces: dict[bytes, list[ReceivedSpan]] = {}
    for span in spans:
        traces.setdefault(span.span.trace_id, []).append(span)
    return traces


def _root(trace: list[ReceivedSpan]) -> ReceivedSpan:
    (root,) = [span for span in trace if not span.span.parent_span_id]
    return root


def _in_order(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return sorted(spans, key=lambda span: (span.span.start_time_unix_nano, span.span.name))


def _service_traces(receiver: Receiver, service: str) -> list[list[ReceivedSpan]]:
    """A service's traces in the order they were sent (by their root's end)."""
    traces = [
        trace for trace in _traces(receiver.spans()).values() if trace[0].service == service
    ]
    return sorted(traces, key=lambda trace: _root(trace).span.end_time_unix_nano)


def _rag_chat(trace: list[ReceivedSpan]) -> ReceivedSpan | None:
    chats = [span for span in trace if span.span.name == "chat gpt-4o-mini"]
    return chats[0] if chats else None


def _rag_chats(receiver: Receiver) -> list[ReceivedSpan]:
    return [
        span
        for span in receiver.spans()
        if span.service == "rag-api" and span.span.name == "chat gpt-4o-mini"
    ]


def _summary(trace: list[ReceivedSpan]) -> list[tuple[str, Any, Any]]:
    """What the seed decides: span names and token counts, in start order."""
    return [
        (
            span.span.name,
            span.attributes.get("gen_ai.usage.input_tokens")
            or span.attributes.get("gen_ai.usage.prompt_tokens"),
            span.attributes.get("gen_ai.usage.output_tokens")
            or span.attributes.get("gen_ai.usage.completion_tokens"),
        )
        for span in _in_order(trace)
    ]


# ---------------------------------------------------------------- a healthy run


@dataclass
class Run:
    receiver: Receiver
    simulation: Simulation


@pytest.fixture(scope="module")
def healthy() -> Iterator[Run]:
    server = _start_receiver()
    try:
        simulation = _run(
            "--agent",
            server.url,
            "--api-key",
            "sim-key-1",
            "--seed",
            "11",
            "--rate",
            "20",
            "--duration",
            "3",
        )
        yield Run(server, simulation)
    finally:
        _stop_receiver(server)


def test_both_services_arrive_with_their_resource(healthy: Run) -> None:
    resources = {span.service: span.resource for span in healthy.receiver.spans()}

    assert set(resources) == {"rag-api", "research-agent"}
    for resource in resources.values():
        assert resource["service.version"]
        assert resource["deployment.environment.name"] == "demo"
        assert resource["service.instance.id"]
        assert resource["process.pid"] == healthy.simulation.process.pid
        assert "process.runtime.name" in resource


def test_rates_follow_the_option(healthy: Run) -> None:
    rag_traces = len(_service_traces(healthy.receiver, "rag-api"))
    agent_traces = len(_service_traces(healthy.receiver, "research-agent"))

    # 20/s and 5/s for 3 s: 60 and 15 expected, Poisson spread allowed.
    assert 35 <= rag_traces <= 90
    assert 5 <= agent_traces <= 30


def test_rag_trace_is_five_linked_spans_of_the_right_kinds(healthy: Run) -> None:
    trace = next(t for t in _service_traces(healthy.receiver, "rag-api") if len(t) == 5)
    by_name = {span.span.name: span.span for span in trace}
    root = by_name["POST /query"]

    assert set(by_name) == {
        "POST /query",
        "embed query",
        "retrieve",
        "rerank",
        "chat gpt-4o-mini",
    }
    assert root.parent_span_id == b""
    assert root.kind == Span.SPAN_KIND_SERVER
    for name in ("embed query", "retrieve", "rerank", "chat gpt-4o-mini"):
        assert by_name[name].parent_span_id == root.span_id
        assert by_name[name].trace_id == root.trace_id
        assert root.start_time_unix_nano <= by_name[name].start_time_unix_nano
        assert by_name[name].end_time_unix_nano <= root.end_time_unix_nano
    assert by_name["embed query"].kind == Span.SPAN_KIND_CLIENT
    assert by_name["retrieve"].kind == Span.SPAN_KIND_CLIENT
    assert by_name["rerank"].kind == Span.SPAN_KIND_INTERNAL
    assert by_name["chat gpt-4o-mini"].kind == Span.SPAN_KIND_CLIENT
    steps = [
        by_name[name] for name in ("embed query", "retrieve", "rerank", "chat gpt-4o-mini")
    ]
    for before, after in itertools.pairwise(steps):
        assert before.end_time_unix_nano <= after.start_time_unix_nano


def test_rag_traces_end_when_they_are_sent(healthy: Run) -> None:
    roots = [_root(trace).span for trace in _service_traces(healthy.receiver, "rag-api")]
    started_ns = healthy.simulation.lines[0][0]

    # Spans are back-dated, not slept through: every trace ends during the 3 s run.
    assert all(root.end_time_unix_nano >= started_ns - SECOND_NS for root in roots)
    assert all(root.end_time_unix_nano <= started_ns + 4 * SECOND_NS for root in roots)


def test_embed_and_retrieve_spans_carry_their_attributes(healthy: Run) -> None:
    trace = next(t for t in _service_traces(healthy.receiver, "rag-api") if len(t) == 5)
    embed = next(span for span in trace if span.span.name == "embed query").attributes
    retrieve = next(span for span in trace if span.span.name == "retrieve").attributes

    assert embed["gen_ai.operation.name"] == "embeddings"
    assert embed["gen_ai.request.model"] == "all-minilm-l6-v2"
    assert embed["gen_ai.provider.name"] == "local"
    assert retrieve["db.system.name"] == "qdrant"
    documents = json.loads(retrieve["gen_ai.retrieval.documents"])
    assert len(documents) == 4
    for document in documents:
        assert set(document) == {"id", "content", "score"}
        assert document["content"]
        assert 0.0 <= document["score"] <= 1.0


def test_rag_chat_span_carries_genai_attributes(healthy: Run) -> None:
    with_usage = [
        span
        for span in _rag_chats(healthy.receiver)
        if "gen_ai.usage.input_tokens" in span.attributes
    ]
    chat = with_usage[0].attributes

    assert chat["gen_ai.operation.name"] == "chat"
    assert chat["gen_ai.provider.name"] == "openai"
    assert chat["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat["gen_ai.response.model"].startswith("gpt-4o-mini")
    assert chat["gen_ai.response.finish_reasons"] == ["stop"]
    assert isinstance(chat["gen_ai.usage.input_tokens"], int)
    assert isinstance(chat["gen_ai.usage.output_tokens"], int)
    assert chat["gen_ai.usage.input_tokens"] > 0 and chat["gen_ai.usage.output_tokens"] > 0
    for key, roles in (
        ("gen_ai.input.messages", ["system", "user"]),
        ("gen_ai.output.messages", ["assistant"]),
    ):
        messages = json.loads(chat[key])
        assert [message["role"] for message in messages] == roles
        for message in messages:
            assert message["parts"][0]["type"] == "text"
            assert message["parts"][0]["content"]


def test_some_streamed_rag_chats_report_no_usage(healthy: Run) -> None:
    chats = [span.attributes for span in _rag_chats(healthy.receiver)]
    unknown = [chat for chat in chats if "gen_ai.usage.input_tokens" not in chat]

    # 30 % streamed, a quarter of those without usage: about 7.5 % of ~60 calls.
    assert 0 < len(unknown) < len(chats) * 0.3
    assert all(chat["gen_ai.request.stream"] is True for chat in unknown)


def test_rag_chat_span_carries_evaluation_events(healthy: Run) -> None:
    trace = next(t for t in _service_traces(healthy.receiver, "rag-api") if len(t) == 5)
    chat = _rag_chat(trace)
    assert chat is not None
    events = [event for event in chat.span.events if event.name == "gen_ai.evaluation.result"]
    scores = {
        _attributes(event.attributes)["gen_ai.evaluation.name"]: _attributes(event.attributes)[
            "gen_ai.evaluation.score.value"
        ]
        for event in events
    }

    assert set(scores) == {"relevance", "groundedness", "coherence"}
    assert all(0.0 <= score <= 1.0 for score in scores.values())


def test_healthy_run_has_no_failed_chat_spans(healthy: Run) -> None:
    spans = healthy.receiver.spans()
    chats = [span for span in spans if span.span.name.startswith("chat ")]

    assert chats
    assert all(span.span.status.code != Status.STATUS_CODE_ERROR for span in chats)


def test_agent_trace_plans_searches_researches_and_synthesises(healthy: Run) -> None:
    trace = _service_traces(healthy.receiver, "research-agent")[0]
    root = _root(trace)
    children = _in_order(
        [span for span in trace if span.span.parent_span_id == root.span.span_id]
    )
    names = [span.span.name for span in children]
    tools = [span for span in children if span.span.name == "execute_tool web_search"]

    assert root.span.name == "invoke_agent planner"
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "planner"
    assert names[0] == "chat gpt-4o"
    assert 1 <= len(tools) <= 3
    assert names[-2:] == ["invoke_agent research", "invoke_agent synthesis"]
    arguments = [json.loads(tool.attributes["gen_ai.tool.call.arguments"]) for tool in tools]
    assert len({argument["query"] for argument in arguments}) == len(tools)
    for tool in tools:
        assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
        assert tool.attributes["gen_ai.tool.name"] == "web_search"
    for agent in children[-2:]:
        agent_chats = [s for s in trace if s.span.parent_span_id == agent.span.span_id]
        assert agent_chats
        assert all(chat.span.name.startswith("chat ") for chat in agent_chats)
        assert agent.attributes["gen_ai.agent.name"] in {"research", "synthesis"}


def test_agent_chat_spans_use_the_deprecated_names(healthy: Run) -> None:
    chats = [
        span
        for span in healthy.receiver.spans()
        if span.service == "research-agent" and span.span.name.startswith("chat ")
    ]
    chat = chats[0]

    assert chat.attributes["gen_ai.system"] == "openai"
    assert "gen_ai.provider.name" not in chat.attributes
    assert isinstance(chat.attributes["gen_ai.usage.prompt_tokens"], int)
    assert isinstance(chat.attributes["gen_ai.usage.completion_tokens"], int)
    assert "gen_ai.usage.input_tokens" not in chat.attributes
    event_names = [event.name for event in chat.span.events]
    assert event_names == ["gen_ai.content.prompt", "gen_ai.content.completion"]


def test_api_key_option_sends_the_header_to_the_agent_url(healthy: Run) -> None:
    exports = healthy.receiver.exports

    assert exports
    assert all(export.path == "/v1/traces" for export in exports)
    assert all(export.headers.get("x-api-key") == "sim-key-1" for export in exports)


def test_start_line_names_destination_rates_seed_and_fault(healthy: Run) -> None:
    lines = [line for _, line in healthy.simulation.lines]

    assert len(lines) == 1
    assert f"{healthy.receiver.url}/v1/traces" in lines[0]
    assert "rag-api 20 traces/s" in lines[0]
    assert "research-agent 5 traces/s" in lines[0]
    assert "seed 11" in lines[0]
    assert "fault: none" in lines[0]
    assert "sim-key-1" not in lines[0]


def test_same_seed_sends_the_same_traces(healthy: Run, receiver: Receiver) -> None:
    _run("--agent", receiver.url, "--seed", "11", "--rate", "20", "--duration", "2")

    for service in ("rag-api", "research-agent"):
        first = [_summary(trace) for trace in _service_traces(healthy.receiver, service)]
        second = [_summary(trace) for trace in _service_traces(receiver, service)]
        common = min(len(first), len(second))
        assert common >= 5
        assert first[:common] == second[:common]


# ---------------------------------------------------------------- faults


def test_errors_fault_fails_chat_calls_only_while_it_is_active(receiver: Receiver) -> None:
    simulation = _run(
        "--agent",
        receiver.url,
        "--seed",
        "5",
        "--rate",
        "20",
        "--duration",
        "3",
        "--inject",
        "errors",
        "--at",
        "1",
        "--fix-at",
        "2",
    )
    started_ns = simulation.wait_for_line("fault started")
    stopped_ns = simulation.wait_for_line("fault stopped")
    traces = _service_traces(receiver, "rag-api")
    failed = [
        t
        for t in traces
        if (c := _rag_chat(t)) and c.span.status.code == Status.STATUS_CODE_ERROR
    ]
    tolerance_ns = SECOND_NS // 5

    assert (stopped_ns - started_ns) / SECOND_NS == pytest.approx(1.0, abs=0.2)
    assert len(failed) >= 3
    for trace in failed:
        chat = _rag_chat(trace)
        root = _root(trace)
        assert chat is not None
        assert started_ns - tolerance_ns <= root.span.end_time_unix_nano <= stopped_ns
        assert chat.attributes["error.type"] == "openai.InternalServerError"
        assert chat.span.status.message == "503 Service Unavailable"
        (exception,) = [event for event in chat.span.events if event.name == "exception"]
        assert _attributes(exception.attributes)["exception.type"] == (
            "openai.InternalServerError"
        )
        assert _attributes(exception.attributes)["exception.message"] == (
            "503 Service Unavailable"
        )
        assert root.span.status.code == Status.STATUS_CODE_ERROR
    early_or_late = [
        chat
        for t in traces
        if (chat := _rag_chat(t))
        and not started_ns - tolerance_ns <= _root(t).span.end_time_unix_nano <= stopped_ns
    ]
    assert len(early_or_late) >= 10
    assert all(chat.span.status.code != Status.STATUS_CODE_ERROR for chat in early_or_late)
    agent_spans = [s for s in receiver.spans() if s.service == "research-agent"]
    assert all(span.span.status.code != Status.STATUS_CODE_ERROR for span in agent_spans)


def test_latency_fault_stretches_chat_and_root_spans(receiver: Receiver) -> None:
    _run(
        "--agent",
        receiver.url,
        "--seed",
        "6",
        "--rate",
        "20",
        "--duration",
        "1.5",
        "--inject",
        "latency",
    )
    traces = [t for t in _service_traces(receiver, "rag-api") if _rag_chat(t)]

    assert traces
    for trace in traces:
        chat = _rag_chat(trace)
        assert chat is not None
        chat_s = (chat.span.end_time_unix_nano - chat.span.start_time_unix_nano) / SECOND_NS
        root = _root(trace).span
        root_s = (root.end_time_unix_nano - root.start_time_unix_nano) / SECOND_NS
        # A healthy chat call takes 0.4–1.6 s; eight times that (±15 %) is at least 2.72 s.
        assert chat_s >= 2.7
        assert root_s > chat_s


def test_control_file_with_fix_stops_the_fault(receiver: Receiver, tmp_path: Path) -> None:
    control = tmp_path / "control"
    options = ("--agent", receiver.url, "--inject", "errors", "--control", str(control))
    with _running(*options) as simulation:
        simulation.wait_for_line("fault started")
        control.write_text("fix\n")
        simulation.wait_for_line("fault stopped: errors on rag-api (control file)", 3.0)
        simulation.process.send_signal(signal.SIGTERM)
        assert _finish(simulation) == 0


def test_sigterm_flushes_what_was_planned_and_exits_zero(receiver: Receiver) -> None:
    with _running("--agent", receiver.url, "--rate", "20", "--seed", "2") as simulation:
        simulation.wait_for_line("sending to")
        time.sleep(1.0)
        # The batch processor would wait 5 s; only the flush on SIGTERM sends this soon.
        simulation.process.send_signal(signal.SIGTERM)
        assert _finish(simulation) == 0

    assert {span.service for span in receiver.spans()} == {"rag-api", "research-agent"}


# ---------------------------------------------------------------- the standard variables


def test_standard_endpoint_and_headers_variables_are_honoured(receiver: Receiver) -> None:
    simulation = _run(
        "--rate",
        "20",
        "--duration",
        "1",
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=env-key,x-tenant=demo",
        },
    )

    assert receiver.exports
    assert all(export.path == "/v1/traces" for export in receiver.exports)
    assert all(export.headers.get("x-api-key") == "env-key" for export in receiver.exports)
    assert all(export.headers.get("x-tenant") == "demo" for export in receiver.exports)
    assert "env-key" not in simulation.lines[0][1]


def test_standard_traces_endpoint_variable_is_used_as_given(receiver: Receiver) -> None:
    _run(
        "--rate",
        "20",
        "--duration",
        "1",
        "--api-key",
        "option-key",
        env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.url}/custom/traces"},
    )

    assert receiver.exports
    assert all(export.path == "/custom/traces" for export in receiver.exports)
    assert all(export.headers.get("x-api-key") == "option-key" for export in receiver.exports)


# ---------------------------------------------------------------- options without traffic


def _parse(*options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    return parser.parse_args(list(options))


def test_a_scenario_plays_its_fault_until_fix_at_and_reverts_its_planted_attribute(
    receiver: Receiver, tmp_path: Path
) -> None:
    simulation = _run(
        "--agent",
        receiver.url,
        "--seed",
        "4",
        "--rate",
        "20",
        "--duration",
        "3",
        "--scenario",
        "latency-model-version",
        "--onset",
        "1",
        "--fix-at",
        "2",
        "--workdir",
        str(tmp_path),
        "--service-suffix",
        "t1",
    )
    started_ns = simulation.wait_for_line("fault started: model calls are four times slower")
    stopped_ns = simulation.wait_for_line("(--fix-at)")
    chats = [
        span
        for span in receiver.spans()
        if span.service == "rag-api-t1" and span.span.name == "chat gpt-4o-mini"
    ]
    during = [c for c in chats if started_ns < c.span.end_time_unix_nano < stopped_ns]
    after = [c for c in chats if c.span.end_time_unix_nano > stopped_ns + SECOND_NS // 5]

    assert during and after
    # The planted change: a new model snapshot, four times slower (0.4 s × 4 × 0.85 at least).
    for chat in during:
        assert chat.attributes["gen_ai.response.model"] == "gpt-4o-mini-2025-04-14"
        assert chat.span.end_time_unix_nano - chat.span.start_time_unix_nano >= 1.36e9
    for chat in after:
        assert chat.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    # The unrelated changes were played too: the file edit in the run's workspace.
    logging = tmp_path / "rag-api-t1" / "config" / "logging.yaml"
    assert "level: DEBUG" in logging.read_text()


def test_a_scenario_refuses_inject_and_onset_needs_a_scenario(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert runner.run(_parse("--scenario", "latency-model-version", "--inject", "errors")) == 2
    assert "drop --inject" in capsys.readouterr().err
    assert runner.run(_parse("--onset", "5")) == 2
    assert "--onset needs --scenario" in capsys.readouterr().err
    assert runner.run(_parse("--scenario", "latency-model-version", "--fix-at", "5")) == 2
    assert "--fix-at must come after the onset" in capsys.readouterr().err


def test_list_prints_name_class_and_root_cause_of_every_scenario_folder(
    capsys: pytest.CaptureFixture[str],
) -> None:
    folders = sorted(
        path.parent.name
        for path in (SRC / "proveai_agent" / "simulate" / "scenarios").glob("*/scenario.toml")
    )
    assert runner.run(_parse("--list")) == 0
    rows = [line.split(" ") for line in capsys.readouterr().out.splitlines()]

    assert [row[0] for row in rows] == folders
    assert all(len(row) == 3 for row in rows)
    causes: dict[str, set[str]] = {}
    for _, failure_class, root_cause in rows:
        causes.setdefault(failure_class, set()).add(root_cause)
    assert sorted(causes) == sorted(
        [
            "HALLUCINATION",
            "RETRIEVAL_DRIFT",
            "COHERENCE_DEGRADATION",
            "AGENT_LOOP",
            "LATENCY_REGRESS",
            "CONTEXT_OVERFLOW",
            "PROMPT_REGRESSION",
            "TOKEN_EXPLOSION",
        ]
    )
    assert all(len(found) >= 2 for found in causes.values())


def test_unknown_scenario_exits_two_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.run(_parse("--scenario", "no-such-thing")) == 2
    assert "unknown scenario 'no-such-thing'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options",
    [("--at", "5"), ("--fix-at", "5"), ("--inject", "errors", "--at", "5", "--fix-at", "3")],
)
def test_fault_timing_without_a_sensible_fault_exits_two(
    options: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert runner.run(_parse(*options)) == 2
    assert capsys.readouterr().err.startswith("proveai-agent simulate: error:")


# ---------------------------------------------------------------- planning, no network


def test_errors_effect_fails_about_forty_percent_of_rag_chats() -> None:
    pipeline = rag.RagPipeline(seed=1)
    effect = Fault("errors").effect()
    plans = [pipeline.next_trace(effect) for _ in range(2000)]
    chats = [s for plan in plans for s in plan.walk() if s.name == "chat gpt-4o-mini"]

    failed = sum(1 for chat in chats if chat.error is not None)
    assert failed / len(chats) == pytest.approx(0.4, abs=0.04)


def test_healthy_rag_errors_are_rare() -> None:
    pipeline = rag.RagPipeline(seed=2)
    plans = [pipeline.next_trace() for _ in range(5000)]

    failed = sum(1 for plan in plans if plan.error is not None)
    assert failed / len(plans) < 0.01


def test_plans_depend_only_on_the_seed() -> None:
    def names(source: Any) -> list[list[str]]:
        return [[s.name for s in source.next_trace(Effect()).walk()] for _ in range(50)]

    assert names(rag.RagPipeline(7)) == names(rag.RagPipeline(7))
    assert names(agents.AgentSystem(7)) == names(agents.AgentSystem(7))
    assert names(agents.AgentSystem(7)) != names(agents.AgentSystem(8))


def test_schedule_starts_and_stops_a_fault_on_time() -> None:
    schedule = FaultSchedule([Fault("latency", start_s=10, stop_s=20)], control_file=None)

    assert schedule.update(9.9) == []
    assert schedule.effect("rag-api").latency_factor == 1.0
    assert schedule.update(10.0) == ["fault started: latency on rag-api (chat calls 8x slower)"]
    assert schedule.effect("rag-api").latency_factor == 8.0
    assert schedule.effect("research-agent").latency_factor == 1.0
    assert schedule.update(20.0) == ["fault stopped: latency on rag-api (--fix-at)"]
    assert schedule.effect("rag-api").latency_factor == 1.0


def test_control_file_left_from_an_earlier_run_stops_nothing(tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.write_text("fix")
    schedule = FaultSchedule([Fault("errors")], control_file=control)

    schedule.update(0.0)
    assert schedule.update(1.0) == []
    assert schedule.effect("rag-api").error_ratio == 0.4

    os.utime(control, ns=(time.time_ns() + SECOND_NS, time.time_ns() + SECOND_NS))
    assert schedule.update(2.0) == ["fault stopped: errors on rag-api (control file)"]
    assert schedule.effect("rag-api").error_ratio == 0.0


def test_rng_streams_are_independent_of_the_global_random_state() -> None:
    random.seed(1)
    first = rag.RagPipeline(3).next_trace()
    random.seed(2)
    second = rag.RagPipeline(3).next_trace()

    assert first == second
