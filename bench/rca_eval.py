"""Root-cause accuracy of the remediation engine over the scenario library, end to end.

Each round runs every scenario at once (its own service-name suffix and seed) against one
agent with real Prometheus, at a short scale (1 s scrape, 30 s detector windows, failure
75 s in), and reads the case each opened once its analysis is in. A case's answer is right
when its root cause is the scenario's; "unable to determine" is not right. Per class it
prints top-1 and top-3 accuracy (top-3: the scenario's cause among the three first
hypotheses), the mean confidence of right and of wrong answers, the "unable" rate, and the
analysis time p50/p95 as the agent measured it (with the model when one is configured)
and again here on the same cases, one at a time once the simulators stopped, without the
model and (when set-up installed one) with it: p95_s_model is that quiet figure.

    python bench/rca_eval.py [--quick] [--rounds N] [--model PATH]

--quick runs one round instead of five. --model gives the agent a reasoning model (a GGUF
path or a manifest name); without it the agent ranks on evidence alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import KEY, scraped_agent
from proveai_agent.config import EngineConfig
from proveai_agent.engine import local
from proveai_agent.engine.service import Engine
from proveai_agent.simulate.library import WORKSPACE, Scenario, scenarios

ONSET_S = 75
SETTLE_S = 90
"""How long after the onset a round reads its cases: detection and a first analysis."""
ANALYSIS_WAIT_S = 300
"""How much longer it waits for analyses still queued."""
AGENT_SETTINGS = """
scrape_interval_s = 1
series_cap = 200000
drift_warmup_s = 20

[detector]
window_s = 30
baseline_s = 300
baseline_step_s = 5
min_baseline_points = 6
error_ratio_min = 0.1
min_calls = 20

[quality]
window_s = 30
baseline_s = 300
baseline_step_s = 5
min_baseline_points = 6

[patterns]
window_s = 30
baseline_s = 300
baseline_step_s = 5
min_baseline_points = 6
"""


def services(suffix: str) -> list[str]:
    return [f"rag-api-{suffix}", f"research-agent-{suffix}"]


def write_config(path: Path, workdir: Path, suffixes: list[str], model: str | None) -> None:
    lines = [AGENT_SETTINGS]
    if model:
        lines += ["[engine]", f"reasoning_model = {json.dumps(model)}"]
    for suffix in suffixes:
        for base in ("rag-api", "research-agent"):
            name = f"{base}-{suffix}"
            shutil.copytree(WORKSPACE / base, workdir / name)
            lines.append(
                f"[[watch_files]]\npath = {json.dumps(str(workdir / name))}\n"
                f"service = {json.dumps(name)}"
            )
    path.write_text("\n".join(lines) + "\n")


def run_round(
    library: list[Scenario], number: int, agent: str, workdir: Path
) -> list[tuple[Scenario, dict[str, Any] | None]]:
    runs = []
    for index, scenario in enumerate(library):
        suffix = f"r{number}s{index:02d}"
        command = [sys.executable, "-m", "proveai_agent", "simulate"]
        command += ["--scenario", scenario.name, "--onset", str(ONSET_S)]
        command += ["--seed", str(1000 * number + index), "--service-suffix", suffix]
        command += ["--workdir", str(workdir), "--agent", agent, "--api-key", KEY]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        runs.append((scenario, suffix, process))
    time.sleep(ONSET_S + SETTLE_S)
    for _, _, process in runs:
        process.terminate()
    for _, _, process in runs:
        process.wait(15)
    # The analyses queue behind each other when a model reasons: wait for every case's.
    deadline = time.monotonic() + ANALYSIS_WAIT_S
    found = cases(agent)
    while time.monotonic() < deadline and any(
        not c.get("analysis") for c in found if f"-r{number}s" in c["service"]
    ):
        time.sleep(5)
        found = cases(agent)
    results = []
    for scenario, suffix, _ in runs:
        own = f"{scenario.service}-{suffix}"
        mine = [c for c in found if c["service"] == own]
        results.append((scenario, mine[-1] if mine else None))
    return results


def cases(agent: str) -> list[dict[str, Any]]:
    headers = {"X-API-Key": KEY}
    items = requests.get(f"{agent}/api/cases?limit=1000", headers=headers, timeout=10).json()
    return [
        requests.get(f"{agent}/api/cases/{item['id']}", headers=headers, timeout=10).json()
        for item in items["items"]
    ]


def reanalyse(doc: dict[str, Any], reasoner: Any = None) -> tuple[float, dict[str, Any]]:
    """The engine's analysis of the same case here, on evidence alone or with `reasoner`,
    on a machine the simulators no longer share; timed."""

    async def stages(_: dict[str, Any]) -> set[str]:
        return set((doc.get("analysis") or {}).get("stages") or [])

    async def nothing(*_: Any) -> None:
        return None

    engine = Engine(nothing, stages, nothing, EngineConfig(), reasoner=reasoner)
    started = time.perf_counter()
    analysis = asyncio.run(engine.analyse(doc))
    return time.perf_counter() - started, analysis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--rounds", type=int, help="default 5 (1 with --quick)")
    parser.add_argument("--model", help="the agent's reasoning model: a GGUF path or name")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)

    library = list(scenarios().values())
    base = Path(tempfile.mkdtemp(prefix="proveai-rca-"))
    workdir = base / "work"
    suffixes = [f"r{n}s{i:02d}" for n in range(rounds) for i in range(len(library))]
    config = base / "agent.toml"
    write_config(config, workdir, suffixes, args.model)
    results: list[tuple[Scenario, dict[str, Any] | None]] = []
    with scraped_agent(base, config, 1, victoriametrics=False) as agent:
        for number in range(rounds):
            results += run_round(library, number, agent.url, workdir)
    return report(results)


def quiet_reasoner() -> Any:
    """The reasoning model set-up installed, for re-analysing here; None without one."""
    loaded = local.load(EngineConfig(embedding_model=None))
    return loaded.reasoner


def report(results: list[tuple[Scenario, dict[str, Any] | None]]) -> int:
    reasoner = quiet_reasoner()
    timings_quiet: list[float] = []
    quiet_right = quiet_answered = 0
    per_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    timings_model: list[float] = []
    timings_plain: list[float] = []
    answered = used = 0
    for scenario, case in results:
        row: dict[str, Any] = {"right": False, "top3": False, "unable": True, "conf": 0.0}
        analysis = (case or {}).get("analysis")
        if case is not None and analysis:
            causes = [h["cause_id"] for h in case.get("hypotheses", [])]
            row["right"] = analysis.get("root_cause") == scenario.root_cause
            row["top3"] = scenario.root_cause in causes[:3]
            row["unable"] = bool(analysis.get("unable"))
            row["conf"] = float(analysis.get("confidence") or 0.0)
            row["answer"] = analysis.get("root_cause")
            timings_model.append(float(analysis.get("duration_s") or 0.0))
            model = analysis.get("model") or {}
            used += bool(model.get("used"))
            answered += bool(model.get("answered"))
            elapsed, _ = reanalyse(case)
            timings_plain.append(elapsed)
            if reasoner is not None:
                elapsed, again = reanalyse(case, reasoner)
                timings_quiet.append(elapsed)
                quiet_right += again["analysis"]["root_cause"] == scenario.root_cause
                quiet_answered += bool(again["analysis"]["model"].get("answered"))
        row["scenario"] = scenario.name
        per_class[scenario.failure_class].append(row)

    print(
        f"{'class':22} {'n':>3} {'top1':>5} {'top3':>5} {'conf_right':>10} "
        f"{'conf_wrong':>10} {'unable':>6}"
    )
    top1s = []
    for failure_class in sorted(per_class):
        rows = per_class[failure_class]
        right = [r for r in rows if r["right"]]
        wrong = [r for r in rows if not r["right"] and not r["unable"]]
        top1 = len(right) / len(rows)
        top1s.append(top1)
        print(
            f"{failure_class:22} {len(rows):3d} {top1:5.2f} "
            f"{sum(r['top3'] for r in rows) / len(rows):5.2f} "
            f"{_mean([r['conf'] for r in right]):10.2f} "
            f"{_mean([r['conf'] for r in wrong]):10.2f} "
            f"{sum(r['unable'] for r in rows) / len(rows):6.2f}"
        )
    every = [r for rows in per_class.values() for r in rows]
    for row in every:
        if not row["right"]:
            print(
                f"  miss: {row['scenario']}: answered {row.get('answer')} ({row['conf']:.2f})"
            )
    wrong_high = sum(1 for r in every if not r["right"] and not r["unable"] and r["conf"] > 0.8)
    print(f"model consulted in {used} of {len(every)} analyses, answered in {answered}")
    if reasoner is not None:
        print(
            f"again here, one case at a time with the model: answered {quiet_answered} of "
            f"{len(timings_quiet)}, right {quiet_right}, p50 {_pct(timings_quiet, 50):.2f}s "
            f"p95 {_pct(timings_quiet, 95):.2f}s"
        )
    print(
        f"analysis time: with the model p50 {_pct(timings_model, 50):.3f}s "
        f"p95 {_pct(timings_model, 95):.3f}s; without p50 {_pct(timings_plain, 50):.3f}s "
        f"p95 {_pct(timings_plain, 95):.3f}s"
    )
    print(
        f"top1={sum(r['right'] for r in every) / len(every):.3f} "
        f"top3={sum(r['top3'] for r in every) / len(every):.3f} "
        f"worst_class_top1={min(top1s):.3f} wrong_above_0_8={wrong_high / len(every):.3f} "
        f"p95_s_model={_pct(timings_quiet or timings_model, 95):.3f} "
        f"p95_s_nomodel={_pct(timings_plain, 95):.3f}"
    )
    return 0


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


if __name__ == "__main__":
    raise SystemExit(main())
