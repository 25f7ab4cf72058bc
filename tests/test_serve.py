"""`proveai-agent serve` as a process: key set-up, and a clean exit on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from proveai_agent.stack.native import free_port


def start(tmp_path: Path, *extra: str, env: dict[str, str] | None = None):
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k != "PROVEAI_API_KEYS"}
    environment.update(env or {})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proveai_agent",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path / "data"),
            *extra,
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(proc.communicate()[0].decode())


def get(url: str, key: str | None) -> int:
    request = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the agent did not exit within 15 s of SIGTERM") from None


def test_a_configured_keys_file_that_does_not_exist_is_created_with_a_usable_key(tmp_path):
    keys = tmp_path / "etc" / "keys"
    proc, url = start(tmp_path, "--keys-file", str(keys))
    try:
        key = keys.read_text().split()[0]
        assert keys.stat().st_mode & 0o777 == 0o600
        assert get(f"{url}/api/cases", key) == 200
        assert get(f"{url}/api/cases", None) == 401
    finally:
        assert stop(proc) == 0


def test_keys_from_the_environment_create_no_keys_file(tmp_path):
    proc, url = start(tmp_path, env={"PROVEAI_API_KEYS": "env-key-0123456789"})
    try:
        assert get(f"{url}/api/cases", "env-key-0123456789") == 200
        assert not (tmp_path / "data" / "keys").exists()
    finally:
        assert stop(proc) == 0


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_exits_promptly_while_the_metrics_source_is_down(tmp_path, attempt):
    down = f"http://127.0.0.1:{free_port()}"
    proc, url = start(
        tmp_path,
        "--prometheus",
        down,
        "--victoriametrics",
        down,
        "--scrape-interval",
        "0.2",
        env={"PROVEAI_API_KEYS": "k" * 20},
    )
    # Let a few watch cycles fail against the closed port, with a request in between.
    time.sleep(0.5 + attempt * 0.3)
    assert get(f"{url}/api/overview", "k" * 20) == 200
    started = time.monotonic()
    assert stop(proc) == 0
    assert time.monotonic() - started < 10


def test_a_watch_entry_without_a_service_is_refused_with_a_clear_error(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('watch_files = [{ path = "/etc/rag/prompts" }]\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "proveai_agent",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "watch_files: each entry needs a path and a service" in done.stderr
