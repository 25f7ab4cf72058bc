"""The native stack: Prometheus scrapes a keyed /metrics, remote-writes to VictoriaMetrics."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from proveai_agent.stack.native import MissingBinary, NativeStack, find_binary, free_port
from proveai_agent.watch.overview import overview
from proveai_agent.watch.promql import MetricsSource, vector
from stackfix import PrometheusHandle, VMHandle

pytestmark = pytest.mark.integration

KEY = "test-key-0123"
EXPOSITION = "# TYPE proveai_test_answer gauge\nproveai_test_answer 42\n"


@pytest.fixture
def binaries() -> None:
    try:
        find_binary("prometheus", "PROVEAI_PROMETHEUS_BIN", "prometheus")
        find_binary("victoria-metrics", "PROVEAI_VM_BIN", "victoria-metrics")
    except MissingBinary as exc:
        pytest.skip(str(exc))


def spanmetrics_body() -> Callable[[], str]:
    """Our span metrics for one span, 10 more calls at every scrape, all in (0.1 s, 0.5 s]."""
    scrapes = 0

    def body() -> str:
        nonlocal scrapes
        scrapes += 1
        n = 10 * scrapes
        labels = 'service_name="svc",span_name="op",status_code="STATUS_CODE_OK"'
        base = "llm_traces_span_metrics_duration_seconds"
        return (
            f"llm_traces_span_metrics_calls_total{{{labels}}} {n}\n"
            f'{base}_bucket{{{labels},le="0.1"}} 0\n'
            f'{base}_bucket{{{labels},le="0.5"}} {n}\n'
            f'{base}_bucket{{{labels},le="+Inf"}} {n}\n'
            f"{base}_sum{{{labels}}} {0.3 * n}\n"
            f"{base}_count{{{labels}}} {n}\n"
        )

    return body


async def _metrics_server(
    seen: list[str], body: Callable[[], str] = lambda: EXPOSITION
) -> tuple[web.AppRunner, int]:
    async def metrics(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        seen.append(auth)
        if auth != f"Bearer {KEY}":
            return web.Response(status=401, text="missing or wrong key")
        return web.Response(text=body(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def _read_back(source: MetricsSource, promql: str, timeout_s: float = 20) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        values = vector(await source.query(promql, time.time()), ())
        if values:
            value = values[()]
            assert value is not None
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"{promql} not readable from {source.name} within {timeout_s}s")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_scraped_value_reads_back_from_prometheus_and_victoriametrics(
    tmp_path: Path, binaries: None
) -> None:
    seen: list[str] = []
    runner, port = await _metrics_server(seen)
    key_file = tmp_path / "agent.key"
    key_file.write_text(KEY + "\n")
    stack = NativeStack(
        tmp_path / "stack",
        agent_target=f"127.0.0.1:{port}",
        agent_key_file=key_file,
        scrape_interval_s=1,
        vm_latency_offset_s=1,
    )
    try:
        await asyncio.to_thread(stack.start)
        prometheus = MetricsSource("prometheus", stack.prometheus_url)
        victoriametrics = MetricsSource("victoriametrics", stack.victoriametrics_url)

        assert await _read_back(prometheus, "proveai_test_answer") == 42
        assert await _read_back(prometheus, 'up{job="proveai-agent"}') == 1
        assert await _read_back(victoriametrics, "proveai_test_answer") == 42
        assert prometheus.up and victoriametrics.up
        assert seen and all(auth == f"Bearer {KEY}" for auth in seen)
    finally:
        await asyncio.to_thread(stack.stop)
        await runner.cleanup()

    assert not stack.prometheus.running and not stack.victoriametrics.running
    assert _port_free(stack.prometheus.port)
    assert _port_free(stack.victoriametrics.port)
    assert (tmp_path / "stack" / "prometheus.log").stat().st_size > 0
    assert (tmp_path / "stack" / "victoria-metrics.log").stat().st_size > 0


async def test_overview_reads_span_metrics_that_prometheus_scraped(
    tmp_path: Path,
    vm: VMHandle,
    prometheus_factory: Callable[..., PrometheusHandle],
) -> None:
    seen: list[str] = []
    runner, port = await _metrics_server(seen, spanmetrics_body())
    key_file = tmp_path / "agent.key"
    key_file.write_text(KEY)
    try:
        prom = await asyncio.to_thread(
            prometheus_factory,
            f"127.0.0.1:{port}",
            interval_s=1,
            key_file=key_file,
            remote_write_url=f"{vm.url}/api/v1/write",
        )
        prometheus, victoriametrics = prom.source(), vm.source()
        deadline = time.monotonic() + 25
        doc: dict = {}
        while time.monotonic() < deadline:
            doc = await overview(prometheus, victoriametrics, time.time())
            if doc["services"] and doc["services"][0]["rate_rps"]:
                break
            await asyncio.sleep(0.5)
    finally:
        await runner.cleanup()

    assert doc["spanmetrics"] == "llm_traces_span_metrics"
    assert doc["sources"] == {
        "prometheus": {"up": True, "error": None},
        "victoriametrics": {"up": True, "error": None},
    }
    [svc] = doc["services"]
    assert svc["service"] == "svc"
    assert svc["rate_rps"] > 0
    assert svc["error_ratio"] == 0.0
    # Every call in (0.1, 0.5]: p95 = 0.1 + 0.4 × 0.95 whatever the rate's extrapolation.
    assert svc["p95_s"] == pytest.approx(0.48)


def test_context_manager_stops_both(tmp_path: Path, binaries: None) -> None:
    with NativeStack(tmp_path, agent_target=None, scrape_interval_s=1) as stack:
        assert stack.prometheus.running and stack.victoriametrics.running
    assert not stack.prometheus.running and not stack.victoriametrics.running
    assert _port_free(stack.prometheus.port) and _port_free(stack.victoriametrics.port)


def test_missing_binary_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVEAI_VM_BIN", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(MissingBinary, match="apt-get install victoria-metrics"):
        find_binary("victoria-metrics", "PROVEAI_VM_BIN", "victoria-metrics")
