"""A stand-in for the agent's read API, serving the JSON payloads in this folder.

It answers exactly the shapes of the agent's `/api/overview`, `/api/cases` (filtered and paged
by the agent's rules), `/api/cases/{id}`, `/api/traces/{trace_id}`, `/api/changes`,
`/api/audit`, `/api/audit/verify` and the live stream `/api/stream`, refuses requests
without the key (401), and can be stopped and started again on the same port to play an
agent that goes away and comes back.

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

from aiohttp import WSCloseCode, WSMsgType, web

from proveai_agent.stack.native import free_port

HERE = Path(__file__).parent
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
FIXTURE_NOW = datetime(2025, 6, 2, 9, 30, 0, tzinfo=UTC)
RANGES = ("15m", "1h", "6h", "24h", "7d", "30d", "90d", "365d")
"""The agent's overview ranges, in its order."""
OPEN_STATES = (
    "DETECTED",
    "TRIAGED",
    "INVESTIGATING",
    "REMEDIATION_SUGGESTED",
    "FIX_APPLIED",
    "VERIFYING",
)
CHANGES = [
    {
        "id": 1,
        "at": "2025-06-01T13:40:00Z",
        "service": "rag-api",
        "kind": "file",
        "summary": "retrieval config changed: top_k",
        "before": "top_k: 8",
        "after": "top_k: 2",
        "source": "watch",
    },
    {
        "id": 2,
        "at": "2025-06-02T09:05:00Z",
        "service": "rag-api",
        "kind": "deploy",
        "summary": "rag-api v2.4.1 rolled out",
        "before": "v2.4.0",
        "after": "v2.4.1",
        "source": "api",
    },
    {
        "id": 3,
        "at": "2025-06-02T09:12:00Z",
        "service": "embedder",
        "kind": "attribute",
        "summary": "gen_ai.request.model changed on embed",
        "before": "text-embed-3-small",
        "after": "text-embed-3-large",
        "source": "spans",
    },
]
"""Changes in the order the agent lists them: oldest first."""
AUDIT_AT = 1748856000.0
"""2025-06-02T09:20:00Z, when the fixtures' audit records start."""


def load(name: str) -> Any:
    return json.loads((HERE / name).read_text())


def case_number(case_id: str) -> int | None:
    """The n of CASE-n, as the agent parses a cursor; None for anything else."""
    prefix, _, number = case_id.partition("-")
    if prefix != "CASE" or not number.isdigit() or len(number) > 18:
        return None
    return int(number)


def like(text: str, pattern: str) -> bool:
    """SQLite's `LIKE '%pattern%'` with every wildcard escaped: a substring test that
    ignores the case of ASCII letters only."""
    ascii_lower = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
    return pattern.translate(ascii_lower) in text.translate(ascii_lower)


def audit_records(count: int) -> list[dict[str, Any]]:
    """`count` records in the shape of `/api/audit`, a minute apart from AUDIT_AT."""
    actions = ("case.signal", "case.transition", "case.note")
    return [
        {
            "seq": seq,
            "at": AUDIT_AT + 60 * (seq - 1),
            "actor": "agent" if seq % 3 else "ana",
            "action": actions[seq % 3],
            "subject": f"CASE-{(seq + 1) // 2}",
            "data": {"n": seq},
            "prev_hash": f"{seq - 1:064x}",
            "hash": f"{seq:064x}",
        }
        for seq in range(1, count + 1)
    ]


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
        self.range_overviews: dict[str, dict[str, Any]] = {}
        """What `?range=NAME` answers, when not the 15m overview."""
        self.cases: dict[str, Any] = load("cases.json")
        self.case_overrides: dict[str, Any] = {}
        self.changes: list[dict[str, Any]] = copy.deepcopy(CHANGES)
        self.audit: list[dict[str, Any]] = audit_records(6)
        self.audit_verdict: dict[str, Any] | None = None
        """What `/api/audit/verify` says; None says the chain of `audit` holds."""
        self.requests: list[tuple[str, str | None]] = []
        self._shift_s = (datetime.now(UTC) - FIXTURE_NOW).total_seconds() if recent else 0.0
        self._runner: web.AppRunner | None = None
        self._streams: set[web.WebSocketResponse] = set()

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
        app.router.add_get("/api/changes", self._change_list)
        app.router.add_get("/api/audit", self._audit)
        app.router.add_get("/api/audit/verify", self._audit_verify)
        app.router.add_get("/api/stream", self._stream)
        app.on_shutdown.append(self._close_streams)
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

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        """The agent's live stream: held open, carrying what `push` sends."""
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        self._streams.add(ws)
        try:
            async for message in ws:  # a console sends nothing; this waits for the close
                if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            self._streams.discard(ws)
        return ws

    async def push(self, kind: str, data: dict[str, Any]) -> None:
        """Send one live message ("case", "overview" or "change") to every console."""
        message = {"type": kind, "data": shift_times(data, self._shift_s)}
        for ws in list(self._streams):
            await ws.send_json(message)

    async def _close_streams(self, app: web.Application) -> None:
        for ws in list(self._streams):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"agent stopping")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _overview(self, request: web.Request) -> web.Response:
        name = request.query.get("range", "15m")
        if name not in RANGES:
            return self._answer({"error": f"range must be one of {', '.join(RANGES)}"}, 400)
        return self._answer(self.range_overviews.get(name, self.overview))

    async def _case_list(self, request: web.Request) -> web.Response:
        """Filters, order (newest first) and paging as the agent's case store does them."""
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            return self._answer({"error": "limit must be an integer"}, 400)
        if not 1 <= limit <= 1000:
            return self._answer({"error": "limit must be between 1 and 1000"}, 400)
        before = None
        if q.get("cursor"):
            before = case_number(q["cursor"])
            if before is None:
                return self._answer({"error": "cursor must be a case id such as CASE-12"}, 400)

        items = [case for case in self.cases["items"] if case_number(case["id"]) is not None]
        if (state := q.get("state")) == "open":
            items = [case for case in items if case["state"] in OPEN_STATES]
        elif state:
            items = [case for case in items if case["state"] == state]
        if failure_class := q.get("class"):
            items = [case for case in items if case.get("failure_class") == failure_class]
        if service := q.get("service"):
            items = [case for case in items if case["service"] == service]
        if text := q.get("q"):
            items = [
                case
                for case in items
                if like(case["title"], text) or like(case["service"], text)
            ]
        items.sort(key=lambda case: -(case_number(case["id"]) or 0))
        total = len(items)
        if before is not None:
            items = [case for case in items if (case_number(case["id"]) or 0) < before]
        page = copy.deepcopy(items[:limit])
        next_cursor = page[-1]["id"] if len(page) == limit else None
        return self._answer({"items": page, "next": next_cursor, "total": total})

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

    async def _change_list(self, request: web.Request) -> web.Response:
        """Changes of one service or all, at or after `since`, oldest first, at most 500."""
        items = self.changes
        if service := request.query.get("service"):
            items = [change for change in items if change["service"] == service]
        if since := request.query.get("since"):
            try:
                moment = float(since)
            except ValueError:
                try:
                    moment = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
                except ValueError:
                    error = "since must be an RFC 3339 time or epoch seconds"
                    return self._answer({"error": error}, 400)
            items = [change for change in items if self._epoch(change["at"]) >= moment]
        items = sorted(items, key=lambda change: (change["at"], change["id"]))[:500]
        return self._answer({"items": copy.deepcopy(items)})

    def _epoch(self, timestamp: str) -> float:
        """A fixture's timestamp in epoch seconds, as the console is told it."""
        return (
            datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() + self._shift_s
        )

    async def _audit(self, request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return self._answer({"error": "after and limit must be integers"}, 400)
        if after < 0 or not 1 <= limit <= 10_000:
            error = "after must be 0 or more and limit between 1 and 10000"
            return self._answer({"error": error}, 400)
        items = sorted(
            (record for record in self.audit if record["seq"] > after),
            key=lambda record: record["seq"],
        )
        return web.json_response({"items": copy.deepcopy(items[:limit])})

    async def _audit_verify(self, request: web.Request) -> web.Response:
        verdict = self.audit_verdict or {
            "ok": True,
            "records": len(self.audit),
            "first_bad": None,
            "reason": "the chain holds",
        }
        return web.json_response(verdict)


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
