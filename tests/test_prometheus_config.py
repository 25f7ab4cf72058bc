"""The compose stack's Prometheus configuration and its recording rules, checked by promtool.

`promtool test rules` evaluates the rules on the hand-made series of
stack/prometheus/rules/tests/, whose expected values are worked out by hand there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from proveai_agent.watch.overview import QUANTILES, RATE_WINDOW_S, WINDOW_S, _queries
from proveai_agent.watch.schemes import scheme_from_names

PROMETHEUS = Path(__file__).resolve().parents[1] / "stack" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "rules" / "tests").glob("*.yml"))
KEY_FILE = "/run/secrets/agent_api_key"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool not found on PATH: install the Debian package 'prometheus'")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def job(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [j for j in config["scrape_configs"] if j["job_name"] == name]
    return found


def test_promtool_accepts_the_config_with_its_rules(tmp_path: Path) -> None:
    # promtool wants the agent's key file to exist: a copy reads it from tmp_path instead.
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, copy)
    key = tmp_path / "agent_api_key"
    key.write_text("a-key\n")
    text = CONFIG.read_text()
    assert text.count(KEY_FILE) == 1
    (copy / CONFIG.name).write_text(text.replace(KEY_FILE, str(key)))

    done = promtool("check", "config", str(copy / CONFIG.name))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(RULES)} rule files found" in done.stdout


def test_promtool_accepts_every_rule_file() -> None:
    assert RULES
    done = promtool("check", "rules", *map(str, RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_recording_rules_give_the_hand_computed_values() -> None:
    assert RULE_TESTS
    done = promtool("test", "rules", *map(str, RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_everything_is_scraped_and_rules_evaluated_every_ten_seconds(
    config: dict[str, Any],
) -> None:
    assert config["global"]["scrape_interval"] == "10s"
    assert config["global"]["evaluation_interval"] == "10s"
    assert all("scrape_interval" not in j for j in config["scrape_configs"])


def test_the_collectors_span_metrics_are_scraped(config: dict[str, Any]) -> None:
    (targets,) = [s["targets"] for s in job(config, "collector")["static_configs"]]
    assert targets == ["collector:8889"]


def test_the_agent_is_scraped_with_its_key_as_a_bearer_token(config: dict[str, Any]) -> None:
    agent = job(config, "proveai-agent")
    assert agent["metrics_path"] == "/metrics"
    assert agent["authorization"] == {"type": "Bearer", "credentials_file": KEY_FILE}
    (targets,) = [s["targets"] for s in agent["static_configs"]]
    assert targets == ["proveai-agent:8470"]


def test_samples_reach_victoriametrics_within_seconds(config: dict[str, Any]) -> None:
    (remote,) = config["remote_write"]
    assert remote["url"] == "http://victoriametrics:8428/api/v1/write"
    deadline = remote["queue_config"]["batch_send_deadline"]
    assert re.fullmatch(r"\d+s", deadline) and int(deadline[:-1]) <= 2


def test_the_rules_folder_is_loaded_without_its_tests(config: dict[str, Any]) -> None:
    assert config["rule_files"] == ["rules/*.yml"]
    assert all(path.parent == PROMETHEUS / "rules" for path in RULES)


def _recorded() -> dict[str, list[str]]:
    exprs: dict[str, list[str]] = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                exprs.setdefault(rule["record"], []).append(rule["expr"])
    return exprs


def _same(promql: str) -> str:
    return re.sub(r"\s+", "", promql)


def test_the_recorded_request_rates_are_the_overviews_own_queries() -> None:
    scheme = scheme_from_names(
        {
            "llm_traces_span_metrics_calls_total",
            "llm_traces_span_metrics_duration_seconds_bucket",
        }
    )
    assert scheme is not None
    queries = _queries(scheme, RATE_WINDOW_S, WINDOW_S)
    recorded = _recorded()

    (rate_1m,) = recorded["service_name:llm_traces_span_metrics_calls:rate1m"]
    (rate_5m,) = recorded["service_name:llm_traces_span_metrics_calls:rate5m"]
    assert _same(rate_1m) == _same(queries["rate_rps"])
    assert _same(rate_5m) == _same(queries["calls_rps"])


def test_quantiles_are_recorded_for_the_overviews_three() -> None:
    rules = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += group["rules"]
    name = "service_name:llm_traces_span_metrics_duration_seconds:histogram_quantile5m"
    recorded = {r["labels"]["quantile"] for r in rules if r["record"] == name}
    assert recorded == {str(q) for _, q in QUANTILES}
