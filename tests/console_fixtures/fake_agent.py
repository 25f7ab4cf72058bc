"""A stand-in for the agent's read API, serving the JSON payloads in this folder.

It answers exactly the shapes of the agent's `/api/overview`, `/api/cases`, `/api/cases/{id}`
and `/api/traces/{trace_id}`, refuses requests without the key (401), and can be stopped and
started again on the same port to play an agent that goes away and comes back.

Run on its own: `python fake_agent.py --port 8470 --key KEY [--recent]`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from proveai_agent.stack.native import free_port

HERE = Path(__file__).parent
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
FIXTURE_NOW = datetime(2025, 6, 2, 9, 30, 0, tzinfo=UTC)


def load(name: str) -> Any:
    return json.loads((HERE / name).read_text())


def shift_times(payload: Any, by_s: float) -> Any:
    """The payload with every RFC 3339 timestamp moved by `by_s` seconds."""
    if isinstance(payload, dict):
        return {key: shift_times(value, by_s) for key, value in payload.items()}
    if isinstance(payload, list):
        return [shift_times(value, by_s) for value in payload]
    if isinstance(payload, str) and TIMESTAMP.match(payload):
        moved = datetime.fromisoformat(payload[:-1] + "+00:00").timestamp() + by_s
        return datetime.fromtimestamp(moved, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return payload


class FakeAgent:
    """Serves the fixtures on 127.0.0.1.

    Args:
        key: the only API key accepted, in X-API-Key or as a Bearer token.
        port: the port; a free one when None.
        recent: move the fixtures' timestamps so that their "now" is the real now.
    """

    def __init__(self, key: str, port: int | None = None, recent: bool = False) -> None:
        self.key = key
        self.port = port or free_port()
        self.overview: dict[str, Any] = load("overview.json")
        self.cases: dict[str, Any] = load("cases.json")
        self.case_overrides: dict[str, Any] = {}
        self.requests: list[tuple[str, str | None]] = []
        self._shift_s = (datetime.now(UTC) - FIXTURE_NOW).total_seconds() if recent else 0.0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/api/overview", self._overview)
        app.router.add_get("/api/cases", self._case_list)
        app.router.add_get("/api/cases/{case_id}", self._case)
        app.router.add_get("/api/traces/{trace_id}", self._trace)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _answer(self, payload: Any, status: int = 200) -> web.Response:
        return web.json_response(shift_times(payload, self._shift_s), status=status)

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        key = request.headers.get("X-API-Key")
        self.requests.append((request.path_qs, key))
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if request.path != "/healthz" and self.key not in (key, bearer):
            return web.json_response({"error": "missing or invalid API key"}, status=401)
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _overview(self, request: web.Request) -> web.Response:
        return self._answer(self.overview)

    async def _case_list(self, request: web.Request) -> web.Response:
        items = copy.deepcopy(self.cases["items"])
        if (state := request.query.get("state")) == "open":
            items = [case for case in items if case["state"] not in ("RESOLVED", "CLOSED")]
        elif state:
            items = [case for case in items if case["state"] == state]
        limit = int(request.query.get("limit", "50"))
        return self._answer({"items": items[:limit], "next": None, "total": len(items)})

    async def _case(self, request: web.Request) -> web.Response:
        if request.match_info["case_id"] in self.case_overrides:
            return self._answer(self.case_overrides[request.match_info["case_id"]])
        path = HERE / f"case_{request.match_info['case_id']}.json"
        if not path.is_file():
            return self._answer({"error": f"no case {request.match_info['case_id']}"}, 404)
        return self._answer(json.loads(path.read_text()))

    async def _trace(self, request: web.Request) -> web.Response:
        trace_id = request.match_info["trace_id"]
        path = HERE / f"trace_{trace_id}.json"
        if not re.fullmatch(r"[0-9a-f]{32}", trace_id) or not path.is_file():
            return self._answer({"error": f"no trace {trace_id}"}, 404)
        return self._answer(json.loads(path.read_text()))


async def serve(port: int, key: str, recent: bool) -> None:
    agent = FakeAgent(key, port, recent=recent)
    await agent.start()
    print(f"fake agent on {agent.url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--recent", action="store_true", help="timestamps relative to now")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.key, args.recent))
