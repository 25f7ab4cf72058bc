"""The console against a live agent: real spans, a real Prometheus scraping it, a real case.

Each request is one trace, sent with the OpenTelemetry SDK from two services:

    POST /ask           shop-api        SERVER  0.20 s
      vector search     shop-api        CLIENT  50 ms   one retrieved chunk
        POST /search    shop-retriever  SERVER  40 ms
      chat gpt-4o-mini  shop-api        CLIENT  0.12 s  812 input / 95 output tokens, a system
                                                        prompt, a question, an answer, a score

A service's panel counts its entry (SERVER) spans. Every entry span of shop-api lasts 0.2 s,
inside the (0.1, 0.5] bucket: p50 = 0.1 + 0.4 × 0.5 = 0.30 s, p95 = 0.1 + 0.4 × 0.95 = 0.48 s,
p99 = 0.1 + 0.4 × 0.99 = 0.496 s, written 0.50 s. Every entry span of shop-retriever lasts
40 ms, inside the first bucket (0, 0.1]: p50 = 0.1 × 0.5 = 50 ms, p95 95 ms, p99 99 ms. No
span failed, so both error ratios are 0.0 %. The request rate depends on when Prometheus
scraped, so it is checked against the overview document the console was showing: below
1 rps the console writes it with two decimals.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from textual.pilot import Pilot

from agentfix import OPERATOR_KEY, READ_KEY
from consolefix import screen_text, until
from proveai_agent.agent import Agent
from proveai_agent.signals import Signal
from proveai_agent.stack.native import MissingBinary, NativeStack, find_binary, free_port
from proveai_tui.app import ConsoleApp
from proveai_tui.client import AgentClient
from proveai_tui.feed import PollingSource, Snapshot
from proveai_tui.screens.case import CaseScreen
from proveai_tui.screens.overview import OverviewScreen
from proveai_tui.widgets.case_header import CaseHeader
from proveai_tui.widgets.case_table import CaseTable
from proveai_tui.widgets.metric import Metric
from proveai_tui.widgets.service_panel import ServicePanel
from proveai_tui.widgets.signal_list import SignalList
from proveai_tui.widgets.source_health import SourceHealth
from proveai_tui.widgets.span_detail import SpanDetail
from proveai_tui.widgets.span_tree import SpanTree
from tmuxfix import Pane, console_command

pytestmark = [pytest.mark.console, pytest.mark.integration]

API, RETRIEVER = "shop-api", "shop-retriever"
SRC = Path(__file__).resolve().parent.parent / "src"
TRACES = 12
SIZE = (80, 24)
MS = 1_000_000
DATA_TIMEOUT_S = 45.0

ROOT_LABEL = "POST /ask  shop-api  0.20 s  unset"
CHILD_LABELS = [
    "vector search  shop-api  50 ms  unset",
    "chat gpt-4o-mini  shop-api  0.12 s  unset  812 in / 95 out tok",
]
GRANDCHILD_LABEL = "POST /search  shop-retriever  40 ms  unset"
VERIFY = (
    "histogram_quantile(0.95, sum by (le) (rate(llm_traces_span_metrics_duration_seconds_bucket"
    '{service_name="shop-api",span_name="POST /ask"}[60s])))'
)
RATE = re.compile(r"rate (\d+\.\d\d) rps")

SYSTEM = "You answer questions about orders from the retrieved context only."
QUESTION = "Where is my order?"
ANSWER = "It ships tomorrow [orders#1]."
CHUNK = {
    "id": "orders#1",
    "content": "Orders ship within two days.\nExpress orders ship the same day.",
    "score": 0.91,
}


def require_backends() -> None:
    """Skip, saying which package is missing, without Prometheus or VictoriaMetrics."""
    for name, env in (
        ("prometheus", "PROVEAI_PROMETHEUS_BIN"),
        ("victoria-metrics", "PROVEAI_VM_BIN"),
    ):
        try:
            find_binary(name, env, name)
        except MissingBinary as exc:
            pytest.skip(str(exc))


# Spans


def tracer_for(service: str, url: str) -> tuple[TracerProvider, trace.Tracer]:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(
        endpoint=f"{url}/v1/traces", headers={"X-API-Key": OPERATOR_KEY}
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, provider.get_tracer("console-live")


def send_traces(url: str, count: int = TRACES) -> list[str]:
    """Send `count` requests as traces with the real SDK; returns their trace ids in hex."""
    api_provider, api = tracer_for(API, url)
    retriever_provider, retriever = tracer_for(RETRIEVER, url)
    trace_ids = []
    start = time.time_ns() - count * 300 * MS
    for n in range(count):
        t0 = start + n * 300 * MS
        root = api.start_span("POST /ask", kind=SpanKind.SERVER, start_time=t0)
        in_root = trace.set_span_in_context(root)
        search = api.start_span(
            "vector search",
            in_root,
            kind=SpanKind.CLIENT,
            start_time=t0 + 10 * MS,
            attributes={"gen_ai.retrieval.documents": json.dumps([CHUNK])},
        )
        served = retriever.start_span(
            "POST /search",
            trace.set_span_in_context(search),
            kind=SpanKind.SERVER,
            start_time=t0 + 15 * MS,
        )
        served.end(end_time=t0 + 55 * MS)
        search.end(end_time=t0 + 60 * MS)
        chat = api.start_span(
            "chat gpt-4o-mini",
            in_root,
            kind=SpanKind.CLIENT,
            start_time=t0 + 70 * MS,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.provider.name": "openai",
                "gen_ai.usage.input_tokens": 812,
                "gen_ai.usage.output_tokens": 95,
                "gen_ai.input.messages": json.dumps(
                    [
                        {"role": "system", "parts": [{"type": "text", "content": SYSTEM}]},
                        {"role": "user", "parts": [{"type": "text", "content": QUESTION}]},
                    ]
                ),
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": ANSWER}],
                            "finish_reason": "stop",
                        }
                    ]
                ),
                "gen_ai.evaluation.relevance.score": 0.93,
            },
        )
        chat.end(end_time=t0 + 190 * MS)
        root.end(end_time=t0 + 200 * MS)
        trace_ids.append(f"{root.get_span_context().trace_id:032x}")
    for provider in (retriever_provider, api_provider):
        assert provider.force_flush(10_000)
        provider.shutdown()
    return trace_ids


# Reading the agent


def get_json(url: str, path: str, key: str = READ_KEY) -> Any:
    request = urllib.request.Request(url + path, headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def post_json(url: str, path: str, body: dict[str, Any], key: str = OPERATOR_KEY) -> Any:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"X-API-Key": key, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201
        return json.loads(response.read())


def has_data(overview: dict[str, Any]) -> bool:
    """Both services listed with a rate and a p95."""
    services = {s["service"]: s for s in overview.get("services", [])}
    return all(
        services.get(name, {}).get("rate_rps") and services[name].get("p95_s") is not None
        for name in (API, RETRIEVER)
    )


def wait_for_data(url: str, timeout_s: float = DATA_TIMEOUT_S) -> dict[str, Any]:
    """Poll /api/overview until both services have numbers; the document that had them."""
    deadline = time.monotonic() + timeout_s
    overview: dict[str, Any] = {}
    while time.monotonic() < deadline:
        overview = get_json(url, "/api/overview")
        if has_data(overview):
            return overview
        time.sleep(0.25)
    raise AssertionError(f"no numbers for both services in time; last overview: {overview}")


# The pilot against an agent in the test's event loop


class RecordingSource(PollingSource):
    """The console's polling source, keeping the last snapshot it delivered."""

    last: Snapshot | None = None

    async def poll(self) -> Snapshot:
        snapshot = await super().poll()
        self.last = snapshot
        return snapshot


@dataclass
class Live:
    agent: Agent
    stack: NativeStack
    trace_ids: list[str]

    @property
    def url(self) -> str:
        assert self.agent.url is not None
        return self.agent.url


@pytest.fixture
async def live(agent_factory: Callable[..., Any], tmp_path: Path) -> AsyncIterator[Live]:
    """An agent scraped every second by Prometheus, with the traces already counted."""
    require_backends()
    port = free_port()
    key_file = tmp_path / "scrape.key"
    key_file.write_text(OPERATOR_KEY)
    stack = NativeStack(
        tmp_path / "stack",
        agent_target=f"127.0.0.1:{port}",
        agent_key_file=key_file,
        scrape_interval_s=1,
        vm_latency_offset_s=1,
    )
    # The stores first, as the demo starts them: an agent that finds a store down backs
    # off from it, and this test is about the console, not about that wait.
    await asyncio.to_thread(stack.start)
    try:
        agent = await agent_factory(
            listen=f"127.0.0.1:{port}",
            prometheus_url=stack.prometheus_url,
            victoriametrics_url=stack.victoriametrics_url,
        )
        trace_ids = await asyncio.to_thread(send_traces, agent.url)
        await asyncio.to_thread(wait_for_data, agent.url)
        yield Live(agent, stack, trace_ids)
    finally:
        await asyncio.to_thread(stack.stop)


async def move_down_to(pilot: Pilot, tree: SpanTree, name: str) -> None:
    for _ in range(tree.last_line + 1):
        if tree.cursor_node is not None and (tree.cursor_node.data or {}).get("name") == name:
            return
        await pilot.press("j")
    raise AssertionError(f"no span {name!r} below the cursor")


def metric(app: ConsoleApp, service: str, name: str) -> str:
    (panel,) = [p for p in app.overview_screen.query(ServicePanel) if p.service == service]
    return panel.query_one(f".{name}", Metric).plain


def served_rate(source: RecordingSource, service: str) -> float | None:
    """The service's rate in the overview the console last received, if it had one."""
    overview = source.last.overview if source.last is not None else None
    for numbers in (overview or {}).get("services", []):
        if numbers.get("service") == service:
            return numbers.get("rate_rps")
    return None


def rate_shown_as_served(app: ConsoleApp, source: RecordingSource, service: str) -> bool:
    """The panel's rate is the served one, written with two decimals as below 1 rps."""
    rps = served_rate(source, service)
    return rps is not None and metric(app, service, "rate") == f"rate {rps:.2f} rps"


async def test_live_agent_panels_case_list_and_case_screen_in_the_pilot(live: Live) -> None:
    signal = Signal(
        kind="latency_regression",
        failure_class="LATENCY_REGRESS",
        trigger="anomaly_detection",
        service=API,
        span_name="POST /ask",
        at=time.time(),
        severity="high",
        summary="p95 0.48 s over 1 m against a baseline of 0.20 s",
        evidence={
            "statistic": "p95_s",
            "current": 0.48,
            "baseline_median": 0.2,
            "baseline_mad": 0.01,
            "threshold": 0.4,
            "window_s": 60,
            "traffic": {"calls": 12.0, "rps": 0.2},
            "query": VERIFY,
            "queries": {"current": [VERIFY], "baseline": [VERIFY]},
        },
    )
    case = await live.agent.case_service.on_signal(signal)
    case_id = case["id"]
    assert re.fullmatch(r"CASE-\d+", case_id)

    client = AgentClient(live.url, READ_KEY, timeout_s=5.0)
    source = RecordingSource(client, interval_s=0.5)
    app = ConsoleApp(client, source)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.overview_screen
        await until(pilot, lambda: len(screen.query(ServicePanel)) == 2, "both panels")
        assert [p.service for p in screen.query(ServicePanel)] == [API, RETRIEVER]
        for service in (API, RETRIEVER):
            await until(
                pilot,
                lambda s=service: rate_shown_as_served(app, source, s),
                f"the rate of {service} as the agent served it",
            )
            rps = served_rate(source, service)
            assert rps is not None and 0 < rps < 1, f"{TRACES} requests in 5 m: {rps} rps"

        assert metric(app, API, "p95") == "p95 0.48 s"
        assert metric(app, API, "quantiles") == "p50 0.30 s · p99 0.50 s"
        assert metric(app, API, "error") == "error 0.0 %"
        assert metric(app, RETRIEVER, "p95") == "p95 95 ms"
        assert metric(app, RETRIEVER, "quantiles") == "p50 50 ms · p99 99 ms"
        assert metric(app, RETRIEVER, "error") == "error 0.0 %"

        health = screen.query_one(SourceHealth).plain
        assert "Prometheus up" in health
        assert "VictoriaMetrics up" in health
        assert "spanmetrics llm_traces_span_metrics" in health

        table = screen.query_one(CaseTable)
        await until(pilot, lambda: table.case_ids == [case_id], "the case in the list")
        row = [str(cell) for cell in table.get_row(case_id)]
        assert row[:5] == [case_id, "high", "DETECTED", "LATENCY_REGRESS", API]
        (api_panel,) = [p for p in screen.query(ServicePanel) if p.service == API]
        assert api_panel.border_subtitle == f"{case_id} high"
        text = screen_text(app)
        for expected in [API, RETRIEVER, "p95 0.48 s", "p95 95 ms", "Prometheus up", case_id]:
            assert expected in text, f"{expected!r} not on screen:\n{text}"

        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CaseScreen), "the case screen")
        case_screen = app.screen
        assert isinstance(case_screen, CaseScreen)
        tree = case_screen.query_one(SpanTree)
        await until(pilot, lambda: bool(tree.root.children), "the span tree")

        header = case_screen.query_one(CaseHeader).plain
        assert f"{case_id}  Latency regression in shop-api / POST /ask" in header
        for fact in [
            "state DETECTED",
            "severity high",
            "trigger anomaly_detection",
            "class LATENCY_REGRESS",
            "service shop-api",
        ]:
            assert fact in header, f"{fact!r} not in the header:\n{header}"

        signals = case_screen.query_one(SignalList).plain
        assert "Signals (1)" in signals
        assert "high  latency_regression  LATENCY_REGRESS  shop-api / POST /ask" in signals
        assert "p95 0.48 s over 1 m against a baseline of 0.20 s" in signals
        assert (
            "statistic p95_s · current 0.48 s · baseline median 0.20 s · threshold 0.40 s "
            "· window 1 m · traffic 12 calls, 0.20 rps"
        ) in signals
        assert f"query {VERIFY}" in signals and "queries" not in signals

        traces = tree.root.children
        assert 1 <= len(traces) <= 5, "the snapshot keeps at most five exemplar traces"
        for node in traces:
            trace_id = node.label.plain.split()[1]
            assert trace_id in live.trace_ids
            assert node.label.plain == f"trace {trace_id}  4 spans  0.20 s"
            (root,) = node.children
            assert root.label.plain == ROOT_LABEL
            assert [child.label.plain for child in root.children] == CHILD_LABELS
            assert [g.label.plain for g in root.children[0].children] == [GRANDCHILD_LABEL]

        on_screen = ["trigger   anomaly_detection", ROOT_LABEL, CHILD_LABELS[0], "Back"]
        await until(pilot, lambda: all(s in screen_text(app) for s in on_screen), "the case")

        detail = case_screen.query_one(SpanDetail)
        await move_down_to(pilot, tree, "chat gpt-4o-mini")
        assert detail.plain.splitlines() == [
            "chat gpt-4o-mini  client  0.12 s  unset",
            "service shop-api · model gpt-4o-mini · operation chat · provider openai · tokens "
            "812 in / 95 out tok · finish stop",
            "scores relevance 0.93",
            "Messages (3)",
            f"system  {SYSTEM}",
            f"user  {QUESTION}",
            f"assistant  {ANSWER}",
        ]
        await pilot.press("tab", "end")
        assert app.screen.focused is detail
        await until(pilot, lambda: f"assistant {ANSWER}" in screen_text(app), "the answer")
        await pilot.press("shift+tab", "home")
        await move_down_to(pilot, tree, "vector search")
        assert detail.plain.splitlines()[2:] == [
            "Retrieved chunks (1)",
            "orders#1  0.91  Orders ship within two days.",
        ]

        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen), "the overview")


# The installed console in tmux against an agent process


@dataclass
class AgentProcess:
    url: str
    log: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[AgentProcess]:
    """`proveai-agent serve` as a process, scraped every second by a native stack."""
    require_backends()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key_file = tmp_path / "scrape.key"
    key_file.write_text(OPERATOR_KEY)
    stack = NativeStack(
        tmp_path / "stack",
        agent_target=f"127.0.0.1:{port}",
        agent_key_file=key_file,
        scrape_interval_s=1,
        vm_latency_offset_s=1,
    )
    log_path = tmp_path / "agent.log"
    argv = [
        sys.executable,
        "-m",
        "proveai_agent",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(tmp_path / "agent"),
        "--prometheus",
        stack.prometheus_url,
        "--victoriametrics",
        stack.victoriametrics_url,
        "--scrape-interval",
        "1",
    ]
    env = {
        **os.environ,
        "PROVEAI_API_KEYS": f"{OPERATOR_KEY},{READ_KEY}:read",
        "PYTHONPATH": python_path(),
    }
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, process, log_path)
        stack.start()
        try:
            yield AgentProcess(url, log_path)
        finally:
            stack.stop()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def python_path() -> str:
    """This checkout's sources first, so that the processes run the code under test."""
    return os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return
        except (urllib.error.URLError, OSError) as error:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the agent did not start:\n{log.read_text()}") from error
            time.sleep(0.1)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_agent_in_tmux_shows_panels_opens_a_manual_case_and_quits(
    served: AgentProcess,
) -> None:
    trace_ids = send_traces(served.url)
    wait_for_data(served.url)
    title = "Slow answers on the shop"
    case = post_json(served.url, "/api/cases", {"trace_id": trace_ids[0], "title": title})
    case_id = case["id"]
    assert (case["trigger"], case["state"], case["severity"]) == (
        "manual",
        "DETECTED",
        "medium",
    )

    pane = Pane(f"proveai-console-live-{os.getpid()}")
    try:
        env = {
            "TERM": "xterm-256color",
            "PROVEAI_API_KEY": READ_KEY,
            "PYTHONPATH": python_path(),
        }
        pane.start([*console_command(), "--agent", served.url, "--interval", "1"], env)

        overview_shows = [
            "Prove AI · overview",
            "● connected",
            "Prometheus up",
            "VictoriaMetrics up",
            API,
            RETRIEVER,
            "p95 0.48 s",
            "p50 0.30 s · p99 0.50 s",
            "p95 95 ms",
            "p50 50 ms · p99 99 ms",
            "Open cases (1)",
            f"{case_id}  medium",
            "DETECTED",
            "Quit",
        ]

        def overview_ready(text: str) -> bool:
            return all(s in text for s in overview_shows) and len(RATE.findall(text)) == 2

        overview = pane.wait(overview_ready, "the overview with both panels and the case")
        assert all(0 < float(r) < 1 for r in RATE.findall(overview))
        assert len(overview.splitlines()) <= 24
        assert all(len(line) <= 80 for line in overview.splitlines())

        pane.keys("Enter")
        case_shows = [
            f"Prove AI · {case_id}",
            f"{case_id}  {title}",
            "state     DETECTED",
            "trigger   manual",
            "service   shop-api",
            "none recorded",
            f"trace {trace_ids[0]}  4 spans  0.20 s",
            ROOT_LABEL,
            CHILD_LABELS[0],
            GRANDCHILD_LABEL,
            "Back",
        ]
        screen = pane.wait(lambda t: all(s in t for s in case_shows), f"the case {case_id}")
        assert all(len(line) <= 80 for line in screen.splitlines())

        pane.keys("Escape")
        pane.wait(lambda t: "Prove AI · overview" in t, "the overview again")
        pane.keys("q")
        deadline = time.monotonic() + 10
        while not pane.dead():
            assert time.monotonic() < deadline, f"q did not quit:\n{pane.text()}"
            time.sleep(0.2)
        assert "Traceback" not in pane.text()
    finally:
        pane.kill()
