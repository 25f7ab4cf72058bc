"""`proveai-agent stack check` against a live native stack and against nothing at all.

The live stack is the agent standing in for the collector (it derives the span metrics),
real Prometheus scraping it every second and remote-writing to real VictoriaMetrics,
optionally Envoy in front: the design's `no-collector` profile. The profile names and
their services come from the design's profile table.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentfix import OPERATOR_KEY
from proveai_agent.stack import check
from proveai_agent.stack.native import (
    MissingBinary,
    NativeStack,
    build_collector,
    find_binary,
    find_envoy,
    free_port,
)
from stackfix import VMHandle

ENVOY_KEY = "check-envoy-key-0123456789abcdef"
FIRST_METRIC = re.compile(
    r"^first metric  (\d+\.\d\d) s: a span of proveai-stack-check-[0-9a-f]{8} sent to ",
    re.MULTILINE,
)


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float

    def line(self, label: str) -> str:
        """The text after a summary label such as "profile" or "missing"."""
        match = re.search(rf"^{label} +(.*)$", self.out, re.MULTILINE)
        assert match, f"no {label!r} line in:\n{self.out}"
        return match.group(1)

    def rows(self, component: str) -> list[str]:
        return [ln for ln in self.out.splitlines() if ln.startswith(f"  {component} ")]


def run_check(capsys: pytest.CaptureFixture[str], *argv: str) -> Outcome:
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    args = parser.parse_args(list(argv))
    started = time.monotonic()
    code = check.run(args)
    seconds = time.monotonic() - started
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err, seconds)


async def run_check_async(capsys: pytest.CaptureFixture[str], *argv: str) -> Outcome:
    """The check from a worker thread, so that the agent in this test's loop can answer."""
    return await asyncio.to_thread(run_check, capsys, *argv)


# --- the profile table --------------------------------------------------------------------

DESIGN_PROFILES = {
    "full": {"envoy", "collector", "prometheus", "victoriametrics"},
    "no-prometheus": {"envoy", "collector", "victoriametrics"},
    "no-vm": {"envoy", "collector", "prometheus"},
    "no-collector": {"envoy", "prometheus", "victoriametrics"},
    "vm-only": {"envoy", "victoriametrics"},
    "prom-only": {"envoy", "prometheus"},
}


def report_with(live: set[str], through_envoy: bool = True) -> check.Report:
    plan = check.Plan(through_envoy=through_envoy, description="")
    results = [check.Result(c, "probe", "-", c in live, "") for c in check.COMPONENTS]
    if not through_envoy:
        results = [r for r in results if r.component != "envoy"]
    return check.Report(plan, results, check.FirstMetric(skipped="test"))


@pytest.mark.parametrize(("profile", "services"), DESIGN_PROFILES.items())
@pytest.mark.parametrize("agent", [False, True])
def test_every_profile_of_the_design_is_named_from_its_services(profile, services, agent):
    live = services | ({"agent"} if agent else set())
    assert report_with(live).profile == profile


@pytest.mark.parametrize(
    "live",
    [{"envoy"}, {"envoy", "collector"}, {"envoy", "agent"}, {"envoy", "collector", "agent"}],
)
def test_sets_that_no_profile_has_are_an_unknown_combination(live):
    report = report_with(live)
    assert report.profile is None
    assert "unknown combination" in check.format_report(report, "no key")


def test_without_envoy_answering_no_profile_is_live():
    assert report_with({"prometheus", "victoriametrics"}).profile is None
    assert report_with({"prometheus", "victoriametrics"}, through_envoy=False).profile == (
        "no-collector"
    )


def test_a_direct_item_that_is_not_name_equals_url_is_refused(capsys):
    outcome = run_check(capsys, "--direct", "grafana=http://127.0.0.1:3000")
    assert outcome.code == 1
    assert "expected NAME=URL with NAME one of collector" in outcome.err
    outcome = run_check(capsys, "--direct", "prometheus=127.0.0.1:9090")
    assert (outcome.code, "not an http:// or https:// URL" in outcome.err) == (1, True)


def test_the_key_goes_in_x_api_key_or_as_a_basic_auth_password():
    assert check.credential_headers("k" * 20, None) == {"X-API-Key": "k" * 20}
    # base64("ops:" + "k" * 20)
    assert check.credential_headers("k" * 20, "ops") == {
        "Authorization": "Basic b3BzOmtra2tra2tra2tra2tra2tra2tr"
    }
    assert check.credential_headers(None, "ops") == {}


# --- nothing listening ----------------------------------------------------------------------


def test_with_nothing_listening_every_component_is_down_and_the_exit_is_1(capsys, tmp_path):
    ports = [free_port() for _ in range(6)]
    env = tmp_path / ".env"
    env.write_text(
        f"ENVOY_API_KEYS={ENVOY_KEY}\nOTLP_GRPC_PORT={ports[0]}\nOTLP_HTTP_PORT={ports[1]}\n"
        f"COLLECTOR_METRICS_PORT={ports[2]}\nPROMETHEUS_PORT={ports[3]}\nVM_PORT={ports[4]}\n"
        f"AGENT_PORT={ports[5]}\n"
    )
    outcome = run_check(capsys, "--env", str(env), "--envoy", "127.0.0.1")

    assert outcome.code == 1
    assert outcome.seconds < 5
    for component in ("envoy", "collector", "prometheus", "victoriametrics", "agent"):
        rows = outcome.rows(component)
        assert rows, component
        assert all(" FAIL " in row and "cannot connect" in row for row in rows), rows
    assert len(outcome.rows("envoy")) == 6
    assert outcome.line("profile") == "none: nothing answers"
    missing = outcome.line("missing")
    for component in ("envoy", "collector", "prometheus", "victoriametrics"):
        assert f"{component}: does not answer" in missing
    assert outcome.line("first metric") == "not measured: no OTLP/HTTP receiver answers"
    assert outcome.line("result") == "FAILED: nothing answers"
    assert ENVOY_KEY not in outcome.out


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def test_a_component_that_never_answers_is_down_after_the_timeout(capsys, silent_port):
    url = f"http://127.0.0.1:{silent_port}"
    outcome = run_check(
        capsys, "--direct", f"prometheus={url}", f"vm={url}", f"agent={url}", "--timeout", "0.5"
    )
    assert outcome.code == 1
    assert outcome.seconds < 3  # every probe runs at once, each stopped after 0.5 s
    rows = [*outcome.rows("prometheus"), *outcome.rows("victoriametrics")]
    rows += outcome.rows("agent")
    assert len(rows) == 8
    assert all("FAIL" in row and "no answer within 0.5 s" in row for row in rows), rows
    assert outcome.line("profile") == "none: nothing answers"


# --- a live native stack --------------------------------------------------------------------


@pytest.fixture
def binaries() -> None:
    try:
        find_binary("prometheus", "PROVEAI_PROMETHEUS_BIN", "prometheus")
        find_binary("victoria-metrics", "PROVEAI_VM_BIN", "victoria-metrics")
    except MissingBinary as exc:
        pytest.skip(str(exc))


@pytest.fixture
async def native(
    binaries: None, agent_factory: Callable[..., Any], tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Start the agent (deriving span metrics) and a native stack scraping it every second;
    `await native(envoy=True)` also puts Envoy in front, `collector=True` the collector
    between Envoy and the agent (which then derives nothing)."""
    stacks: list[NativeStack] = []

    async def start(envoy: bool = False, collector: bool = False) -> tuple[Any, NativeStack]:
        binary = None
        try:
            if envoy:
                find_envoy()
            if collector:
                binary = await asyncio.to_thread(build_collector)
        except MissingBinary as exc:
            pytest.skip(str(exc))
        prometheus_port, vm_port = free_port(), free_port()
        agent = await agent_factory(
            prometheus_url=f"http://127.0.0.1:{prometheus_port}",
            victoriametrics_url=f"http://127.0.0.1:{vm_port}",
            derive_metrics=not collector,
        )
        key_file = tmp_path / "scrape.key"
        key_file.write_text(OPERATOR_KEY)
        stack = NativeStack(
            tmp_path / "stack",
            agent_target=agent.url.removeprefix("http://"),
            agent_key_file=key_file,
            scrape_interval_s=1,
            prometheus_port=prometheus_port,
            vm_port=vm_port,
            vm_latency_offset_s=1,
            envoy={"ENVOY_API_KEYS": ENVOY_KEY} if envoy else None,
            collector_binary=binary,
            collector_flush_interval_s=1,
        )
        await asyncio.to_thread(stack.start)
        stacks.append(stack)
        return agent, stack

    yield start
    for stack in stacks:
        await asyncio.to_thread(stack.stop)


@pytest.mark.integration
async def test_agent_prometheus_and_vm_directly_are_no_collector_without_envoy(native, capsys):
    agent, stack = await native()
    outcome = await run_check_async(
        capsys,
        "--direct",
        f"prometheus={stack.prometheus_url}",
        f"victoriametrics={stack.victoriametrics_url}",
        f"agent={agent.url}",
        "--key",
        OPERATOR_KEY,
        "--first-metric-timeout",
        "20",
    )

    assert outcome.code == 0, outcome.out
    assert outcome.line("profile") == (
        "no-collector (prometheus, victoriametrics, and the agent), without Envoy"
    )
    assert outcome.line("missing") == (
        "envoy: not checked (--direct without --envoy); collector: not given with --direct"
    )
    found = FIRST_METRIC.search(outcome.out)
    assert found, outcome.out
    assert 0 < float(found.group(1)) < 20
    assert f"sent to {agent.url} (agent)" in outcome.out
    assert "series in prometheus; stored by the agent after" in outcome.out
    assert outcome.line("result") == "ok: everything of no-collector answers"
    assert all(" ok " in row for row in outcome.rows("prometheus")), outcome.out
    assert OPERATOR_KEY not in outcome.out + outcome.err


@pytest.mark.integration
async def test_the_same_stack_through_envoy_is_no_collector_with_envoy(native, capsys):
    _, stack = await native(envoy=True)
    env_file = stack.envoy.env_file
    outcome = await run_check_async(
        capsys, "--env", str(env_file), "--envoy", "127.0.0.1", "--first-metric-timeout", "20"
    )

    assert outcome.code == 0, outcome.out
    assert f"credentials: the first key of ENVOY_API_KEYS in {env_file}" in outcome.out
    assert outcome.line("profile") == (
        "no-collector (envoy, prometheus, victoriametrics, and the agent)"
    )
    assert outcome.line("missing") == f"collector: not configured in {env_file}"
    listeners = outcome.rows("envoy")
    assert [row.split()[1] for row in listeners] == [
        "otlp_http",
        "prometheus",
        "victoriametrics",
        "agent",
    ]
    assert all("refuses without a key (401)" in row for row in listeners)
    otlp = stack.envoy.ports["otlp_http"]
    assert f"sent to envoy :{otlp} (agent)" in outcome.out
    assert FIRST_METRIC.search(outcome.out), outcome.out
    assert ENVOY_KEY not in outcome.out
    assert OPERATOR_KEY not in outcome.out


@pytest.mark.integration
async def test_the_whole_stack_through_envoy_is_full(native, capsys):
    _, stack = await native(envoy=True, collector=True)
    outcome = await run_check_async(
        capsys, "--env", str(stack.envoy.env_file), "--first-metric-timeout", "20"
    )

    assert outcome.code == 0, outcome.out
    assert outcome.line("profile") == (
        "full (envoy, collector, prometheus, victoriametrics, and the agent)"
    )
    assert outcome.line("missing") == "nothing"
    assert [row.split()[1] for row in outcome.rows("collector")] == ["OTLP/HTTP", "span"]
    assert all(" ok " in row for row in outcome.rows("collector"))
    otlp = stack.envoy.ports["otlp_http"]
    assert f"sent to envoy :{otlp} (collector)" in outcome.out
    assert "stored by the agent after" in outcome.line("first metric")
    assert FIRST_METRIC.search(outcome.out), outcome.out
    assert ENVOY_KEY not in outcome.out


@pytest.mark.integration
async def test_a_wrong_key_through_envoy_fails_every_component_behind_it(native, capsys):
    _, stack = await native(envoy=True)
    wrong = "check-wrong-key-0123456789abcdef"
    outcome = await run_check_async(
        capsys,
        "--env",
        str(stack.envoy.env_file),
        "--key",
        wrong,
        "--first-metric-timeout",
        "5",
    )

    assert outcome.code == 1
    assert all(" ok " in row for row in outcome.rows("envoy"))
    for component in ("prometheus", "victoriametrics", "agent"):
        assert all("HTTP 401" in row for row in outcome.rows(component)), outcome.out
    assert outcome.line("profile") == "unknown combination (no back-end)"
    assert wrong not in outcome.out


@pytest.mark.integration
def test_only_victoriametrics_answering_is_vm_only(vm: VMHandle, capsys):
    outcome = run_check(capsys, "--direct", f"vm={vm.url}")
    assert outcome.code == 0, outcome.out
    assert outcome.line("profile") == "vm-only (victoriametrics), without Envoy"
    missing = outcome.line("missing")
    assert "collector: not given with --direct" in missing
    assert "prometheus: not given with --direct" in missing
    assert outcome.line("first metric") == "not measured: no OTLP/HTTP receiver answers"

    dead = f"http://127.0.0.1:{free_port()}"
    outcome = run_check(capsys, "--direct", f"vm={vm.url}", f"prometheus={dead}")
    assert outcome.code == 1
    assert outcome.line("profile") == "vm-only (victoriametrics), without Envoy"
    assert "prometheus: does not answer" in outcome.line("missing")
    assert outcome.line("result") == "FAILED: not answering as it should: prometheus"
