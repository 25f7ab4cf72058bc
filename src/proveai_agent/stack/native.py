"""Run real Prometheus and VictoriaMetrics as local child processes, without Docker."""

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
from collections.abc import Sequence
from pathlib import Path
from string import Template
from types import TracebackType
from typing import IO, Self

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = (
    Path(__file__).resolve().parents[3] / "stack" / "native" / "prometheus.yml.tmpl"
)
PROMETHEUS_RETENTION = "15d"
VM_RETENTION_MONTHS = 12


class StackError(RuntimeError):
    """A back-end could not be started or did not become ready."""


class MissingBinary(StackError):
    """A back-end's binary is neither on PATH nor named by its environment variable."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class _Child:
    """One back-end process: started with its log in a file, polled until ready, stopped."""

    def __init__(self, name: str, argv: list[str], log_path: Path, ready_url: str) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.ready_url = ready_url
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
            )
        except OSError as exc:
            self._close_log()
            raise StackError(f"{self.name}: cannot run {self.argv[0]}: {exc}") from exc
        self._wait_ready(ready_timeout_s)
        logger.info("%s ready at %s (pid %d)", self.name, self.ready_url, self._proc.pid)

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._close_log()
                raise StackError(
                    f"{self.name} exited with status {code} before it was ready; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)
        self.stop()
        raise StackError(
            f"{self.name} not ready at {self.ready_url} after {timeout_s:.0f}s ({last}); "
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
        self._child = _Child(
            "victoria-metrics",
            self.argv(binary),
            self.data_dir / "victoria-metrics.log",
            f"{self.url}/health",
        )
        try:
            self._child.start(ready_timeout_s)
        except BaseException:
            self._child = None
            raise
        return self


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
        self._child = _Child(
            "prometheus",
            self.argv(binary),
            self.data_dir / "prometheus.log",
            f"{self.url}/-/ready",
        )
        try:
            self._child.start(ready_timeout_s)
        except BaseException:
            self._child = None
            raise
        return self


class NativeStack:
    """Prometheus remote-writing to VictoriaMetrics, both local children of this process.

    Use it as a context manager, or call start() and stop(). Ports of 0 are replaced
    by free ones when the stack is built, so the URLs are known before it starts.

    Args:
        data_dir: both keep their data and logs under it.
        agent_target: the agent's host:port that Prometheus scrapes, or None.
        agent_key_file: a file holding one API key of the agent, or None when its
            /metrics is open.
        scrape_interval_s: Prometheus' scrape interval.
        prometheus_port: 0 for a free port.
        vm_port: 0 for a free port.
        extra_targets: more host:port targets for Prometheus, without authentication.
        vm_latency_offset_s: VictoriaMetrics' `-search.latencyOffset`.
        vm_disable_cache: VictoriaMetrics' `-search.disableCache`.
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
    ) -> None:
        self.data_dir = Path(data_dir)
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

    @property
    def prometheus_url(self) -> str:
        return self.prometheus.url

    @property
    def victoriametrics_url(self) -> str:
        return self.victoriametrics.url

    def start(self, ready_timeout_s: float = 30.0) -> Self:
        """Start VictoriaMetrics, then Prometheus; both are ready when this returns."""
        self.victoriametrics.start(ready_timeout_s)
        try:
            self.prometheus.start(ready_timeout_s)
        except BaseException:
            self.victoriametrics.stop()
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop Prometheus, then VictoriaMetrics: terminate, and kill after `timeout_s`."""
        try:
            self.prometheus.stop(timeout_s)
        finally:
            self.victoriametrics.stop(timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
