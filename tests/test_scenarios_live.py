"""Every scenario of the library against a live agent with real Prometheus: one case each.

All scenarios run at once, each simulator with its own service-name suffix, against one
agent that watches every run's workspace. Prometheus scrapes the agent every second and
the detectors use 30-second windows, so a scenario's failure starts 75 s in, after a
baseline of healthy traffic.

For each scenario the agent must open exactly one case among the run's services, on the
scenario's service; the scenario's class must be among the case's two highest class
scores; and the case's recent changes must hold the planted change, marked correlated,
and the unrelated changes, present and not marked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentfix import OPERATOR_KEY
from proveai_agent.config import DetectorConfig, PatternConfig, QualityConfig
from proveai_agent.simulate.library import WORKSPACE, PlannedChange, Scenario, scenarios
from proveai_agent.stack.native import NativeStack
from proveai_agent.watch.promql import MetricsSource

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("prometheus") and shutil.which("victoria-metrics")),
        reason="needs Debian's prometheus and victoria-metrics packages",
    ),
]

ONSET_S = 75
DETECTION_LIMIT_S = 75
"""How long after the onset a scenario may take to open its case."""
SETTLE_S = 15
"""How long the runs go on after the last case opened, for any second case to show."""
WINDOW_S = 30
BASELINE = {"baseline_s": 300, "baseline_step_s": 5, "min_baseline_points": 6}
"""At least 30 s of healthy baseline before a detector judges."""
ERRORS = {"error_ratio_min": 0.1, "min_calls": 20}
"""A window holds a third of the production one's calls: a couple of the healthy 0.3 % of
failed web searches would otherwise pass the 5 % floor."""


def suffix(index: int) -> str:
    return f"s{index:02d}"


def services(run: str) -> dict[str, str]:
    return {base: f"{base}-{run}" for base in ("rag-api", "research-agent")}


def matches(change: dict[str, Any], planned: PlannedChange, run: str, workdir: Path) -> bool:
    """Whether a recorded change is the one the scenario planned."""
    service = f"{planned.service}-{run}"
    if change["service"] != service or change["kind"] != planned.kind:
        return False
    if planned.kind == "deploy":
        return change["summary"] == planned.summary
    if planned.kind == "file":
        return change["source"] == str((workdir / service / str(planned.path)).resolve())
    return change["source"] == planned.key and change.get("after") == planned.value


def check(
    scenario: Scenario, run: str, workdir: Path, cases: list[dict[str, Any]]
) -> list[str]:
    """What is wrong with one scenario's outcome; empty when all is as specified."""
    names = set(services(run).values())
    mine = [case for case in cases if case["service"] in names]
    if len(mine) != 1:
        opened = [(c["id"], c["service"], c["opened_at"], c["title"]) for c in mine]
        evidence = [evidence_of(s) for c in mine for s in c["signals"]]
        return [f"{scenario.name}: {len(mine)} cases instead of one: {opened} {evidence}"]
    (case,) = mine
    problems = []
    if case["service"] != f"{scenario.service}-{run}":
        problems.append(f"{scenario.name}: case on {case['service']}")
    scores = case["class_scores"]
    top = sorted(scores, key=lambda c: -scores[c])[:2]
    if scenario.failure_class not in top:
        problems.append(f"{scenario.name}: {scenario.failure_class} not in top two of {scores}")
    recent = case["recent_changes"]
    for planned in scenario.changes:
        found = [c for c in recent if matches(c, planned, run, workdir)]
        what = f"{planned.kind} change on {planned.service} at {planned.at_s:+g}s"
        if not found:
            problems.append(f"{scenario.name}: {what} missing from the case's changes")
        elif planned.planted and not any(c["correlated"] for c in found):
            problems.append(f"{scenario.name}: planted {what} not correlated: {brief(found)}")
        elif not planned.planted and any(c["correlated"] for c in found):
            problems.append(
                f"{scenario.name}: unrelated {what} marked correlated: {brief(found)}"
            )
    if problems:
        signals = [
            (s["kind"], s["span_name"], s.get("subject"), s["at"]) for s in case["signals"]
        ]
        problems.append(f"{scenario.name}: case opened {case['opened_at']} with {signals}")
    return problems


def evidence_of(signal: dict[str, Any]) -> dict[str, Any]:
    keys = ("statistic", "current", "baseline_median", "threshold", "shift", "traffic")
    return {"kind": signal["kind"], **{k: signal["evidence"].get(k) for k in keys}}


def brief(changes: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(c["at"], c["summary"], c["correlation"]) for c in changes]


def start_runs(
    library: list[Scenario], workdir: Path, url: str, logs: Path
) -> list[subprocess.Popen[bytes]]:
    """One simulator per scenario, each with its own suffix and seed, logging to a file."""
    runs = []
    for index, scenario in enumerate(library):
        with open(logs / f"{scenario.name}.log", "wb") as log:
            command = [sys.executable, "-m", "proveai_agent", "simulate"]
            command += ["--scenario", scenario.name, "--onset", str(ONSET_S)]
            command += ["--seed", str(index + 1), "--service-suffix", suffix(index)]
            command += ["--workdir", str(workdir), "--agent", url, "--api-key", OPERATOR_KEY]
            runs.append(
                subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "500"},
                )
            )
    return runs


def stop_runs(runs: list[subprocess.Popen[bytes]]) -> None:
    for process in runs:
        process.send_signal(signal.SIGTERM)
    for process in runs:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def all_cases(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    headers = {"X-API-Key": OPERATOR_KEY}
    async with http.get(f"{url}/api/cases?limit=1000", headers=headers) as response:
        items = (await response.json())["items"]
    docs = []
    for item in items:
        async with http.get(f"{url}/api/cases/{item['id']}", headers=headers) as response:
            docs.append(await response.json())
    return docs


async def test_each_scenario_opens_one_case_with_its_class_and_planted_change(
    agent_factory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    library = list(scenarios().values())
    workdir = tmp_path / "work"
    watch = []
    for index in range(len(library)):
        for base, name in services(suffix(index)).items():
            shutil.copytree(WORKSPACE / base, workdir / name)
            watch.append({"path": str(workdir / name), "service": name})

    agent = await agent_factory(
        scrape_interval_s=1,
        series_cap=200_000,
        drift_warmup_s=20,
        watch_files=watch,
        detector=DetectorConfig(window_s=WINDOW_S, **BASELINE, **ERRORS),
        quality=QualityConfig(window_s=WINDOW_S, **BASELINE),
        patterns=PatternConfig(window_s=WINDOW_S, **BASELINE),
    )
    key_file = tmp_path / "scrape.key"
    key_file.write_text(OPERATOR_KEY)
    stack = NativeStack(
        tmp_path / "stack",
        agent_target=agent.url.removeprefix("http://"),
        agent_key_file=key_file,
        scrape_interval_s=1,
    )
    await asyncio.to_thread(stack.start)
    agent.prometheus = MetricsSource("prometheus", stack.prometheus_url)
    runs = await asyncio.to_thread(start_runs, library, workdir, agent.url, tmp_path)
    try:
        started = time.monotonic()
        print("runs started", time.strftime("%H:%M:%S", time.gmtime()))

        deadline = started + ONSET_S + DETECTION_LIMIT_S
        cases: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            await asyncio.sleep(2)
            cases = await all_cases(http, agent.url)
            served = {case["service"] for case in cases}
            if all(
                f"{scenario.service}-{suffix(index)}" in served
                for index, scenario in enumerate(library)
            ):
                break
        await asyncio.sleep(SETTLE_S)
        cases = await all_cases(http, agent.url)
    finally:
        await asyncio.to_thread(stop_runs, runs)
        await asyncio.to_thread(stack.stop)

    problems = [
        problem
        for index, scenario in enumerate(library)
        for problem in check(scenario, suffix(index), workdir, cases)
    ]
    assert not problems, "\n".join(problems)
