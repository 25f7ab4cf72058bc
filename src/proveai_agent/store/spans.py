"""The span store: group-committed span writes and the queries of detectors and the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aiosqlite

from ..spans import Span, SpanDetail

logger = logging.getLogger(__name__)

_INSERT_SPAN = (
    "INSERT OR REPLACE INTO spans (trace_id, span_id, parent_span_id, service, name, kind,"
    " status, start_ns, end_ns, duration_s, model, operation, provider, input_tokens,"
    " output_tokens, finish_reasons, scores, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_DETAIL = (
    "INSERT INTO span_details (trace_id, span_id, service, time_ns, kind, data)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_SPAN_COLUMNS = (
    "trace_id, span_id, parent_span_id, service, name, kind, status, start_ns, end_ns,"
    " duration_s, model, operation, provider, input_tokens, output_tokens, finish_reasons,"
    " scores, body"
)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


class StoreUnavailable(RuntimeError):
    """The span store cannot take writes now (disk full, database error)."""


def _span_row(span: Span) -> tuple[Any, ...]:
    body: dict[str, Any] = {}
    if span.status_message:
        body["status_message"] = span.status_message
    if span.response_model is not None:
        body["response_model"] = span.response_model
    if span.ttft_s is not None:
        body["ttft_s"] = span.ttft_s
    if span.attributes:
        body["attributes"] = span.attributes
    if span.resource:
        body["resource"] = span.resource
    if span.events:
        body["events"] = span.events
    if span.messages:
        body["messages"] = span.messages
    if span.chunks:
        body["chunks"] = span.chunks
    return (
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        span.service,
        span.name,
        span.kind,
        span.status,
        span.start_ns,
        span.end_ns,
        span.duration_s,
        span.model,
        span.operation,
        span.provider,
        span.input_tokens,
        span.output_tokens,
        ",".join(span.finish_reasons) if span.finish_reasons else None,
        _dumps(span.scores) if span.scores else None,
        _dumps(body),
    )


def _detail_row(detail: SpanDetail) -> tuple[Any, ...]:
    return (
        detail.trace_id,
        detail.span_id,
        detail.service,
        detail.time_ns,
        detail.kind,
        _dumps(detail.data),
    )


def row_to_span(row: tuple[Any, ...] | aiosqlite.Row) -> dict[str, Any]:
    """A stored span in the wire format of `GET /api/traces/{trace_id}`."""
    body = json.loads(row[17]) if row[17] else {}
    return {
        "trace_id": row[0],
        "span_id": row[1],
        "parent_span_id": row[2],
        "service": row[3],
        "name": row[4],
        "kind": row[5],
        "status": row[6],
        "status_message": body.get("status_message", ""),
        "start_ns": row[7],
        "end_ns": row[8],
        "duration_s": row[9],
        "model": row[10],
        "response_model": body.get("response_model"),
        "operation": row[11],
        "provider": row[12],
        "input_tokens": row[13],
        "output_tokens": row[14],
        "finish_reasons": row[15].split(",") if row[15] else [],
        "scores": json.loads(row[16]) if row[16] else {},
        "ttft_s": body.get("ttft_s"),
        "attributes": body.get("attributes", {}),
        "resource": body.get("resource", {}),
        "events": body.get("events", []),
        "messages": body.get("messages", []),
        "chunks": body.get("chunks", []),
    }


class _Pending:
    __slots__ = ("details", "future", "spans")

    def __init__(self, spans: list[Span], details: list[SpanDetail]) -> None:
        self.spans = spans
        self.details = details
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class SpanStore:
    """Writes spans in group commits and answers the read queries over them.

    Concurrent `write()` calls that wait at the same time share one transaction, so many
    small requests cost one commit. `write()` returns only once its rows are committed.
    """

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        max_batch_spans: int = 20_000,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._max_batch = max_batch_spans
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="span-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def write(self, spans: list[Span], details: list[SpanDetail]) -> None:
        """Persist spans and details; raises StoreUnavailable when they were not committed."""
        if not spans and not details:
            return
        pending = _Pending(spans, details)
        await self._queue.put(pending)
        await pending.future

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            count = len(group[0].spans)
            while count < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                group.append(item)
                count += len(item.spans)
            try:
                await self._commit(group)
            except Exception as exc:  # the writer must survive any database error
                logger.error("span write of %d spans failed: %s", count, exc)
                error = StoreUnavailable(f"span store write failed: {exc}")
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(error)
            else:
                for item in group:
                    if not item.future.done():
                        item.future.set_result(None)

    async def _commit(self, group: list[_Pending]) -> None:
        span_rows = [_span_row(s) for item in group for s in item.spans]
        detail_rows = [_detail_row(d) for item in group for d in item.details]
        conn = self._writer
        await conn.execute("BEGIN")
        try:
            if span_rows:
                await conn.executemany(_INSERT_SPAN, span_rows)
            if detail_rows:
                await conn.executemany(_INSERT_DETAIL, detail_rows)
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise

    async def get_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every stored span of a trace, with content that arrived as log records merged in."""
        async with self._reader.execute(
            f"SELECT {_SPAN_COLUMNS} FROM spans WHERE trace_id = ? ORDER BY start_ns",
            (trace_id,),
        ) as cur:
            spans = [row_to_span(row) for row in await cur.fetchall()]
        async with self._reader.execute(
            "SELECT span_id, kind, data FROM span_details WHERE trace_id = ? ORDER BY time_ns",
            (trace_id,),
        ) as cur:
            details = await cur.fetchall()
        by_id = {s["span_id"]: s for s in spans}
        for span_id, kind, data in details:
            span = by_id.get(span_id)
            if span is None:
                continue
            item = json.loads(data)
            if kind == "message":
                span["messages"].append(item)
            elif kind == "score" and isinstance(item.get("value"), int | float):
                span["scores"].setdefault(str(item.get("name")), item["value"])
        return spans

    async def exemplar_trace_ids(
        self,
        service: str,
        since_ns: int,
        until_ns: int,
        span_name: str | None = None,
        order: str = "slowest",
        limit: int = 5,
    ) -> list[str]:
        """Trace ids that show a problem best: the slowest spans, or the failed ones first."""
        clauses = ["service = ?", "start_ns >= ?", "start_ns <= ?"]
        params: list[Any] = [service, since_ns, until_ns]
        if span_name:
            clauses.append("name = ?")
            params.append(span_name)
        if order == "errors":
            ordering = "status = 'STATUS_CODE_ERROR' DESC, start_ns DESC"
        else:
            ordering = "duration_s DESC"
        query = (
            f"SELECT trace_id FROM spans WHERE {' AND '.join(clauses)}"
            f" ORDER BY {ordering} LIMIT ?"
        )
        params.append(limit * 4)
        async with self._reader.execute(query, params) as cur:
            rows = await cur.fetchall()
        seen: list[str] = []
        for (trace_id,) in rows:
            if trace_id not in seen:
                seen.append(trace_id)
            if len(seen) == limit:
                break
        return seen

    async def prune(self, max_age_s: float, max_bytes: int, now: float | None = None) -> int:
        """Apply retention by age and by size; returns the number of spans deleted."""
        now = time.time() if now is None else now
        cutoff = max(int((now - max_age_s) * 1e9), 0)
        deleted = 0
        conn = self._writer
        cur = await conn.execute("DELETE FROM spans WHERE start_ns < ?", (cutoff,))
        deleted += cur.rowcount or 0
        await conn.execute("DELETE FROM span_details WHERE time_ns < ?", (cutoff,))
        while await self.used_bytes() > max_bytes:
            cur = await conn.execute(
                "DELETE FROM spans WHERE id IN"
                " (SELECT id FROM spans ORDER BY start_ns LIMIT 1000)"
            )
            if not cur.rowcount:
                break
            deleted += cur.rowcount
        if deleted:
            logger.info("retention removed %d spans", deleted)
        return deleted

    async def used_bytes(self) -> int:
        """Bytes the database occupies, not counting free pages that SQLite will reuse."""
        values = []
        for pragma in ("page_count", "freelist_count", "page_size"):
            async with self._writer.execute(f"PRAGMA {pragma}") as cur:
                row = await cur.fetchone()
                values.append(int(row[0]) if row else 0)
        return (values[0] - values[1]) * values[2]

    async def count(self) -> int:
        async with self._reader.execute("SELECT count(*) FROM spans") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
