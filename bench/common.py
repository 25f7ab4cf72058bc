"""Shared pieces of the benchmarks: an agent subprocess, OTLP request bodies, RSS readings."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from proveai_agent.stack.native import NativeStack, free_port

KEY = "bench-" + secrets.token_hex(8)


def peak_rss_mb(pid: int) -> float:
    """The process' high-water mark of resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, quiet_s: float = 1.0, cap_s: float = 60.0) -> float:
    """Wait until the process has used under 2 % of a CPU for `quiet_s`, at most `cap_s`:
    its start-up work is over (a new data directory embeds the knowledge base's seeds, with
    the embedding model open). Returns the seconds waited."""
    started = time.monotonic()
    before = cpu_seconds(pid)
    while time.monotonic() - started < cap_s:
        time.sleep(quiet_s)
        now = cpu_seconds(pid)
        if now - before < 0.02 * quiet_s:
            break
        before = now
    return time.monotonic() - started


def reset_peak_rss(pid: int) -> float:
    """The peak RSS so far (VmHWM, MiB), then reset it (Linux clear_refs 5) so that the next
    reading is the peak from now on: the peak under a load, not of the start-up."""
    peak = peak_rss_mb(pid)
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_agent(
    *extra: str, data_dir: Path | None = None, port: int | None = None
) -> AgentProcess:
    """`proveai-agent serve` on a loopback port (a free one by default) with a fresh data
    directory."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="proveai-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, "PROVEAI_API_KEYS": KEY}
    log = open(data_dir / "agent.log", "ab")  # noqa: SIM115 - lives as long as the agent
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proveai_agent",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
            *extra,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return AgentProcess(proc, url, data_dir)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("agent did not start")


@contextlib.contextmanager
def scraped_agent(
    base: Path, config: Path, scrape_s: float, *, victoriametrics: bool = True
) -> Iterator[AgentProcess]:
    """`proveai-agent serve` with configuration `config` and its data in `base`/agent,
    scraped every `scrape_s` by the native Prometheus (and VictoriaMetrics) that it reads;
    the agent and the stores are stopped on leaving."""
    key_file = base / "scrape.key"
    key_file.write_text(KEY)
    port = free_port()
    stack = NativeStack(
        base / "stack",
        agent_target=f"127.0.0.1:{port}",
        agent_key_file=key_file,
        scrape_interval_s=scrape_s,
    )
    stack.start()
    agent = None
    try:
        stores = ["--prometheus", stack.prometheus_url]
        if victoriametrics:
            stores += ["--victoriametrics", stack.victoriametrics_url]
        agent = start_agent(
            *("--config", str(config), *stores, "--scrape-interval", str(scrape_s)),
            data_dir=base / "agent",
            port=port,
        )
        yield agent
    finally:
        if agent is not None:
            agent.stop()
        stack.stop()


def _kv(key: str, value: str | int | float) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def rag_request(spans: int, span_bytes: int, seq: int) -> bytes:
    """One OTLP request of `spans` spans shaped like a RAG pipeline, each about `span_bytes`.

    Traces of five spans (query, embed, retrieve, rerank, chat) with gen_ai.* attributes; the
    chat span carries prompt and output messages, padded to reach the size.
    """
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(
        [
            _kv("service.name", "bench-rag"),
            _kv("service.version", "1.4.2"),
            _kv("process.pid", 4242),
            _kv("deployment.environment.name", "bench"),
        ]
    )
    scope = rs.scope_spans.add()
    scope.scope.name = "bench"
    names = ("POST /query", "embed query", "retrieve", "rerank", "chat gpt-4o-mini")
    now = time.time_ns()
    filler = "x" * max(0, span_bytes - 600)
    for i in range(spans):
        trace = (seq * spans + i) // 5 + 1
        step = (seq * spans + i) % 5
        span = scope.spans.add()
        span.trace_id = trace.to_bytes(16, "big")
        span.span_id = (seq * spans + i + 1).to_bytes(8, "big")
        if step:
            span.parent_span_id = (seq * spans + i - step + 1).to_bytes(8, "big")
        span.name = names[step]
        span.kind = Span.SPAN_KIND_SERVER if step == 0 else Span.SPAN_KIND_CLIENT
        span.start_time_unix_nano = now - 800_000_000
        span.end_time_unix_nano = now - (i % 7) * 10_000_000
        span.attributes.extend(
            [
                _kv("gen_ai.operation.name", "chat" if step == 4 else "retrieval"),
                _kv("gen_ai.request.model", "gpt-4o-mini"),
                _kv("gen_ai.provider.name", "openai"),
                _kv("gen_ai.usage.input_tokens", 812),
                _kv("gen_ai.usage.output_tokens", 96),
                _kv("gen_ai.response.finish_reasons", "stop"),
                _kv("gen_ai.conversation.id", f"conv-{trace % 1000}"),
                _kv("http.route", "/query"),
            ]
        )
        if step == 4 or span_bytes > 1000:
            messages = (
                '[{"role":"user","parts":[{"type":"text","content":"What is the refund policy'
                f' for order {trace}? {filler}"}}]}}]'
            )
            span.attributes.append(_kv("gen_ai.input.messages", messages))
            span.attributes.append(
                _kv(
                    "gen_ai.output.messages",
                    '[{"role":"assistant","parts":[{"type":"text","content":"Refunds are '
                    'accepted within 30 days."}]}]',
                )
            )
        span.status.code = 1
    return req.SerializeToString()
