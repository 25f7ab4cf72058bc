"""`proveai-agent demo`: agent, native Prometheus and VictoriaMetrics, simulator and console."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from .api.auth import ensure_keys_file
from .config import default_data_dir
from .stack.native import NativeStack

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM or a closed terminal stops the demo as Ctrl-C does: what it started runs in
    sessions of its own, which no signal to the demo's terminal reaches."""
    raise KeyboardInterrupt


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As a server binds: connections of a previous run in TIME_WAIT do not block it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _without_proxy_for(hosts: tuple[str, ...], env: dict[str, str]) -> dict[str, str]:
    """`env` with `hosts` added to no_proxy: an HTTP proxy set in the environment is for
    the way out, and the demo's processes talk only to each other on this host, which
    they must not do through a proxy somewhere else."""
    listed = [h for h in env.get("no_proxy", env.get("NO_PROXY", "")).split(",") if h]
    value = ",".join(dict.fromkeys([*listed, *hosts]))
    return {**env, "no_proxy": value, "NO_PROXY": value}


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}; see {log}")
        try:
            with opener.open(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the agent did not answer on {url} within {timeout_s:.0f} s; see {log}")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_demo(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir or default_data_dir() / "demo"
    if data_dir.exists() and not args.keep:
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    keys = data_dir / "keys"
    key = ensure_keys_file(keys)
    scrape_key = data_dir / "scrape.key"
    scrape_key.write_text(key)
    scrape_key.chmod(0o600)

    host, _, port_text = (args.listen or "127.0.0.1:8470").rpartition(":")
    port = int(port_text)
    if not _port_free(host, port):
        port = _free_port(host)
    url = f"http://{host}:{port}"
    python = sys.executable
    env = {**os.environ, "PROVEAI_API_KEY": key, "PROVEAI_URL": url}
    env = _without_proxy_for((*LOCAL_HOSTS, host), env)
    env.pop("PROVEAI_API_KEYS", None)

    stack = NativeStack(
        data_dir / "stack",
        agent_target=f"{host}:{port}",
        agent_key_file=scrape_key,
        scrape_interval_s=args.scrape_interval,
    )
    agent = simulator = None
    agent_log = data_dir / "agent.log"
    # Shorter windows (detector, verification) for a quick walk, without changing defaults.
    agent_config = ["--config", str(args.config)] if args.config else []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    # The stores and the agent start side by side: the agent answers without them and
    # reads them from their first answer on, which brings the first panel sooner.
    starting = ThreadPoolExecutor(1, thread_name_prefix="demo-stack")
    stack_started = starting.submit(stack.start)
    try:
        with open(agent_log, "ab") as log:
            agent = subprocess.Popen(
                [
                    python,
                    "-m",
                    "proveai_agent",
                    "serve",
                    "--listen",
                    f"{host}:{port}",
                    "--data-dir",
                    str(data_dir / "agent"),
                    "--keys-file",
                    str(keys),
                    "--prometheus",
                    stack.prometheus_url,
                    "--victoriametrics",
                    stack.victoriametrics_url,
                    "--scrape-interval",
                    str(args.scrape_interval),
                    *agent_config,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _wait_healthy(url, agent, agent_log, 30)
        stack_started.result()
        print(f"Prometheus       {stack.prometheus_url}")
        print(f"VictoriaMetrics  {stack.victoriametrics_url}")
        print(f"agent            {url}  (log {agent_log}, API key in {keys})")
        # The key travels in the SDK's standard variables, not on a command line ps shows.
        sim_env = {
            **env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": f"X-API-Key={key}",
        }
        sim_cmd = [python, "-m", "proveai_agent", "simulate", "--rate", str(args.rate)]
        sim_cmd += ["--seed", "1"]
        if args.inject != "none":
            # The simulated service gets better once the console marks a fix applied.
            sim_cmd += ["--inject", args.inject, "--at", str(args.at), "--fix-when-applied"]
            print(
                f"simulator        injects {args.inject} {args.at:.0f} s after start,"
                " until a fix is applied"
            )
        with open(data_dir / "simulator.log", "ab") as log:
            simulator = subprocess.Popen(
                sim_cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=sim_env,
                start_new_session=True,
            )
        if args.no_console:
            print("running without console; Ctrl-C stops everything")
            stop_signals = {signal.SIGINT, *STOP_SIGNALS}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
            return 0
        return subprocess.call([python, "-m", "proveai_tui.app", "--agent", url], env=env)
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, OSError) as exc:
        print(f"proveai-agent demo: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second signal must not cut the clean-up short and leave processes behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        _stop(simulator)
        _stop(agent)
        wait([stack_started])  # a start still under way ends before the stores are stopped
        starting.shutdown()
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
