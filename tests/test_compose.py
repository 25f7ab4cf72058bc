"""The deployment files: stack/docker-compose.yml and the systemd units in stack/systemd/.

Neither Docker nor systemd runs here: the compose file is read as YAML and held to the
stack profiles of the design, and the units are parsed (and checked by
`systemd-analyze verify` where it is installed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

STACK = Path(__file__).resolve().parents[1] / "stack"
COMPOSE = STACK / "docker-compose.yml"
UNITS = STACK / "systemd"
PROMETHEUS_YML = STACK / "prometheus" / "prometheus.yml"

# The design's table of stack profiles; the agent is an extra with a profile of its own.
PROFILES = {
    "full": {"envoy", "collector", "prometheus", "victoriametrics"},
    "no-prometheus": {"envoy", "collector", "victoriametrics"},
    "no-vm": {"envoy", "collector", "prometheus"},
    "no-collector": {"envoy", "prometheus", "victoriametrics"},
    "vm-only": {"envoy", "victoriametrics"},
    "prom-only": {"envoy", "prometheus"},
}
AGENT = "proveai-agent"
PULLED = ("envoy", "prometheus", "victoriametrics")
BUILT = ("collector", AGENT)
# Envoy's listeners: OTLP/gRPC, OTLP/HTTP, Prometheus, VictoriaMetrics, collector metrics,
# the agent's API.
ENVOY_PORTS = {
    "OTLP_GRPC_PORT": 4317,
    "OTLP_HTTP_PORT": 4318,
    "PROMETHEUS_PORT": 9090,
    "VM_PORT": 8428,
    "COLLECTOR_METRICS_PORT": 8889,
    "AGENT_PORT": 8470,
}
VERSION_TAG = re.compile(r"^[a-z0-9./_-]+:v?\d+\.\d+\.\d+([.-][0-9A-Za-z.-]+)?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _flag(args: list[str], name: str) -> str:
    """The value of `name=value` among command-line arguments."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} given {len(values)} times in {args}"
    return values[0]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source, for the short and the long volume syntax."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        out[target] = source
    return out


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_starts_exactly_the_services_of_the_design_table(
    services: dict[str, dict[str, Any]], profile: str
) -> None:
    started = {name for name, svc in services.items() if profile in svc.get("profiles", [])}
    assert started == PROFILES[profile]


def test_the_agent_is_only_in_its_own_profile_and_nothing_else_is(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services[AGENT]["profiles"] == ["agent"]
    assert {n for n, s in services.items() if "agent" in s["profiles"]} == {AGENT}
    assert set(services) == set().union(*PROFILES.values()) | {AGENT}


def test_every_service_has_a_profile_so_a_plain_up_starts_nothing(
    services: dict[str, dict[str, Any]],
) -> None:
    assert all(svc.get("profiles") for svc in services.values())


@pytest.mark.parametrize("name", PULLED)
def test_pulled_images_are_pinned_to_an_exact_version(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    image = services[name]["image"]
    assert "build" not in services[name]
    assert "latest" not in image
    assert VERSION_TAG.match(image), image


@pytest.mark.parametrize("name", BUILT)
def test_the_collector_and_the_agent_are_built_here_under_a_versioned_tag(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    assert "build" in services[name]
    assert VERSION_TAG.match(services[name]["image"]), services[name]["image"]


def test_the_collector_is_built_from_its_own_dockerfile_with_its_config_mounted(
    services: dict[str, dict[str, Any]],
) -> None:
    collector = services["collector"]
    assert collector["build"] == {"context": "./collector", "dockerfile": "Dockerfile"}
    config = _flag(collector["command"], "--config")
    assert _mounts(collector)[config] == "./collector/config.yaml"


def test_the_agents_base_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    inline = services[AGENT]["build"]["dockerfile_inline"]
    base = re.search(r"^FROM (\S+)", inline, re.M)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1)), base.group(1)


def test_only_envoy_publishes_ports(services: dict[str, dict[str, Any]]) -> None:
    assert [name for name, svc in services.items() if "ports" in svc] == ["envoy"]
    assert all("network_mode" not in svc for svc in services.values())


def test_envoy_publishes_each_listener_port_on_itself_with_the_design_defaults(
    services: dict[str, dict[str, Any]],
) -> None:
    published = {}
    for mapping in services["envoy"]["ports"]:
        match = re.fullmatch(r"\$\{(\w+):-(\d+)\}:\$\{(\w+):-(\d+)\}", mapping)
        assert match is not None, mapping
        host_var, host_port, container_var, container_port = match.groups()
        assert (host_var, host_port) == (container_var, container_port), mapping
        published[host_var] = int(host_port)
    assert published == ENVOY_PORTS


def test_envoy_runs_the_rendered_config_from_its_folder_read_only(
    services: dict[str, dict[str, Any]],
) -> None:
    envoy = services["envoy"]
    (mount,) = envoy["volumes"]
    assert mount["source"] == "./envoy"
    assert mount["read_only"] is True
    assert mount["bind"]["create_host_path"] is False
    command = envoy["command"]
    assert command[command.index("-c") + 1] == f"{mount['target']}/envoy.yaml"


@pytest.mark.parametrize(
    ("name", "flag", "volume"),
    [
        ("prometheus", "--storage.tsdb.path", "prometheus-data"),
        ("victoriametrics", "-storageDataPath", "victoriametrics-data"),
    ],
)
def test_metric_data_lives_in_a_named_volume(
    compose: dict[str, Any], name: str, flag: str, volume: str
) -> None:
    service = compose["services"][name]
    data_path = _flag(service["command"], flag)
    assert _mounts(service)[data_path] == volume
    assert volume in compose["volumes"]


def test_victoriametrics_keeps_twelve_months(services: dict[str, dict[str, Any]]) -> None:
    assert _flag(services["victoriametrics"]["command"], "-retentionPeriod") == "12"


def test_prometheus_keeps_fifteen_days(services: dict[str, dict[str, Any]]) -> None:
    command = services["prometheus"]["command"]
    assert _flag(command, "--storage.tsdb.retention.time") == "15d"


def test_prometheus_reads_the_repository_config_and_its_rules(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = services["prometheus"]
    config = Path(_flag(prometheus["command"], "--config.file"))
    assert config.name == PROMETHEUS_YML.name
    assert _mounts(prometheus)[str(config.parent)] == "./prometheus"


def test_prometheus_gets_the_agent_key_where_prometheus_yml_reads_it(
    compose: dict[str, Any],
) -> None:
    assert compose["secrets"]["agent_api_key"] == {"environment": "AGENT_API_KEY"}
    (secret,) = compose["services"]["prometheus"]["secrets"]
    assert secret["source"] == "agent_api_key"
    assert "target" not in secret  # so it is /run/secrets/agent_api_key
    assert secret["uid"] == "65534"
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    (agent_job,) = [job for job in scrape if job["job_name"] == AGENT]
    assert agent_job["authorization"]["credentials_file"] == "/run/secrets/agent_api_key"


def test_the_collector_and_the_agent_share_the_agent_key(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["collector"]["environment"]["PROVEAI_AGENT_API_KEY"] == "${AGENT_API_KEY}"
    assert services[AGENT]["environment"]["PROVEAI_API_KEYS"] == "${AGENT_API_KEY}"


def test_the_agent_listens_on_the_compose_network_and_reads_both_back_ends(
    services: dict[str, dict[str, Any]],
) -> None:
    command = services[AGENT]["command"]
    assert command[0] == "serve"
    assert _flag(command, "--listen") == "0.0.0.0:8470"
    assert _flag(command, "--prometheus") == "http://prometheus:9090"
    assert _flag(command, "--victoriametrics") == "http://victoriametrics:8428"
    assert _mounts(services[AGENT])[_flag(command, "--data-dir")] == "agent-data"


def test_the_agent_does_not_derive_span_metrics_behind_the_collector_by_default(
    compose: dict[str, Any],
) -> None:
    content = compose["configs"]["agent_config"]["content"]
    assert "derive_metrics = ${AGENT_DERIVE_METRICS:-false}" in content
    (config,) = compose["services"][AGENT]["configs"]
    assert config["target"] == _flag(compose["services"][AGENT]["command"], "--config")


def test_every_service_has_a_healthcheck_and_a_restart_policy(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        check = svc.get("healthcheck", {})
        assert check.get("test", [None])[0] == "CMD", name
        assert check.get("interval") and check.get("retries"), name
        assert svc.get("restart") in ("always", "unless-stopped"), name


def test_the_ports_and_the_agent_key_are_the_variables_shared_with_envoy() -> None:
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert {*ENVOY_PORTS, "AGENT_API_KEY"} <= used


def test_a_variable_not_in_env_example_has_a_default() -> None:
    example = STACK / ".env.example"
    if not example.exists():
        pytest.skip("stack/.env.example is not there")
    documented = set(re.findall(r"^#?\s*(\w+)=", example.read_text(), re.M))
    text = COMPOSE.read_text()
    bare = {m for m in re.findall(r"\$\{(\w+)\}", text) if m not in documented}
    assert bare == set()


# The systemd units.


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file as key -> every value given (systemd allows repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, _, value = line.partition("=")
        current[key.strip()].append(" ".join(value.split()))
    return sections


UNIT_NAMES = (
    "proveai-agent",
    "proveai-collector",
    "proveai-prometheus",
    "proveai-victoriametrics",
    "proveai-envoy",
)
BACK_ENDS = tuple(name for name in UNIT_NAMES if name != "proveai-envoy")
DATA = {
    "proveai-agent": "/var/lib/proveai/agent",
    "proveai-prometheus": "/var/lib/proveai/prometheus",
    "proveai-victoriametrics": "/var/lib/proveai/victoriametrics",
}


def service(name: str) -> dict[str, list[str]]:
    return parse_unit(UNITS / f"{name}.service")["Service"]


def exec_args(name: str) -> list[str]:
    (command,) = service(name)["ExecStart"]
    return command.split()


def test_there_is_a_unit_for_each_part_of_the_stack_and_nothing_else() -> None:
    assert sorted(p.stem for p in UNITS.glob("*.service")) == sorted(UNIT_NAMES)


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_each_unit_is_sandboxed_and_restarted_on_failure(name: str) -> None:
    unit = parse_unit(UNITS / f"{name}.service")
    svc = unit["Service"]
    assert svc["User"] == ["proveai"] or svc["DynamicUser"] == ["yes"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "Restart": "on-failure",
        "CapabilityBoundingSet": "",
    }.items():
        assert svc[key] == [value], f"{name}: {key}"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("name", sorted(DATA))
def test_a_unit_may_write_only_its_own_data_directory(name: str) -> None:
    svc = service(name)
    assert svc["ReadWritePaths"] == [DATA[name]]
    assert svc["StateDirectory"] == [DATA[name].removeprefix("/var/lib/")]


def test_units_without_data_write_nowhere() -> None:
    for name in set(UNIT_NAMES) - set(DATA):
        assert "ReadWritePaths" not in service(name), name


@pytest.mark.parametrize("name", BACK_ENDS)
def test_back_ends_reach_and_are_reached_from_this_host_only(name: str) -> None:
    svc = service(name)
    assert svc["IPAddressDeny"] == ["any"]
    assert svc["IPAddressAllow"] == ["localhost"]


def test_envoy_is_the_one_unit_reachable_from_other_hosts() -> None:
    assert "IPAddressDeny" not in service("proveai-envoy")
    assert exec_args("proveai-envoy")[1:3] == ["-c", "/etc/proveai/envoy/envoy.yaml"]


def test_back_ends_listen_on_loopback() -> None:
    assert _flag(exec_args("proveai-prometheus"), "--web.listen-address") == "127.0.0.1:9090"
    assert _flag(exec_args("proveai-victoriametrics"), "-httpListenAddr") == "127.0.0.1:8428"
    agent = exec_args("proveai-agent")
    assert agent[agent.index("--listen") + 1] == "127.0.0.1:8470"
    env = dict(item.split("=", 1) for item in service("proveai-collector")["Environment"])
    listeners = {k: v for k, v in env.items() if k.endswith(("_ENDPOINT", "_HOST"))}
    assert listeners == {
        "PROVEAI_COLLECTOR_OTLP_GRPC_ENDPOINT": "127.0.0.1:4317",
        "PROVEAI_COLLECTOR_OTLP_HTTP_ENDPOINT": "127.0.0.1:4318",
        "PROVEAI_COLLECTOR_METRICS_ENDPOINT": "127.0.0.1:8889",
        "PROVEAI_COLLECTOR_TELEMETRY_HOST": "127.0.0.1",
        "PROVEAI_AGENT_ENDPOINT": "http://127.0.0.1:8470",
    }


def test_the_units_keep_the_retention_of_the_compose_stack() -> None:
    assert _flag(exec_args("proveai-victoriametrics"), "-retentionPeriod") == "12"
    prometheus = exec_args("proveai-prometheus")
    assert _flag(prometheus, "--storage.tsdb.retention.time") == "15d"
    assert _flag(prometheus, "--config.file") == "/etc/proveai/prometheus/prometheus.yml"
    assert _flag(exec_args("proveai-collector"), "--config") == (
        "/etc/proveai/collector/config.yaml"
    )


def test_prometheus_finds_the_agent_key_where_prometheus_yml_reads_it() -> None:
    binds = {}
    for bind in service("proveai-prometheus")["BindReadOnlyPaths"]:
        source, target = bind.split(":")
        binds[target] = source
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    (agent_job,) = [job for job in scrape if job["job_name"] == AGENT]
    key_dir = str(Path(agent_job["authorization"]["credentials_file"]).parent)
    assert binds[key_dir] == "/etc/proveai/secrets"
    assert binds["/etc/hosts"] == "/etc/proveai/hosts"


def test_systemd_analyze_verify_finds_nothing_but_binaries_missing_here(
    tmp_path: Path,
) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    units = sorted(str(p) for p in UNITS.glob("*.service"))
    done = subprocess.run(
        [analyze, "verify", *units],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"},
        cwd=tmp_path,
    )
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and "is not executable: No such file or directory" not in line
    ]
    assert problems == []
