"""Who may call the agent: every route behind a key, keys compared in constant time and never
written anywhere, failed attempts limited and audited, keys rotated without a restart, and
the console keeping its key off the disk.

Each client below connects from its own loopback address (the whole of 127.0.0.0/8 reaches
the agent on 127.0.0.1), because the agent limits failed authentications per source: 20
within a minute, then 429 for the rest of that minute.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentfix import OPERATOR_KEY, READ_KEY
from proveai_agent.agent import Agent
from proveai_agent.api import auth
from proveai_agent.api.auth import FailureLimit
from proveai_agent.config import load as load_config
from proveai_tui import settings as console_settings
from proveai_tui.app import ConsoleApp, binding_ids, configure_logging, parse_args
from proveai_tui.feed import StreamSource

WRONG_KEY = "wrong-key-that-is-no-key-000"
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
LIMIT = 20
"""Failed authentications a source may make within a minute (the agent's documented limit)."""


@asynccontextmanager
async def source(n: int) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from 127.0.0.n."""
    connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{n}", 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def status_of(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str] | None = None
) -> int:
    async with session.request(method, url, headers=headers or {}) as response:
        await response.read()
        return response.status


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def app_routes(agent: Agent) -> list[tuple[str, str]]:
    """(method, path template) of every route of the started agent's application."""
    runner = agent._runner
    assert runner is not None and runner.app is not None
    return [(route.method, route.resource.canonical) for route in runner.app.router.routes()]


def files_holding(root: Path, texts: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every file under `root`, and (file, text) for each text found in one of them."""
    files = sorted(path for path in root.rglob("*") if path.is_file())
    found = [
        (str(path.relative_to(root)), text)
        for path in files
        for text in texts
        if text.encode() in path.read_bytes()
    ]
    return files, found


def concrete(template: str) -> str:
    """A path that matches a route template: each `{name}` becomes a plausible value."""
    return re.sub(r"\{[^}]+\}", "probe1", template)


# 1. Every route needs a key.


@pytest.mark.parametrize(
    "open_routes", [["/healthz"], ["/healthz", "/metrics"]], ids=["default", "metrics-open"]
)
async def test_every_route_but_the_open_ones_refuses_a_missing_or_wrong_key(
    agent_factory: Callable[..., Any], open_routes: list[str]
) -> None:
    agent = await agent_factory(open_routes=open_routes)
    routes = app_routes(agent)
    templates = {template for _, template in routes}
    # The spec's routes are all there: the walk below covers whatever else is added.
    assert {
        "/healthz",
        "/metrics",
        "/v1/traces",
        "/api/cases",
        "/api/cases/{case_id}/transition",
        "/api/audit",
        "/api/stream",
    } <= templates
    assert "*" not in {method for method, _ in routes}, "a catch-all method escapes the walk"

    checked: list[str] = []
    for n, (method, template) in enumerate(routes, start=10):
        url = agent.url + concrete(template)
        async with source(n) as session:
            if template in open_routes:
                assert await status_of(session, method, url) == 200, (method, template)
                continue
            assert await status_of(session, method, url) == 401, (method, template)
            for wrong in ({"X-API-Key": WRONG_KEY}, {"Authorization": basic("ops", WRONG_KEY)}):
                assert await status_of(session, method, url, wrong) == 401, (method, template)
            read = await status_of(session, method, url, {"X-API-Key": READ_KEY})
            if method not in READ_METHODS:
                assert read == 403, (method, template)
            # The operator key gets past the check, so the 401s above came from it.
            operator = await status_of(session, method, url, {"X-API-Key": OPERATOR_KEY})
            assert operator not in (401, 403, 429), (method, template, operator)
        checked.append(f"{method} {template}")

    expected = [f"{m} {t}" for m, t in routes if t not in open_routes]
    assert checked == expected and len(checked) >= 25


async def test_paths_near_an_open_route_and_unknown_paths_need_a_key(agent, http) -> None:
    from yarl import URL

    for path in ("/healthz/", "//healthz", "/HEALTHZ", "/healthz/../api/audit", "/no-such"):
        async with http.get(URL(agent.url + path, encoded=True)) as response:
            assert response.status == 401, path


# 2. Keys are compared in constant time and never written down.


async def test_every_key_is_compared_whole_whichever_matches(
    agent_factory: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("file-operator-key-00000000 operator\nfile-read-key-00000000 read\n")
    agent = await agent_factory(keys_file=keys_file)
    configured = [
        OPERATOR_KEY,
        READ_KEY,
        "file-operator-key-00000000",
        "file-read-key-00000000",
    ]
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    async with source(2) as session:
        for presented, status in [
            (OPERATOR_KEY, 200),  # the first key
            ("file-read-key-00000000", 200),  # the last key
            (WRONG_KEY, 401),
        ]:
            calls.clear()
            headers = {"X-API-Key": presented}
            assert await status_of(session, "GET", agent.url + "/api/cases", headers) == status
            # No early exit: every configured key is compared, each against the whole key.
            assert sorted(b.decode() for _, b in calls) == sorted(configured), presented
            assert {a for a, _ in calls} == {presented.encode()}


async def test_no_key_appears_in_any_log_record_the_audit_log_or_the_data_dir(
    agent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = [f"wrong-key-number-{i}-0123456789" for i in range(3)]
    attempts = [
        *({"X-API-Key": key} for key in (OPERATOR_KEY, READ_KEY, *wrong)),
        *({"Authorization": f"Bearer {key}"} for key in (OPERATOR_KEY, wrong[0])),
        *({"Authorization": basic("ops", key)} for key in (OPERATOR_KEY, wrong[1])),
    ]
    async with source(3) as session:
        for headers in attempts:
            for method, path in [("GET", "/api/cases"), ("POST", "/api/cases")]:
                await status_of(session, method, agent.url + path, headers)
            async with session.post(
                agent.url + "/v1/traces",
                data=b"{}",
                headers={**headers, "Content-Type": "application/json"},
            ) as response:
                await response.read()
        await agent.audit.flush_refused(now=time.time() + 60)
        async with session.get(
            agent.url + "/api/audit", headers={"X-API-Key": OPERATOR_KEY}
        ) as response:
            audit = await response.text()
    assert "auth.refused" in audit and json.loads(audit)["items"]

    secrets = [OPERATOR_KEY, READ_KEY, *wrong]
    forms = secrets + [basic("ops", key).removeprefix("Basic ") for key in secrets]
    assert caplog.records, "nothing was logged at DEBUG: the check below would prove nothing"
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + (record.exc_text or "")
        for form in forms:
            assert form not in text, (form, record.name, record.getMessage())
    for form in forms:
        assert form not in audit, form
    data_files, found = files_holding(Path(agent.config.data_dir), forms)
    assert data_files and found == []


# 3. Failed attempts are limited per source and audited.


async def test_a_source_that_keeps_failing_gets_429_and_one_audit_record_a_minute(
    agent,
) -> None:
    url = agent.url + "/api/cases"
    async with source(4) as attacker, source(5) as neighbour:
        for attempt in range(LIMIT):
            assert await status_of(attacker, "GET", url, {"X-API-Key": WRONG_KEY}) == 401, (
                attempt
            )
        for headers in ({"X-API-Key": WRONG_KEY}, {}, {"X-API-Key": OPERATOR_KEY}):
            async with attacker.get(url, headers=headers) as response:
                assert response.status == 429, headers
                assert 1 <= int(response.headers["Retry-After"]) <= 60
                assert "error" in await response.json()
        async with attacker.post(
            agent.url + "/v1/traces",
            data=b"{}",
            headers={"X-API-Key": WRONG_KEY, "Content-Type": "application/json"},
        ) as response:
            assert response.status == 429 and "Retry-After" in response.headers
        assert await status_of(attacker, "GET", agent.url + "/healthz") == 200

        # Another source is not held back by the first one's failures.
        assert await status_of(neighbour, "GET", url, {"X-API-Key": WRONG_KEY}) == 401
        assert await status_of(neighbour, "GET", url, {"X-API-Key": OPERATOR_KEY}) == 200

    await agent.audit.flush_refused(now=time.time() + 60)
    records = [r for r in await agent.audit.store.records() if r["action"] == "auth.refused"]
    by_source: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_source.setdefault(record["subject"], []).append(record)
    # 20 refused with 401, then 3 GETs and 1 POST with 429; /healthz is not an attempt.
    attacker_records = by_source["127.0.0.4"]
    assert sum(r["data"]["count"] for r in attacker_records) == LIMIT + 4
    minutes = [r["data"]["minute"] for r in attacker_records]
    assert len(minutes) == len(set(minutes)) <= 2  # one record per minute, two if it rolled
    assert [r["data"]["count"] for r in by_source["127.0.0.5"]] == [1]
    assert set(by_source) == {"127.0.0.4", "127.0.0.5"}


async def test_a_configured_failure_limit_is_the_one_enforced(agent_factory, tmp_path) -> None:
    config_file = tmp_path / "agent.toml"
    config_file.write_text("auth_failures_per_minute = 3\n")
    limit = load_config(config_file).auth_failures_per_minute
    assert limit == 3
    agent = await agent_factory(auth_failures_per_minute=limit)
    url = agent.url + "/api/cases"
    async with source(6) as attacker:
        statuses = [
            await status_of(attacker, "GET", url, {"X-API-Key": WRONG_KEY}) for _ in range(4)
        ]
    assert statuses == [401, 401, 401, 429]


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "20"])
def test_a_failure_limit_that_is_not_a_positive_whole_number_is_refused(
    tmp_path, value
) -> None:
    config_file = tmp_path / "agent.toml"
    config_file.write_text(f"auth_failures_per_minute = {json.dumps(value)}\n")
    with pytest.raises(ValueError, match="auth_failures_per_minute"):
        load_config(config_file)


def test_the_limit_lasts_a_minute_from_the_first_failure() -> None:
    now = [1000.0]
    limit = FailureLimit(limit=3, window_s=60.0, clock=lambda: now[0])
    assert [limit.failed("a") for _ in range(3)] == [False, False, True]
    now[0] += 10.5
    assert limit.wait_s("a") == 50  # ceil(60 - 10.5)
    assert limit.wait_s("b") == 0
    now[0] += 49.5
    assert limit.wait_s("a") == 0
    # Failures spread wider than a minute never reach the limit.
    for _ in range(5):
        limit.failed("c")
        limit.failed("c")
        now[0] += 31
    assert limit.wait_s("c") == 0


def test_the_limit_tracks_a_bounded_number_of_sources() -> None:
    limit = FailureLimit(limit=1, window_s=60.0, clock=lambda: 0.0, max_sources=3)
    for name in ("a", "b", "c", "d"):
        limit.failed(name)
    assert [limit.wait_s(name) for name in ("a", "b", "c", "d")] == [0, 60, 60, 60]


# 4. Keys are rotated through the keys file without a restart.


async def until_status(
    session: aiohttp.ClientSession, url: str, key: str, want: int, timeout_s: float = 5.0
) -> None:
    """Wait until a key gets `want`, failing with the last status seen."""
    deadline = time.monotonic() + timeout_s
    while (got := await status_of(session, "GET", url, {"X-API-Key": key})) != want:
        assert time.monotonic() < deadline, f"{key}: {got}, not {want}"
        await asyncio.sleep(0.05)


async def test_a_key_added_to_the_file_works_and_a_removed_one_stops(
    agent_factory: Callable[..., Any], tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys"
    old, new, newer = "rotate-old-0000000000", "rotate-new-1111111111", "rotate-nwr-2222222222"
    keys_file.write_text(f"{old} operator\n")
    agent = await agent_factory(api_keys=None, keys_file=keys_file)
    url = agent.url + "/api/cases"
    async with source(6) as session:
        await until_status(session, url, old, 200)
        assert await status_of(session, "GET", url, {"X-API-Key": new}) == 401

        with keys_file.open("a") as fh:
            fh.write(f"{new} read\n")
        await until_status(session, url, new, 200)
        await until_status(session, url, old, 200)
        post = await status_of(session, "POST", url, {"X-API-Key": new})
        assert post == 403  # the role came with the key

        keys_file.write_text(f"{new} operator\n")
        await until_status(session, url, old, 401)
        await until_status(session, url, new, 200)

        # A file moved into place that keeps the old one's size and modification time,
        # as rsync -a or cp -p leave it, is a new file all the same.
        st = keys_file.stat()
        staged = tmp_path / "keys.new"
        staged.write_text(f"{newer} operator\n")
        assert staged.stat().st_size == st.st_size
        os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(staged, keys_file)
        await until_status(session, url, newer, 200)
        await until_status(session, url, new, 401)


# 5. The console keeps its key off the disk.


async def test_the_console_writes_its_key_to_no_file(
    agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("PROVEAI_CONSOLE_CONFIG", raising=False)
    log = tmp_path / "console.log"
    package = logging.getLogger("proveai_tui")
    saved = (list(package.handlers), package.level, package.propagate)

    async def run_console(argv: list[str], until: Callable[[ConsoleApp], bool]) -> None:
        args = parse_args(["--agent", agent.url, "--log", str(log), *argv])
        configure_logging(args.log)
        app = ConsoleApp(
            args.client,
            StreamSource(args.client, args.interval),
            settings=console_settings.load(args.config, binding_ids()),
        )
        async with app.run_test(size=(80, 24)) as pilot:
            deadline = time.monotonic() + 10
            while not until(app):
                assert time.monotonic() < deadline, app.link
                await pilot.pause(0.05)
            screens_seen = set()
            for key in ("2", "3", "4", "1"):  # every screen, each reading the agent
                await pilot.press(key)
                await pilot.pause(0.2)
                screens_seen.add(type(app.screen).__name__)
            assert screens_seen >= {"CasesScreen", "ChangesScreen", "AuditScreen"}
        await args.client.close()

    def state(name: str) -> Callable[[ConsoleApp], bool]:
        return lambda app: app.link is not None and app.link.state == name

    try:
        monkeypatch.setenv("PROVEAI_API_KEY", OPERATOR_KEY)
        await run_console([], state("connected"))
        monkeypatch.delenv("PROVEAI_API_KEY")
        await run_console(["--api-key", WRONG_KEY], state("refused"))
    finally:
        for handler in package.handlers:
            if handler not in saved[0]:
                handler.close()
        package.handlers[:] = saved[0]
        package.setLevel(saved[1])
        package.propagate = saved[2]

    assert "401" in log.read_text(), "the console's DEBUG log recorded no refusal"
    files, found = files_holding(tmp_path, [OPERATOR_KEY, WRONG_KEY])
    assert log in files and any(p.name == "proveai.db" for p in files)
    assert found == []
