"""The JSON API that the console and operators' scripts use, in the shapes of the contracts."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..cases.lifecycle import ENGINEER, Refused, Request
from ..cases.service import parse_case_id, rfc3339
from ..engine.service import signature_of
from ..store.changes import KINDS, Change
from ..tickets import TicketError, TicketNotConfigured, create_ticket

if TYPE_CHECKING:
    from ..agent import Agent

logger = logging.getLogger(__name__)

TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")
RANGES = {
    "15m": 900,
    "1h": 3600,
    "6h": 21600,
    "24h": 86400,
    "7d": 604800,
    "30d": 2592000,
    "90d": 7776000,
    "365d": 31536000,
}


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def error_for(request: web.Request, status: int, message: str) -> web.StreamResponse:
    """Errors in the encoding the route speaks: OTLP status for /v1/*, JSON elsewhere."""
    if request.path.startswith("/v1/"):
        from .otlp_http import status_response

        return status_response(request, status, message)
    response = error(status, message)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="proveai"'
    return response


async def json_body(request: web.Request, limit: int = 1 << 20) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit, request.content_length)
    raw = bytearray()
    while chunk := await request.content.read(limit + 1 - len(raw)):
        raw += chunk
        if len(raw) > limit:
            raise _too_large(limit, len(raw))
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _bad("body must be a JSON object")
    if (b"\\ud" in raw or b"\\uD" in raw) and not _encodable(value):
        raise _bad("body has a lone UTF-16 surrogate escape, which is not text")
    return value


def _encodable(value: Any) -> bool:
    """Whether a parsed body is valid Unicode throughout: JSON lets a string hold half of a
    surrogate pair, which no UTF-8 store can hold."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_time(value: Any, field: str) -> float:
    """Epoch seconds from an RFC 3339 string or a number of seconds since the epoch."""
    wrong = f"{field} must be an RFC 3339 time or epoch seconds"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(wrong)
    seconds = _seconds_from_text(value, wrong, field) if isinstance(value, str) else value
    # Compared, not converted: an integer past a float's range is simply out of range.
    if not 0 <= seconds < 253402300800:
        raise ValueError(f"{field} is out of range")
    return float(seconds)


def _seconds_from_text(value: str, wrong: str, field: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(wrong) from None
    if parsed.tzinfo is None:
        raise ValueError(f"{field} needs a time zone (for example Z)")
    return parsed.timestamp()


def _text(body: dict[str, Any], field: str, limit: int, required: bool) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a non-empty string")
    if len(value) > limit:
        raise ValueError(f"{field} is longer than {limit} characters")
    return value.strip()


def change_from_body(body: dict[str, Any], now: float) -> Change:
    """A deploy marker (or another change an outside tool reports) from a POST body."""
    kind = body.get("kind", "deploy")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    at = parse_time(body["time"], "time") if body.get("time") is not None else now
    return Change(
        at=at,
        service=_text(body, "service", 200, required=True) or "",
        kind=kind,
        summary=_text(body, "summary", 2000, required=True) or "",
        before=_text(body, "before", 500, required=False),
        after=_text(body, "version", 500, required=False)
        or _text(body, "after", 500, required=False),
        source="api",
    )


def transition_from_body(body: dict[str, Any]) -> Request:
    """An engineer's transition from a POST body; raises ValueError for a malformed one."""
    to = body.get("to")
    if not isinstance(to, str) or not to:
        raise ValueError("to must be the state to move to")
    fields = {
        name: _text(body, name, limit, required=False)
        for name, limit in (
            ("note", 2000),
            ("suggestion_id", 200),
            ("root_cause", 200),
            ("fix", 2000),
            ("reason", 50),
            ("duplicate_of", 50),
            ("severity", 20),
            ("owner", 200),
        )
    }
    actor = _text(body, "actor", 200, required=True) or ""
    return Request(to=to, actor=actor, by=ENGINEER, **fields)


def change_doc(change: Change) -> dict[str, Any]:
    """A change in the wire format of `/api/changes`."""
    doc: dict[str, Any] = {
        "id": change.id,
        "at": rfc3339(change.at),
        "service": change.service,
        "kind": change.kind,
        "summary": change.summary,
        "source": change.source,
    }
    if change.before is not None:
        doc["before"] = change.before
    if change.after is not None:
        doc["after"] = change.after
    return doc


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": message}), content_type="application/json"
    )


def _too_large(limit: int, size: int) -> web.HTTPRequestEntityTooLarge:
    """413 in the API's error shape, not aiohttp's plain-text one."""
    return web.HTTPRequestEntityTooLarge(
        max_size=limit,
        actual_size=size,
        text=json.dumps({"error": f"body exceeds {limit} bytes"}),
        content_type="application/json",
    )


def setup(app: web.Application, agent: Agent) -> None:
    routes = web.RouteTableDef()

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        agent.metrics.registry.scraped_by(request.headers.get("User-Agent", ""))
        body = generate_latest(agent.metrics_registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @routes.get("/api/overview")
    async def overview(request: web.Request) -> web.Response:
        name = request.query.get("range", "15m")
        if name not in RANGES:
            return error(400, f"range must be one of {', '.join(RANGES)}")
        return web.json_response(await agent.overview(RANGES[name]))

    @routes.get("/api/cases")
    async def list_cases(request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            return error(400, "limit must be an integer")
        if not 1 <= limit <= 1000:
            return error(400, "limit must be between 1 and 1000")
        cursor = q.get("cursor")
        before = None
        if cursor:
            before = parse_case_id(cursor)
            if before is None:
                return error(400, "cursor must be a case id such as CASE-12")
        items, total = await agent.case_store.summaries(
            state=q.get("state") or None,
            failure_class=q.get("class") or None,
            service=q.get("service") or None,
            text=q.get("q") or None,
            limit=limit,
            before=before,
        )
        next_cursor = items[-1]["id"] if len(items) == limit else None
        return web.json_response({"items": items, "next": next_cursor, "total": total})

    @routes.get("/api/cases/{case_id}")
    async def get_case(request: web.Request) -> web.Response:
        number = parse_case_id(request.match_info["case_id"])
        doc = await agent.case_store.get(number) if number is not None else None
        if doc is None:
            return error(404, f"no case {request.match_info['case_id']}")
        return web.json_response(doc)

    @routes.post("/api/cases")
    async def open_case(request: web.Request) -> web.Response:
        body = await json_body(request)
        trace_id = body.get("trace_id")
        title = body.get("title")
        if not isinstance(trace_id, str) or not TRACE_ID.match(trace_id):
            return error(400, "trace_id must be 32 hexadecimal characters")
        if not isinstance(title, str) or not title.strip() or len(title) > 500:
            return error(400, "title must be a non-empty string of at most 500 characters")
        doc = await agent.case_service.open_manual(trace_id.lower(), title.strip())
        if doc is None:
            return error(404, f"no stored trace {trace_id.lower()}")
        agent.engine.submit(doc["id"])
        return web.json_response(doc, status=201)

    @routes.post("/api/cases/{case_id}/transition")
    async def transition(request: web.Request) -> web.Response:
        body = await json_body(request, limit=64 * 1024)
        try:
            asked = transition_from_body(body)
        except ValueError as exc:
            return error(400, str(exc))
        try:
            doc = await agent.case_service.transition(request.match_info["case_id"], asked)
        except LookupError as exc:
            return error(404, str(exc.args[0]))
        except Refused as exc:
            return error(409, str(exc))
        return web.json_response(doc)

    @routes.post("/api/cases/{case_id}/notes")
    async def add_note(request: web.Request) -> web.Response:
        body = await json_body(request, limit=64 * 1024)
        try:
            actor = _text(body, "actor", 200, required=True) or ""
            text = _text(body, "text", 10_000, required=True) or ""
        except ValueError as exc:
            return error(400, str(exc))
        try:
            doc = await agent.case_service.add_note(request.match_info["case_id"], actor, text)
        except LookupError as exc:
            return error(404, str(exc.args[0]))
        return web.json_response(doc, status=201)

    @routes.post("/api/cases/{case_id}/ticket")
    async def ticket(request: web.Request) -> web.Response:
        body = await json_body(request, limit=64 * 1024)
        system = body.get("system")
        try:
            actor = _text(body, "actor", 200, required=True) or ""
        except ValueError as exc:
            return error(400, str(exc))
        if system not in ("github", "jira"):
            return error(400, "system must be github or jira")
        number = parse_case_id(request.match_info["case_id"])
        doc = await agent.case_store.get(number) if number is not None else None
        if doc is None:
            return error(404, f"no case {request.match_info['case_id']}")
        try:
            made = await create_ticket(agent.config.tickets, system, doc)
        except TicketNotConfigured as exc:
            # The caller's situation, not the tracker's failure: nothing was tried.
            return error(409, f"{exc}; set them under [tickets] in the agent's config")
        except TicketError as exc:
            await agent.case_service.add_ticket(doc["id"], actor, None, str(exc))
            return error(502, str(exc))
        await agent.case_service.add_ticket(doc["id"], actor, made, None)
        return web.json_response(made, status=201)

    @routes.post("/api/cases/{case_id}/feedback")
    async def feedback(request: web.Request) -> web.Response:
        body = await json_body(request, limit=64 * 1024)
        suggestion_id, helpful = body.get("suggestion_id"), body.get("helpful")
        try:
            actor = _text(body, "actor", 200, required=True)
            note = _text(body, "note", 2000, required=False)
        except ValueError as exc:
            return error(400, str(exc))
        if not isinstance(suggestion_id, str) or not isinstance(helpful, bool):
            return error(400, "suggestion_id (a string) and helpful (true or false) are needed")
        try:
            doc = await agent.case_service.feedback(
                request.match_info["case_id"], suggestion_id, helpful, actor or "", note
            )
        except LookupError as exc:
            return error(404, str(exc.args[0]))
        if agent.knowledge is not None:
            cause = next(
                s["cause_id"]
                for s in doc["remediation_suggestions"]
                if s["id"] == suggestion_id
            )
            signature = (doc.get("analysis") or {}).get("signature") or signature_of(doc)
            await agent.knowledge.feedback(signature, cause, helpful, doc["id"])
        return web.json_response(doc)

    @routes.get("/api/audit")
    async def audit_records(request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return error(400, "after and limit must be integers")
        if not 0 <= after < 2**63 or not 1 <= limit <= 10_000:
            return error(400, "after must be 0 or more and limit between 1 and 10000")
        items = await agent.audit.store.records(after=after, limit=limit)
        return web.json_response({"items": items})

    @routes.get("/api/audit/verify")
    async def audit_verify(request: web.Request) -> web.Response:
        return web.json_response((await agent.audit.store.verify()).to_dict())

    @routes.post("/api/changes")
    async def add_change(request: web.Request) -> web.Response:
        body = await json_body(request, limit=64 * 1024)
        try:
            change = change_from_body(body, time.time())
        except ValueError as exc:
            return error(400, str(exc))
        await agent.change_store.add(change)
        doc = change_doc(change)
        agent.hub.publish("change", doc)
        return web.json_response(doc, status=201)

    @routes.get("/api/changes")
    async def list_changes(request: web.Request) -> web.Response:
        since = None
        if request.query.get("since"):
            try:
                since = parse_time(request.query["since"], "since")
            except ValueError as exc:
                return error(400, str(exc))
        changes = await agent.change_store.list(
            service=request.query.get("service") or None, since=since
        )
        return web.json_response({"items": [change_doc(c) for c in changes]})

    @routes.get("/api/traces/{trace_id}")
    async def get_trace(request: web.Request) -> web.Response:
        trace_id = request.match_info["trace_id"]
        if not TRACE_ID.match(trace_id):
            return error(400, "trace id must be 32 hexadecimal characters")
        spans = await agent.span_store.get_trace(trace_id.lower())
        if not spans:
            return error(404, f"no stored trace {trace_id.lower()}")
        return web.json_response({"trace_id": trace_id.lower(), "spans": spans})

    streams: set[web.WebSocketResponse] = set()

    async def close_streams(app: web.Application) -> None:
        """Say goodbye to live consoles at shutdown, so that they reconnect at once rather
        than when the server gives up waiting for their handlers."""
        for ws in list(streams):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"agent stopping")

    app.on_shutdown.append(close_streams)

    @routes.get("/api/stream")
    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        streams.add(ws)
        queue = agent.hub.subscribe()
        reader = asyncio.create_task(_drain(ws))
        try:
            while not ws.closed and not reader.done():
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getter, reader}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    await ws.send_json(getter.result())
                else:
                    getter.cancel()
        finally:
            streams.discard(ws)
            agent.hub.unsubscribe(queue)
            reader.cancel()
            await ws.close()
        return ws

    app.add_routes(routes)


async def _drain(ws: web.WebSocketResponse) -> None:
    async for message in ws:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break
