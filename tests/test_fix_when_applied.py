"""`simulate --fix-when-applied` against a real agent: the fault stops when a fix is applied."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentfix import OPERATOR_KEY
from proveai_agent.signals import Signal
from proveai_agent.stack.native import free_port

SUGGESTION = {
    "id": "CASE-1-S1",
    "cause_id": "model-version-changed",
    "action": "Pin the previous model version.",
    "verification": {"query": "vector(1)", "comparator": ">=", "threshold": 0.5, "window_s": 2},
}


class Simulator:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        for line in self.lines:
            if text in line:
                return line
        assert self.process.stdout is not None
        while (left := deadline - time.monotonic()) > 0:
            try:
                raw = await asyncio.wait_for(self.process.stdout.readline(), left)
            except TimeoutError:
                break
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout_s} s; got {self.lines}")


@contextlib.asynccontextmanager
async def simulator(*options: str) -> AsyncIterator[Simulator]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proveai_agent",
        "simulate",
        "--rate",
        "2",
        "--seed",
        "1",
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield Simulator(process)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


def signal(service: str) -> Signal:
    return Signal(
        kind="error_spike",
        failure_class="ERROR_SPIKE",
        trigger="anomaly_detection",
        service=service,
        span_name="chat",
        at=time.time(),
        severity="high",
        summary="errors 40 % against 1 %",
    )


async def suggested_case(agent: Any, service: str) -> str:
    """A case of `service` waiting for an engineer to apply its suggestion."""
    doc = await agent.case_service.on_signal(signal(service))
    doc["state"] = "REMEDIATION_SUGGESTED"
    doc["remediation_suggestions"] = [{**SUGGESTION, "id": f"{doc['id']}-S1"}]
    number = int(doc["id"].split("-")[1])
    await agent.case_store.update(number, doc, time.time())
    return doc["id"]


async def apply_fix(http: Any, agent: Any, case_id: str) -> None:
    body = {"to": "FIX_APPLIED", "actor": "ana", "suggestion_id": f"{case_id}-S1"}
    async with http.post(
        f"{agent.url}/api/cases/{case_id}/transition",
        json=body,
        headers={"X-API-Key": OPERATOR_KEY},
    ) as response:
        assert response.status == 200, await response.text()


async def test_the_fault_stops_once_a_fix_for_its_service_is_applied(agent, http) -> None:
    options = ("--agent", agent.url, "--api-key", OPERATOR_KEY, "--inject", "errors")
    async with simulator(*options, "--fix-when-applied") as sim:
        await sim.wait_for("fault started: errors on rag-api", 20)
        # A fix for another service's case stops nothing.
        other = await suggested_case(agent, "research-agent")
        await apply_fix(http, agent, other)
        await asyncio.sleep(2.5)
        assert not any("stopping the fault" in line for line in sim.lines)

        mine = await suggested_case(agent, "rag-api")
        await apply_fix(http, agent, mine)
        line = await sim.wait_for("stopping the fault", 10)
        assert line == f"simulate: {mine} has a fix applied; stopping the fault"
        await sim.wait_for("fault stopped: errors on rag-api (on request)", 5)


async def test_an_unreachable_agent_is_said_once_and_the_run_goes_on() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    options = ("--agent", url, "--inject", "errors", "--fix-when-applied")
    async with simulator(*options, "--duration", "4") as sim:
        assert await asyncio.wait_for(sim.process.wait(), 30) == 0
        await sim.wait_for("", 1)  # the rest of the output
        assert sim.process.stdout is not None
        rest = (await sim.process.stdout.read()).decode().splitlines()
        lines = sim.lines + rest
    warnings = [line for line in lines if "cannot ask the agent for applied fixes" in line]
    assert len(warnings) == 1, lines


@pytest.mark.parametrize("options", [(), ("--fix-at", "5")])
async def test_fix_when_applied_needs_a_fault(options: tuple[str, ...]) -> None:
    async with simulator(
        "--agent", "http://127.0.0.1:9", "--fix-when-applied", *options
    ) as sim:
        assert await asyncio.wait_for(sim.process.wait(), 30) == 2
