"""Detection delay per scenario, and false cases per hour of healthy traffic.

Starts the native Prometheus and VictoriaMetrics (10 s scrape, as in production) and the
agent with its production detector settings, watching every run's workspace. Then, at
once, every scenario of the library runs with its own service-name suffix and the
scenario's own onset, while one more simulator sends healthy traffic only. A scenario's
detection delay is the time from its failure onset (the simulator's "fault started" line)
to the opening of the case on its service; the false cases are the cases opened on the
healthy run's services, per hour of that run, plus any case a scenario run opened on a
service other than its own or before its onset (listed, not counted per hour).

    python bench/detect.py [--quick] [--healthy-minutes M]

--quick sends healthy traffic for 5 minutes instead of 30.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import KEY, scraped_agent
from proveai_agent.simulate.library import WORKSPACE, Scenario, scenarios

SCRAPE_S = 10
DETECTION_LIMIT_S = 180
"""A scenario whose case has not opened this long after its onset counts as missed."""
HEALTHY = "healthy"


@dataclass
class Run:
    """One simulator and what its output said, as it said it."""

    name: str
    suffix: str
    process: subprocess.Popen[str]
    scenario: Scenario | None = None
    onset_at: float | None = None
    lines: list[str] = field(default_factory=list)

    def services(self) -> dict[str, str]:
        return {base: f"{base}-{self.suffix}" for base in ("rag-api", "research-agent")}

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if "fault started" in line and self.onset_at is None:
                self.onset_at = time.time()


def agent_config(path: Path, workdir: Path, suffixes: list[str]) -> None:
    """The agent's TOML: production detector settings, every run's workspace watched."""
    lines = []
    for suffix in suffixes:
        for base in ("rag-api", "research-agent"):
            name = f"{base}-{suffix}"
            shutil.copytree(WORKSPACE / base, workdir / name)
            lines += [
                "[[watch_files]]",
                f"path = {json.dumps(str(workdir / name))}",
                f"service = {json.dumps(name)}",
            ]
    path.write_text("series_cap = 200000\n" + "\n".join(lines) + "\n")
    tomllib.loads(path.read_text())


def start_run(name: str, suffix: str, agent: str, workdir: Path, seed: int) -> Run:
    command = [sys.executable, "-m", "proveai_agent", "simulate", "--seed", str(seed)]
    command += ["--service-suffix", suffix, "--agent", agent, "--api-key", KEY]
    library = scenarios()
    if name != HEALTHY:
        command += ["--scenario", name, "--workdir", str(workdir)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
    )
    run = Run(name, suffix, process, library.get(name))
    threading.Thread(target=run.read, daemon=True).start()
    return run


def cases(agent: str) -> list[dict[str, Any]]:
    headers = {"X-API-Key": KEY}
    items = requests.get(f"{agent}/api/cases?limit=1000", headers=headers, timeout=10).json()
    return [
        requests.get(f"{agent}/api/cases/{item['id']}", headers=headers, timeout=10).json()
        for item in items["items"]
    ]


def opened(case: dict[str, Any]) -> float:
    return datetime.fromisoformat(case["opened_at"].replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 minutes of healthy traffic")
    parser.add_argument("--healthy-minutes", type=float, help="default 30 (5 with --quick)")
    args = parser.parse_args()
    healthy_s = 60 * (args.healthy_minutes or (5 if args.quick else 30))

    library = list(scenarios().values())
    base = Path(tempfile.mkdtemp(prefix="proveai-detect-"))
    workdir = base / "work"
    suffixes = [f"d{index:02d}" for index in range(len(library))]
    config = base / "agent.toml"
    agent_config(config, workdir, suffixes)
    runs: list[Run] = []
    with scraped_agent(base, config, SCRAPE_S) as agent:
        try:
            started = time.time()
            runs = [
                start_run(s.name, suffix, agent.url, workdir, index + 1)
                for index, (s, suffix) in enumerate(zip(library, suffixes, strict=True))
            ]
            runs.append(start_run(HEALTHY, "h", agent.url, workdir, 99))
            last_onset = started + max(s.onset_s for s in library)
            deadline = max(last_onset + DETECTION_LIMIT_S, started + healthy_s)
            stopped: set[str] = set()
            while time.time() < deadline:
                time.sleep(SCRAPE_S)
                found = cases(agent.url)
                for run in runs:
                    if run.scenario is None or run.name in stopped or run.onset_at is None:
                        continue
                    own = run.services()[run.scenario.service]
                    late = time.time() > run.onset_at + DETECTION_LIMIT_S
                    if late or any(case["service"] == own for case in found):
                        run.process.terminate()
                        stopped.add(run.name)
            healthy_end = time.time()
            found = cases(agent.url)
        finally:
            for run in runs:
                run.process.terminate()
            for run in runs:
                try:
                    run.process.wait(15)
                except subprocess.TimeoutExpired:
                    run.process.kill()

    return report(runs, found, healthy_end - started)


def report(runs: list[Run], found: list[dict[str, Any]], healthy_s: float) -> int:
    delays: list[float] = []
    missed = 0
    extra: list[str] = []
    print(f"{'scenario':36} {'class':22} {'delay_s':>8}  case     top-2  planted")
    for run in runs:
        mine = [c for c in found if c["service"] in run.services().values()]
        if run.scenario is None:
            continue
        own = run.services()[run.scenario.service]
        onset = run.onset_at
        hit = [c for c in mine if c["service"] == own and onset and opened(c) >= onset - 1]
        for case in mine:
            if case not in hit[:1]:
                extra.append(f"{run.name}: {case['id']} {case['service']} {case['title']}")
        if not hit or onset is None:
            missed += 1
            print(f"{run.name:36} {run.scenario.failure_class:22} {'missed':>8}")
            continue
        case = hit[0]
        delay = opened(case) - onset
        delays.append(delay)
        scores = case["class_scores"]
        top = sorted(scores, key=lambda c: -scores[c])[:2]
        planted = any(c["correlated"] for c in case["recent_changes"])
        print(
            f"{run.name:36} {run.scenario.failure_class:22} {delay:8.1f}  {case['id']:8} "
            f"{'yes' if run.scenario.failure_class in top else 'no':5}  "
            f"{'marked' if planted else 'not marked'}"
        )
    healthy = [c for c in found if c["service"].endswith("-h")]
    for case in healthy:
        extra.append(f"{HEALTHY}: {case['id']} {case['service']} {case['title']}")
    per_hour = len(healthy) / (healthy_s / 3600)
    print(f"\nhealthy traffic: {healthy_s / 60:.1f} min, {len(healthy)} cases")
    for line in extra:
        print(f"extra case: {line}")
    median = statistics.median(delays) if delays else float("nan")
    worst = max(delays) if delays else float("nan")
    print(
        f"median_delay_s={median:.1f} max_delay_s={worst:.1f} "
        f"false_cases_per_hour={per_hour:.1f} missed={missed} extra_cases={len(extra)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
