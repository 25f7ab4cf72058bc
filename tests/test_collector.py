"""The stack's collector (stack/collector): its config yields the series the agent reads.

The first test reads config.yaml alone. The others build the distribution with
stack/collector/build.sh (cached outside the clone, so only the first run compiles) and
are skipped, with the reason, when no Go toolchain is found, the modules cannot be
downloaded or the build runs out of time. A failing compile is a failure.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from proveai_agent.watch.schemes import OURS, scheme_from_names

COLLECTOR_DIR = Path(__file__).resolve().parent.parent / "stack" / "collector"
CONFIG = COLLECTOR_DIR / "config.yaml"
BUILD_TIMEOUT_S = 1800

# From the design's metrics contract.
CALLS = "llm_traces_span_metrics_calls_total"
DURATION = "llm_traces_span_metrics_duration_seconds"
BUCKETS_S = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
LE_VALUES = ["0.1", "0.5", "1", "5", "10", "30", "60", "120", "300", "+Inf"]
GENAI_DIMENSIONS = ["gen_ai.request.model", "gen_ai.operation.name", "gen_ai.provider.name"]
LABELS = {
    "service_name",
    "span_name",
    "span_kind",
    "status_code",
    "gen_ai_request_model",
    "gen_ai_operation_name",
    "gen_ai_provider_name",
}

# The Prometheus translation's unit suffixes for the connector's two histogram units.
UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds"}


# A reader for the plain block YAML that config.yaml is written in: nested mappings,
# "- " sequences (of scalars or of mappings), [a, b] flow lists and # comments.

_MAPPING_ITEM = re.compile(r"[\w./-]+:(\s|$)")


def _load_block_yaml(text: str) -> Any:
    """The document as dicts, lists and strings (every scalar stays a string)."""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        content = "" if raw.lstrip().startswith("#") else raw.split(" #", 1)[0].rstrip()
        if content.strip():
            lines.append((len(content) - len(content.lstrip()), content.strip()))
    value, _ = _node(lines, 0, lines[0][0])
    return value


def _node(lines: list[tuple[int, str]], pos: int, indent: int) -> tuple[Any, int]:
    """The mapping or sequence whose lines start at `pos` with this indent, and the line
    after it. A "- key: value" item is read as a mapping indented two further."""
    if lines[pos][1].startswith("- "):
        items: list[Any] = []
        while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- "):
            rest = lines[pos][1][2:].strip()
            if _MAPPING_ITEM.match(rest):
                lines[pos] = (indent + 2, rest)
                item, pos = _node(lines, pos, indent + 2)
            else:
                item, pos = _scalar(rest), pos + 1
            items.append(item)
        return items, pos

    mapping: dict[str, Any] = {}
    while pos < len(lines) and lines[pos][0] == indent:
        key, _, rest = lines[pos][1].partition(":")
        pos += 1
        if rest.strip():
            mapping[key] = _scalar(rest.strip())
        elif pos < len(lines) and (
            lines[pos][0] > indent
            or (lines[pos][0] == indent and lines[pos][1].startswith("- "))
        ):
            mapping[key], pos = _node(lines, pos, lines[pos][0])
        else:
            mapping[key] = None
    return mapping, pos


def _scalar(text: str) -> Any:
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(part.strip()) for part in text[1:-1].split(",") if part.strip()]
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _seconds(duration: str) -> float:
    """A Go duration as the config writes bucket bounds ("100ms", "5s", "2m") in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, f"not a duration this test reads: {duration!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]


def _exported_names(prometheus: dict[str, Any], span_metrics: dict[str, Any]) -> list[str]:
    """The names the Prometheus exporter gives the connector's calls counter and duration
    histogram: exporter namespace, connector namespace with dots as underscores, the
    metric, then the unit and type suffixes."""
    assert prometheus["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    base = f"{prometheus['namespace']}_{span_metrics['namespace'].replace('.', '_')}"
    unit = UNIT_SUFFIX[span_metrics["histogram"]["unit"]]
    duration = f"{base}_duration_{unit}"
    return [f"{base}_calls_total", f"{duration}_bucket", f"{duration}_sum", f"{duration}_count"]


def test_config_gives_the_series_names_and_labels_the_watcher_reads() -> None:
    config = _load_block_yaml(CONFIG.read_text())
    span_metrics = config["connectors"]["span_metrics"]
    prometheus = config["exporters"]["prometheus"]

    assert span_metrics["namespace"] == "traces.span.metrics"
    assert span_metrics["histogram"]["unit"] == "s"
    buckets = [_seconds(b) for b in span_metrics["histogram"]["explicit"]["buckets"]]
    assert buckets == pytest.approx(BUCKETS_S)
    assert [d["name"] for d in span_metrics["dimensions"]] == GENAI_DIMENSIONS
    assert [d["default"] for d in span_metrics["dimensions"]] == ["", "", ""]
    assert span_metrics["exclude_dimensions"] == ["collector.instance.id"]
    assert prometheus["namespace"] == "llm"
    assert prometheus["without_scope_info"] == "true"

    names = _exported_names(prometheus, span_metrics)
    assert names == [CALLS, f"{DURATION}_bucket", f"{DURATION}_sum", f"{DURATION}_count"]
    labels = {"service_name", "span_name", "span_kind", "status_code"} | {
        d.replace(".", "_") for d in GENAI_DIMENSIONS
    }
    assert labels == LABELS

    scheme = scheme_from_names(names)
    assert scheme is not None
    assert (scheme.prefix, scheme.calls, scheme.duration) == (OURS, CALLS, DURATION)
    assert (scheme.to_seconds, scheme.span_label, scheme.origin) == (
        1.0,
        "span_name",
        "connector",
    )


def test_config_sends_traces_to_span_metrics_and_the_agent_but_not_to_debug() -> None:
    service = _load_block_yaml(CONFIG.read_text())["service"]
    traces = service["pipelines"]["traces"]

    assert traces["receivers"] == ["otlp"]
    assert traces["processors"] == ["memory_limiter", "batch"]
    assert traces["exporters"] == ["span_metrics", "otlp_http/agent"]
    assert service["pipelines"]["metrics/span_metrics"] == {
        "receivers": ["span_metrics"],
        "exporters": ["prometheus"],
    }
    for pipeline in service["pipelines"].values():
        assert "debug" not in pipeline["exporters"]


# With the built binary.


@pytest.fixture(scope="module")
def collector() -> Path:
    """The otelcol-proveai binary, built (or found in the cache) by build.sh."""
    try:
        done = subprocess.run(
            ["bash", str(COLLECTOR_DIR / "build.sh")],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"building the collector took over {BUILD_TIMEOUT_S} s")
    tail = done.stderr.strip()[-2000:]
    if done.returncode == 3:
        pytest.skip(f"no Go toolchain to build the collector: {tail}")
    if done.returncode == 4:
        pytest.skip(f"the collector's Go modules cannot be downloaded: {tail}")
    assert done.returncode == 0, f"build.sh failed ({done.returncode}):\n{tail}"
    binary = Path(done.stdout.strip().splitlines()[-1])
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Ports:
    grpc: int = field(default_factory=_free_port)
    http: int = field(default_factory=_free_port)
    metrics: int = field(default_factory=_free_port)
    telemetry: int = field(default_factory=_free_port)

    def env(self, agent_endpoint: str, agent_key: str) -> dict[str, str]:
        """The collector's environment: all on 127.0.0.1, counters flushed each second."""
        return {
            **os.environ,
            "PROVEAI_COLLECTOR_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{self.grpc}",
            "PROVEAI_COLLECTOR_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{self.http}",
            "PROVEAI_COLLECTOR_METRICS_ENDPOINT": f"127.0.0.1:{self.metrics}",
            "PROVEAI_COLLECTOR_TELEMETRY_HOST": "127.0.0.1",
            "PROVEAI_COLLECTOR_TELEMETRY_PORT": str(self.telemetry),
            "PROVEAI_SPANMETRICS_FLUSH_INTERVAL": "1s",
            "PROVEAI_AGENT_ENDPOINT": agent_endpoint,
            "PROVEAI_AGENT_API_KEY": agent_key,
        }


def test_validate_accepts_the_config(collector: Path) -> None:
    done = subprocess.run(
        [str(collector), "validate", "--config", str(CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_rendered_config_has_the_contract_and_the_environments_endpoints(
    collector: Path,
) -> None:
    ports = Ports()
    done = subprocess.run(
        [str(collector), "print-config", "--format", "json", "--config", str(CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=ports.env("http://127.0.0.1:9", "k"),
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    span_metrics = config["connectors"]["span_metrics"]
    prometheus = config["exporters"]["prometheus"]

    assert span_metrics["namespace"] == "traces.span.metrics"
    assert span_metrics["histogram"]["unit"] == "s"
    bucket_ns = span_metrics["histogram"]["explicit"]["buckets"]
    assert [ns / 1e9 for ns in bucket_ns] == pytest.approx(BUCKETS_S)
    assert [d["name"] for d in span_metrics["dimensions"]] == GENAI_DIMENSIONS
    assert [d["default"] for d in span_metrics["dimensions"]] == ["", "", ""]
    assert span_metrics["exclude_dimensions"] == ["collector.instance.id"]
    assert span_metrics["aggregation_cardinality_limit"] > 0
    assert prometheus["namespace"] == "llm"
    assert prometheus["endpoint"] == f"127.0.0.1:{ports.metrics}"
    assert prometheus["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == f"127.0.0.1:{ports.grpc}"
    assert protocols["http"]["endpoint"] == f"127.0.0.1:{ports.http}"
    assert config["exporters"]["otlp_http/agent"]["endpoint"] == "http://127.0.0.1:9"


# A real run: spans from the OpenTelemetry SDK in over OTLP/HTTP, the span metrics scraped
# from the exporter, the raw spans taken by a stand-in for the agent.


class AgentStandIn(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that takes OTLP/HTTP trace exports as the agent does."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _AgentHandler)
        self.lock = threading.Lock()
        self.api_keys: list[str] = []
        self.span_names: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _AgentHandler(BaseHTTPRequestHandler):
    server: AgentStandIn

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            self.server.api_keys.append(self.headers.get("X-API-Key", ""))
            self.server.span_names.extend(
                span.name
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            )
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


S = 1_000_000_000

_CHAT = {
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
}
_EMBED = {
    "gen_ai.request.model": "text-embedding-3-small",
    "gen_ai.operation.name": "embeddings",
    "gen_ai.provider.name": "openai",
}

# (the resource's process.pid, span name, kind, status, attributes, duration in ns): two
# processes of one service, which share series since process.pid is no resource key.
SPANS = [
    (1001, "chat", "CLIENT", "OK", _CHAT, S // 20),
    (1001, "chat", "CLIENT", "OK", _CHAT, 3 * S // 10),
    (1001, "chat", "CLIENT", "OK", _CHAT, 2 * S),
    (1002, "chat", "CLIENT", "OK", _CHAT, 7 * S // 10),
    (1001, "chat", "CLIENT", "ERROR", _CHAT, 7 * S),
    (1002, "chat", "CLIENT", "ERROR", _CHAT, 45 * S),
    (1001, "embeddings", "CLIENT", "UNSET", _EMBED, S // 5),
    (1001, "retrieve", "INTERNAL", "UNSET", {}, 400 * S),
]

# Hand-computed from SPANS, per (span_name, status_code).
EXPECTED_CALLS = {
    ("chat", "STATUS_CODE_OK"): 4.0,
    ("chat", "STATUS_CODE_ERROR"): 2.0,
    ("embeddings", "STATUS_CODE_UNSET"): 1.0,
    ("retrieve", "STATUS_CODE_UNSET"): 1.0,
}
# Cumulative counts for each le in LE_VALUES.
EXPECTED_BUCKETS = {
    ("chat", "STATUS_CODE_OK"): [1, 2, 3, 4, 4, 4, 4, 4, 4, 4],  # 0.05, 0.3, 0.7, 2 s
    ("chat", "STATUS_CODE_ERROR"): [0, 0, 0, 0, 1, 1, 2, 2, 2, 2],  # 7, 45 s
    ("embeddings", "STATUS_CODE_UNSET"): [0, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # 0.2 s
    ("retrieve", "STATUS_CODE_UNSET"): [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],  # 400 s
}
EXPECTED_SUMS = {
    ("chat", "STATUS_CODE_OK"): 3.05,
    ("chat", "STATUS_CODE_ERROR"): 52.0,
    ("embeddings", "STATUS_CODE_UNSET"): 0.2,
    ("retrieve", "STATUS_CODE_UNSET"): 400.0,
}

Sample = tuple[str, dict[str, str], float]


@dataclass
class Run:
    """What one run of the collector showed: its /metrics once every span was counted."""

    samples: list[Sample]
    agent: AgentStandIn
    log: Path

    def series(self, name: str, key: tuple[str, str]) -> list[tuple[dict[str, str], float]]:
        """The samples of metric `name` for one (span_name, status_code)."""
        return [
            (labels, value)
            for sample_name, labels, value in self.samples
            if sample_name == name and (labels["span_name"], labels["status_code"]) == key
        ]


@pytest.fixture(scope="module")
def run(collector: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """A collector on 127.0.0.1 forwarding to an agent stand-in, fed SPANS, scraped until
    its calls counters show them all; both are stopped after the module's tests."""
    agent = AgentStandIn()
    serving = threading.Thread(target=agent.serve_forever, daemon=True)
    serving.start()
    ports = Ports()
    log = tmp_path_factory.mktemp("collector") / "collector.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(collector), "--config", str(CONFIG)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ports.env(agent.url, "collector-test-key"),
        )
    try:
        _wait_until_listening(process, [ports.http, ports.metrics], log)
        _send_spans(ports.http)
        yield Run(_scrape_until_counted(ports.metrics, log), agent, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        agent.shutdown()
        agent.server_close()
        serving.join(timeout=10)


def _wait_until_listening(
    process: subprocess.Popen[bytes], ports: list[int], log: Path
) -> None:
    deadline = time.monotonic() + 30
    waiting = list(ports)
    while waiting:
        assert process.poll() is None, f"collector exited:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"not listening on {waiting}:\n{log.read_text()}"
        try:
            socket.create_connection(("127.0.0.1", waiting[0]), timeout=1).close()
            waiting.pop(0)
        except OSError:
            time.sleep(0.1)


def _send_spans(otlp_http_port: int) -> None:
    """SPANS through the SDK's OTLP/HTTP exporter, one TracerProvider per process.pid."""
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{otlp_http_port}/v1/traces")
    start = time.time_ns() - 600 * S
    for pid in sorted({spec[0] for spec in SPANS}):
        finished = InMemorySpanExporter()
        provider = TracerProvider(
            resource=Resource.create({"service.name": "rag-api", "process.pid": pid})
        )
        provider.add_span_processor(SimpleSpanProcessor(finished))
        tracer = provider.get_tracer("test_collector")
        for span_pid, name, kind, status, attributes, duration in SPANS:
            if span_pid == pid:
                span = tracer.start_span(
                    name, kind=SpanKind[kind], attributes=attributes, start_time=start
                )
                span.set_status(Status(StatusCode[status]))
                span.end(end_time=start + duration)
        provider.shutdown()
        assert exporter.export(finished.get_finished_spans()) is SpanExportResult.SUCCESS
    exporter.shutdown()


def _scrape(metrics_port: int) -> list[Sample]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _calls_by_span(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {
        (labels["span_name"], labels["status_code"]): value
        for name, labels, value in samples
        if name == CALLS
    }


def _scrape_until_counted(metrics_port: int, log: Path) -> list[Sample]:
    deadline = time.monotonic() + 30
    samples = _scrape(metrics_port)
    while _calls_by_span(samples) != EXPECTED_CALLS:
        assert time.monotonic() < deadline, (
            f"calls seen: {_calls_by_span(samples)}\n{log.read_text()[-4000:]}"
        )
        time.sleep(0.5)
        samples = _scrape(metrics_port)
    return samples


def test_run_counts_each_span_once_in_the_calls_counter(run: Run) -> None:
    assert _calls_by_span(run.samples) == EXPECTED_CALLS


def test_run_exports_names_the_watcher_detects_as_ours_in_seconds(run: Run) -> None:
    scheme = scheme_from_names(name for name, _, _ in run.samples)

    assert scheme is not None
    assert (scheme.prefix, scheme.calls, scheme.duration) == (OURS, CALLS, DURATION)
    assert scheme.to_seconds == 1.0


def test_run_labels_are_exactly_the_contracts(run: Run) -> None:
    for name, labels, _ in run.samples:
        if name == CALLS or name.startswith(DURATION):
            le = {"le"} if name == f"{DURATION}_bucket" else set()
            assert labels.keys() == LABELS | le, labels

    [(chat, _)] = run.series(CALLS, ("chat", "STATUS_CODE_OK"))
    assert chat == {
        "service_name": "rag-api",
        "span_name": "chat",
        "span_kind": "SPAN_KIND_CLIENT",
        "status_code": "STATUS_CODE_OK",
        "gen_ai_request_model": "gpt-4o",
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "openai",
    }
    [(retrieve, _)] = run.series(CALLS, ("retrieve", "STATUS_CODE_UNSET"))
    assert retrieve["span_kind"] == "SPAN_KIND_INTERNAL"
    assert (
        retrieve["gen_ai_request_model"],
        retrieve["gen_ai_operation_name"],
        retrieve["gen_ai_provider_name"],
    ) == ("", "", "")


def test_run_duration_histogram_has_the_contracts_buckets_in_seconds(run: Run) -> None:
    for key, counts in EXPECTED_BUCKETS.items():
        buckets = [
            (labels["le"], value) for labels, value in run.series(f"{DURATION}_bucket", key)
        ]
        [(_, total)] = run.series(f"{DURATION}_sum", key)
        [(_, count)] = run.series(f"{DURATION}_count", key)

        assert buckets == list(zip(LE_VALUES, counts, strict=True)), key
        assert total == pytest.approx(EXPECTED_SUMS[key]), key
        assert count == EXPECTED_CALLS[key], key


def test_run_forwards_every_span_to_the_agent_with_its_key(run: Run) -> None:
    deadline = time.monotonic() + 30
    while len(run.agent.span_names) < len(SPANS):
        assert time.monotonic() < deadline, (
            f"agent got {run.agent.span_names}\n{run.log.read_text()[-4000:]}"
        )
        time.sleep(0.2)

    assert sorted(run.agent.span_names) == sorted(spec[1] for spec in SPANS)
    assert set(run.agent.api_keys) == {"collector-test-key"}
