"""TLS on the agent's one listener and in its clients, against a throwaway CA.

Each test makes its own CA and a server certificate for 127.0.0.1 with trustme, then
talks to the real agent over HTTPS: the API, OTLP/HTTP ingest and the websocket (wss)
for clients that trust the CA; nothing for clients that do not, nor for plain HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from agentfix import OPERATOR_KEY, READ_KEY
from consolefix import status_text
from consolefix import until as wait_until
from proveai_agent import cli
from proveai_agent.agent import Agent
from proveai_agent.config import load
from proveai_agent.signals import Signal
from proveai_agent.simulate.applied import FixWatcher
from proveai_agent.simulate.changes import agent_api
from proveai_agent.stack.native import free_port
from proveai_tui.app import ConsoleApp, parse_args
from proveai_tui.client import AgentClient, AgentError
from proveai_tui.feed import StreamSource
from proveai_tui.widgets.case_table import CaseTable

SIZE = (80, 24)
SLOW_POLL_S = 60.0
TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")


until = partial(wait_until, timeout_s=5.0)
"""Waits at most 5.0 s for a state of the console."""


class Pems:
    """A CA's certificate and one server certificate and key for 127.0.0.1, as files."""

    def __init__(self, folder: Path, ca: trustme.CA | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = ca or trustme.CA()
        self.ca_file = folder / "ca.pem"
        self.cert = folder / "server.pem"
        self.key = folder / "server.key"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.issue()

    def issue(self, ca: trustme.CA | None = None) -> None:
        """Write a new server certificate and key, from `ca` or this CA, over the files."""
        server = (ca or self.ca).issue_cert("127.0.0.1")
        self.cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        self.key.write_bytes(server.private_key_pem.bytes())

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture
def pems(tmp_path: Path) -> Pems:
    return Pems(tmp_path / "tls")


@pytest.fixture
def stranger(tmp_path: Path) -> Pems:
    """Another CA, which the agent's certificate does not chain to."""
    return Pems(tmp_path / "stranger")


@pytest.fixture
async def tls_agent(agent_factory: Callable[..., Any], pems: Pems) -> Agent:
    agent: Agent = await agent_factory(tls_cert=pems.cert, tls_key=pems.key)
    return agent


def port_of(agent: Agent) -> int:
    assert agent.url is not None
    return int(agent.url.rsplit(":", 1)[1])


def https(agent: Agent) -> str:
    """The agent's address with https:// whatever it serves, so a plain agent fails."""
    return f"https://127.0.0.1:{port_of(agent)}"


async def get_status(url: str, context: ssl.SSLContext | bool, key: str = READ_KEY) -> int:
    async with (
        aiohttp.ClientSession(headers={"X-API-Key": key}) as http,
        http.get(url, ssl=context) as response,
    ):
        await response.read()
        return response.status


def otlp_request(service: str, *span_ids: bytes) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    ss = rs.scope_spans.add()
    for i, span_id in enumerate(span_ids):
        ss.spans.append(
            PbSpan(
                trace_id=TRACE,
                span_id=span_id,
                name=f"step-{i}",
                kind=PbSpan.SPAN_KIND_SERVER,
                start_time_unix_nano=1_700_000_000_000_000_000,
                end_time_unix_nano=1_700_000_000_500_000_000,
            )
        )
    return req.SerializeToString()


def stored_spans(agent: Agent) -> list[tuple[str, str]]:
    with sqlite3.connect(agent.config.db_path) as conn:
        return conn.execute("SELECT service, span_id FROM spans ORDER BY id").fetchall()


def case_signal(service: str) -> Signal:
    return Signal(
        kind="error_spike",
        failure_class="ERROR_SPIKE",
        trigger="anomaly_detection",
        service=service,
        span_name="POST /ask",
        at=time.time(),
        severity="high",
        summary=f"error ratio 0.31 on {service} against 0.01 before",
        evidence={"current": 0.31, "baseline_median": 0.01},
    )


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# The agent's listener


async def test_the_agent_serves_https_to_a_client_that_trusts_its_ca(
    tls_agent: Agent, pems: Pems
) -> None:
    assert tls_agent.url == f"https://127.0.0.1:{port_of(tls_agent)}"

    assert await get_status(f"{https(tls_agent)}/healthz", pems.client_context()) == 200
    assert await get_status(f"{https(tls_agent)}/api/cases", pems.client_context()) == 200
    assert await get_status(f"{https(tls_agent)}/api/cases", pems.client_context(), "x") == 401


async def test_plain_http_to_the_tls_port_gets_no_http_answer(tls_agent: Agent) -> None:
    with pytest.raises(aiohttp.ClientError):
        await get_status(f"http://127.0.0.1:{port_of(tls_agent)}/healthz", False)


async def test_a_client_trusting_another_ca_or_the_system_store_is_refused(
    tls_agent: Agent, stranger: Pems
) -> None:
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get_status(f"{https(tls_agent)}/healthz", stranger.client_context())
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get_status(f"{https(tls_agent)}/healthz", True)


async def test_otlp_ingest_over_https_stores_the_spans(tls_agent: Agent, pems: Pems) -> None:
    body = otlp_request("shop", b"\x01" * 8, b"\x02" * 8)
    headers = {"Content-Type": "application/x-protobuf", "X-API-Key": OPERATOR_KEY}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{https(tls_agent)}/v1/traces",
            data=body,
            headers=headers,
            ssl=pems.client_context(),
        ) as response,
    ):
        assert response.status == 200, await response.text()

    assert stored_spans(tls_agent) == [("shop", "01" * 8), ("shop", "02" * 8)]


async def test_the_websocket_stream_runs_over_wss(tls_agent: Agent, pems: Pems) -> None:
    url = f"wss://127.0.0.1:{port_of(tls_agent)}/api/stream"
    async with (
        aiohttp.ClientSession(headers={"X-API-Key": READ_KEY}) as http,
        http.ws_connect(url, ssl=pems.client_context()) as stream,
    ):
        await eventually(lambda: len(tls_agent.hub) == 1, "the subscription")
        tls_agent.hub.publish("change", {"id": "c1"})
        message = await stream.receive_json(timeout=5)

    assert message == {"type": "change", "data": {"id": "c1"}}


async def test_a_rotated_certificate_is_served_to_new_connections_without_a_restart(
    agent_factory: Callable[..., Any],
    pems: Pems,
    stranger: Pems,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent: Agent = await agent_factory(tls_cert=pems.cert, tls_key=pems.key, tls_reload_s=0.05)
    url = f"{agent.url}/healthz"
    assert await get_status(url, pems.client_context()) == 200

    pems.issue(stranger.ca)

    async def served_by_stranger() -> bool:
        try:
            return await get_status(url, stranger.client_context()) == 200
        except aiohttp.ClientConnectorCertificateError:
            return False

    deadline = time.monotonic() + 5
    while not await served_by_stranger():
        assert time.monotonic() < deadline, "the rotated certificate was never served"
        await asyncio.sleep(0.05)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get_status(url, pems.client_context())


async def test_a_half_written_rotation_keeps_the_previous_certificate_and_warns_once(
    agent_factory: Callable[..., Any],
    pems: Pems,
    stranger: Pems,
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent: Agent = await agent_factory(tls_cert=pems.cert, tls_key=pems.key, tls_reload_s=3600)
    assert agent.tls is not None
    url = f"{agent.url}/healthz"
    old_key = pems.key.read_bytes()
    pems.issue(stranger.ca)
    new_key = pems.key.read_bytes()
    pems.key.write_bytes(old_key)  # the new certificate is there, its key not yet

    with caplog.at_level(logging.WARNING, logger="proveai_agent.api.tls"):
        assert agent.tls.reload() is False
        assert agent.tls.reload() is False
    warnings = [r.getMessage() for r in caplog.records if r.name == "proveai_agent.api.tls"]
    assert len(warnings) == 1, warnings
    assert str(pems.key) in warnings[0] and "does not belong" in warnings[0]
    assert await get_status(url, pems.client_context()) == 200

    pems.key.write_bytes(new_key)
    assert agent.tls.reload() is True
    assert await get_status(url, stranger.client_context()) == 200


# Bad files: a clear error at start, through the command line


def encrypted_key(pems: Pems, folder: Path) -> Path:
    key = serialization.load_pem_private_key(pems.key.read_bytes(), password=None)
    path = folder / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


def bad_pair(case: str, pems: Pems, other: Pems, folder: Path) -> tuple[Path, Path, Path]:
    """(certificate, key, the file the error must name) for one kind of bad input."""
    junk = folder / "junk.pem"
    junk.write_text("not a certificate\n")
    missing = folder / "missing.pem"
    if case == "missing certificate":
        return missing, pems.key, missing
    if case == "missing key":
        return pems.cert, missing, missing
    if case == "certificate is a folder":
        return folder, pems.key, folder
    if case == "certificate is not PEM":
        return junk, pems.key, junk
    if case == "key is not PEM":
        return pems.cert, junk, junk
    if case == "key of another certificate":
        return pems.cert, other.key, other.key
    if case == "encrypted key":
        key = encrypted_key(pems, folder)
        return pems.cert, key, key
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing certificate",
        "missing key",
        "certificate is a folder",
        "certificate is not PEM",
        "key is not PEM",
        "key of another certificate",
        "encrypted key",
    ],
)
def test_serve_refuses_a_bad_certificate_or_key_naming_the_file(
    case: str,
    pems: Pems,
    stranger: Pems,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert, key, named = bad_pair(case, pems, stranger, tmp_path)
    data = tmp_path / "data"
    argv = ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)]

    code = cli.main([*argv, "--tls-cert", str(cert), "--tls-key", str(key)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("proveai-agent: ") and str(named) in err, err
    assert "Traceback" not in err
    assert not (data / "proveai.db").exists(), "the agent started before refusing"


def test_a_certificate_without_its_key_is_refused_at_start(
    pems: Pems, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--data-dir", str(tmp_path / "data"), "--tls-cert", str(pems.cert)]

    assert cli.main(argv) == 2
    assert "tls_cert and tls_key go together" in capsys.readouterr().err


def test_the_config_file_names_the_certificate_and_key(pems: Pems, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'tls_cert = "{pems.cert}"\ntls_key = "{pems.key}"\ntls_reload_s = 2\n')

    config = load(path)

    assert (config.tls_cert, config.tls_key, config.tls_reload_s) == (pems.cert, pems.key, 2)


def test_serve_with_tls_options_answers_https_until_sigterm(pems: Pems, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PROVEAI_API_KEYS": OPERATOR_KEY}
    command = [
        sys.executable,
        "-m",
        "proveai_agent",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(tmp_path / "data"),
        "--tls-cert",
        str(pems.cert),
        "--tls-key",
        str(pems.key),
    ]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the agent never listened"
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                    pems.client_context().wrap_socket(raw, server_hostname="127.0.0.1"),
                ):
                    break
            except (OSError, ssl.SSLError):
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, err
    assert f"listening on https://127.0.0.1:{port}" in err


# The console and the simulator


async def test_the_console_client_reads_cases_and_follows_the_stream_over_tls(
    tls_agent: Agent, pems: Pems
) -> None:
    await tls_agent.case_service.on_signal(case_signal("shop-api"))
    client = AgentClient(https(tls_agent), READ_KEY, timeout_s=2.0, ca_file=pems.ca_file)
    try:
        cases = await client.cases()
        stream = await client.stream(1 << 20)
        try:
            await eventually(lambda: len(tls_agent.hub) == 1, "the subscription")
            tls_agent.hub.publish("change", {"id": "c1"})
            message = await stream.receive_json(timeout=5)
        finally:
            await stream.close()
    finally:
        await client.close()

    assert [case["service"] for case in cases["items"]] == ["shop-api"]
    assert message == {"type": "change", "data": {"id": "c1"}}


async def test_the_console_client_refuses_a_certificate_it_cannot_verify(
    tls_agent: Agent, stranger: Pems
) -> None:
    for ca_file in (stranger.ca_file, None):
        client = AgentClient(https(tls_agent), READ_KEY, timeout_s=2.0, ca_file=ca_file)
        try:
            with pytest.raises(AgentError) as refused:
                await client.cases()
            with pytest.raises(AgentError) as refused_stream:
                await client.stream(1 << 20)
        finally:
            await client.close()
        for error in (refused.value, refused_stream.value):
            assert error.unreachable
            assert error.message.startswith(f"cannot trust {https(tls_agent)}: its certificate")
            assert "--ca-file" in error.message


async def test_an_https_console_to_a_plain_http_agent_says_so(agent: Agent) -> None:
    url = f"https://127.0.0.1:{port_of(agent)}"
    client = AgentClient(url, READ_KEY, timeout_s=2.0)
    try:
        with pytest.raises(AgentError) as refused:
            await client.cases()
    finally:
        await client.close()
    assert refused.value.message == (
        f"TLS with {url} failed: it answers plain HTTP — use an http:// URL"
    )


async def test_a_plain_http_console_to_a_tls_agent_is_told_to_use_https(
    tls_agent: Agent,
) -> None:
    url = f"http://127.0.0.1:{port_of(tls_agent)}"
    client = AgentClient(url, READ_KEY, timeout_s=2.0)
    try:
        with pytest.raises(AgentError) as refused:
            await client.cases()
    finally:
        await client.close()
    assert refused.value.message.endswith("if it serves HTTPS, use an https:// URL")


def test_the_console_takes_its_ca_from_the_option_or_the_environment(
    pems: Pems, stranger: Pems, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVEAI_CA_FILE", str(pems.ca_file))
    assert parse_args(["--agent", "https://127.0.0.1:1"]).ca_file == str(pems.ca_file)
    named = parse_args(["--ca-file", str(stranger.ca_file), "--agent", "https://h:1"])
    assert named.ca_file == str(stranger.ca_file)


def test_the_console_refuses_a_ca_file_it_cannot_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--agent", "https://127.0.0.1:1", "--ca-file", str(missing)])
    assert stopped.value.code == 2
    assert f"--ca-file: {missing}: no such file" in capsys.readouterr().err


async def test_the_console_shows_cases_pushed_over_wss(tls_agent: Agent, pems: Pems) -> None:
    client = AgentClient(https(tls_agent), OPERATOR_KEY, timeout_s=2.0, ca_file=pems.ca_file)
    app = ConsoleApp(client, StreamSource(client, poll_s=SLOW_POLL_S))
    async with app.run_test(size=SIZE) as pilot:
        await until(
            pilot, lambda: app.link is not None and app.link.state == "connected", "link"
        )
        await eventually(lambda: len(tls_agent.hub) == 1, "the subscription")
        doc = await tls_agent.case_service.on_signal(case_signal("shop-api"))

        cases = app.overview_screen.query_one(CaseTable)
        await until(pilot, lambda: cases.case_ids == [doc["id"]], "the pushed case")


async def test_the_console_shows_an_unverified_certificate_as_its_connection_error(
    tls_agent: Agent, stranger: Pems
) -> None:
    await tls_agent.case_service.on_signal(case_signal("shop-api"))
    client = AgentClient(
        https(tls_agent), OPERATOR_KEY, timeout_s=2.0, ca_file=stranger.ca_file
    )
    app = ConsoleApp(client, StreamSource(client, poll_s=SLOW_POLL_S))
    async with app.run_test(size=SIZE) as pilot:
        await until(
            pilot, lambda: "certificate does not verify" in status_text(app), "the error"
        )
        assert app.link is not None and app.link.state == "disconnected"
        assert f"cannot trust {https(tls_agent)}" in status_text(app)
        assert app.overview_screen.query_one(CaseTable).case_ids == []
        assert len(tls_agent.hub) == 0


async def test_the_simulator_sends_spans_and_reads_cases_over_https(
    tls_agent: Agent, pems: Pems, stranger: Pems
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proveai_agent",
        "simulate",
        "--agent",
        https(tls_agent),
        "--api-key",
        OPERATOR_KEY,
        "--ca-file",
        str(pems.ca_file),
        "--rate",
        "10",
        "--duration",
        "1",
        "--seed",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # An environment that names another CA bundle for requests: --ca-file still rules.
        env={**os.environ, "REQUESTS_CA_BUNDLE": str(stranger.ca_file)},
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()
    assert b"error" not in output.lower(), output.decode()
    assert {service for service, _ in stored_spans(tls_agent)} >= {"rag-api"}

    trusting = FixWatcher(agent_api(https(tls_agent), READ_KEY, str(pems.ca_file)), [], print)
    assert await asyncio.to_thread(trusting.applied_case) is None
    refusing = FixWatcher(
        agent_api(https(tls_agent), READ_KEY, str(stranger.ca_file)), [], print
    )
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.to_thread(refusing.applied_case)
