"""The span store: group-committed span writes and the queries of detectors and the API."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import shutil
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ..ingest import genai, otlp
from ..spans import Span, SpanDetail

logger = logging.getLogger(__name__)
T = TypeVar("T")

_INSERT_SPAN = (
    "INSERT OR REPLACE INTO spans (trace_id, span_id, parent_span_id, service, resource_id,"
    " name, kind, status, start_ns, end_ns, duration_s, model, operation, provider,"
    " input_tokens, output_tokens, finish_reasons, scores, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SPAN_PREFIX = _INSERT_SPAN.split(" VALUES ")[0] + " VALUES "
_MAX_ROWS_PER_INSERT = 1000
_WAL_RESTART_PAGES = 32_768
PRUNE_BATCH = 1000
"""The most spans one retention delete takes, to keep each short."""
_VARIABLE_LIMIT = sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
_INSERT_DETAIL = (
    "INSERT INTO span_details (trace_id, span_id, service, time_ns, kind, data)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_SPAN_COLUMNS = (
    "s.trace_id, s.span_id, s.parent_span_id, s.service, s.name, s.kind, s.status,"
    " s.start_ns, s.end_ns, s.duration_s, s.model, s.operation, s.provider, s.input_tokens,"
    " s.output_tokens, s.finish_reasons, s.scores, s.body, r.attributes"
)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
# A stored body is the span's protobuf bytes as they arrived, or, for a span that arrived in
# JSON, a JSON object of its status message, attributes and events. They cannot be confused:
# a serialised span starts with its trace id, field 1 (byte 0x0a), and JSON with "{".


class StoreUnavailable(RuntimeError):
    """The span store cannot take writes now (disk full, database error)."""

    retry_after = 5
    """Seconds a client is told to wait before it sends again."""


class StoreBusy(StoreUnavailable):
    """The write queue holds its bound of uncommitted spans: the client should send later.

    Refusing at the bound, rather than queueing, keeps the memory held for ingest bounded
    however many clients send at once; the queue drains in a commit or two, so the wait
    asked for is short.
    """

    retry_after = 1


def _span_row(span: Span, resource_id: int | None) -> tuple[Any, ...]:
    if span.raw is not None:
        body = span.raw
    else:
        doc: dict[str, Any] = {}
        if span.status_message:
            doc["status_message"] = span.status_message
        if span.attributes:
            doc["attributes"] = span.attributes
        if span.events:
            doc["events"] = span.events
        body = _dumps(doc).encode()
    return (
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        span.service,
        resource_id,
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
        body,
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
    """A stored span in the wire format of `GET /api/traces/{trace_id}`.

    Messages, chunks and the other content fields are read from the stored attributes and
    events here, not at ingest, so that ingest stays cheap.
    """
    body = bytes(row[17])
    if body[:1] != b"{":
        attributes, events, status_message = otlp.stored_span_parts(body)
    else:
        doc = json.loads(body)
        attributes = doc.get("attributes", {})
        events = doc.get("events", [])
        status_message = doc.get("status_message", "")
    span = Span(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        status_message,
        row[7],
        row[8],
        attributes=attributes,
        events=events,
    )
    genai.annotate(span, content=True)
    return {
        "trace_id": row[0],
        "span_id": row[1],
        "parent_span_id": row[2],
        "service": row[3],
        "name": row[4],
        "kind": row[5],
        "status": row[6],
        "status_message": status_message,
        "start_ns": row[7],
        "end_ns": row[8],
        "duration_s": row[9],
        "model": row[10],
        "response_model": span.response_model,
        "operation": row[11],
        "provider": row[12],
        "input_tokens": row[13],
        "output_tokens": row[14],
        "finish_reasons": row[15].split(",") if row[15] else [],
        "scores": json.loads(row[16]) if row[16] else {},
        "ttft_s": span.ttft_s,
        "attributes": attributes,
        "resource": json.loads(row[18]) if row[18] else {},
        "events": events,
        "messages": span.messages,
        "chunks": span.chunks,
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

    Writes run on one thread of their own with its own connection, a whole transaction per
    hop: when each statement was a separate hop through the event loop, SQLite sat idle
    while the loop decoded the next request. Reads go through the aiosqlite reader.
    """

    def __init__(
        self,
        path: Path,
        reader: aiosqlite.Connection,
        max_batch_spans: int = 20_000,
        min_free_bytes: int = 0,
        max_pending_spans: int = 100_000,
        max_pending_bytes: int = 64 * 2**20,
    ) -> None:
        self._path = path
        self.max_pending_spans = max_pending_spans
        """Spans accepted but not yet committed, at most; a write past it is refused with
        StoreBusy. A single write larger than the bound is still taken when nothing else
        waits, so that no request is refused for ever."""
        self.max_pending_bytes = max_pending_bytes
        """The same bound on the request bytes those spans came in, for large spans."""
        self._pending_spans = 0
        self._pending_bytes = 0
        self.busy_refusals = 0
        """Writes refused because the queue was full, since start."""
        self._busy = False
        self.min_free_bytes = min_free_bytes
        self.free_bytes: Callable[[], int] = self._free_bytes_on_disk
        """Free bytes for the database's file system; replaceable, so a test need not
        fill a disk."""
        self.free_check_s = 1.0
        """Free space is read at most this often: ingest pays for one stat a second."""
        self._free_checked_at = -float("inf")
        self._disk_low: str | None = None
        self._reader = reader
        self._max_batch = max_batch_spans
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._resources: dict[str, int | None] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="span-writer")
        self._conn: sqlite3.Connection | None = None
        self._statements: dict[int, str] = {}
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="wal-checkpoint")
        self._checkpoint_conn: sqlite3.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="span-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._call(self._close)
        self._executor.shutdown(wait=True)
        self._checkpointer.submit(self._close_checkpointer).result()
        self._checkpointer.shutdown(wait=True)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            # Checkpoints (which fsync) run on their own thread, see checkpoint(): a commit
            # then only appends to the WAL.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def checkpoint(self) -> None:
        """Copy committed WAL frames into the database file (PASSIVE: never blocks writers)."""
        await asyncio.get_running_loop().run_in_executor(self._checkpointer, self._checkpoint)

    def _checkpoint(self) -> None:
        if self._checkpoint_conn is None:
            self._checkpoint_conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False
            )
            self._checkpoint_conn.execute("PRAGMA busy_timeout=10000")
        row = self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        # Under steady writes a passive checkpoint never catches up with the end of the WAL,
        # so the WAL is never restarted; past a size, wait for the writer once and restart.
        if row and row[1] > _WAL_RESTART_PAGES:
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()

    def _close_checkpointer(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    async def write(
        self, spans: list[Span], details: list[SpanDetail], size_bytes: int = 0
    ) -> None:
        """Persist spans and details; raises StoreUnavailable when they were not committed.

        `size_bytes` is the size of the request they came in, counted against
        `max_pending_bytes` while they wait.
        """
        if not spans and not details:
            return
        self._refuse_when_disk_low()
        count = len(spans) + len(details)
        if self._pending_spans and (
            self._pending_spans + count > self.max_pending_spans
            or self._pending_bytes + size_bytes > self.max_pending_bytes
        ):
            self.busy_refusals += 1
            if not self._busy:
                self._busy = True
                logger.warning(
                    "span write queue holds %d uncommitted spans from %.1f MiB of requests"
                    " (bounds %d spans, %.1f MiB): writes are refused with 503 until it drains",
                    self._pending_spans,
                    self._pending_bytes / 2**20,
                    self.max_pending_spans,
                    self.max_pending_bytes / 2**20,
                )
            raise StoreBusy(
                f"span store is busy: {self._pending_spans} spans wait to be committed;"
                " retry later"
            )
        pending = _Pending(spans, details)
        self._pending_spans += count
        self._pending_bytes += size_bytes
        try:
            self._queue.put_nowait(pending)
            await pending.future
        finally:
            self._pending_spans -= count
            self._pending_bytes -= size_bytes
            if (
                self._busy
                and self._pending_spans <= self.max_pending_spans // 2
                and self._pending_bytes <= self.max_pending_bytes // 2
            ):
                self._busy = False
                logger.info("span write queue drained: writes are taken again")

    def _free_bytes_on_disk(self) -> int:
        return shutil.disk_usage(self._path.parent).free

    def _refuse_when_disk_low(self) -> None:
        """Raise StoreUnavailable while free disk is below the floor.

        Spans are by far the largest writes; stopping them first leaves the room that is
        left to cases, their transitions and the audit log, which share the file.
        """
        if self.min_free_bytes <= 0:
            return
        now = time.monotonic()
        if now - self._free_checked_at >= self.free_check_s:
            self._free_checked_at = now
            try:
                free = self.free_bytes()
            except OSError as exc:
                logger.debug("free space of %s unknown: %s", self._path.parent, exc)
                free = self.min_free_bytes
            was_low = self._disk_low is not None
            if free < self.min_free_bytes:
                # Clients read this in the 503; the data directory is named only in the log.
                self._disk_low = (
                    f"free disk space is {free / 2**20:.0f} MiB, below the floor of"
                    f" {self.min_free_bytes / 2**20:.0f} MiB: spans are refused until there"
                    " is room again"
                )
                if not was_low:
                    logger.warning("%s (data directory %s)", self._disk_low, self._path.parent)
            elif was_low:
                self._disk_low = None
                logger.info("free disk space is back above the floor: spans are stored again")
        if self._disk_low is not None:
            raise StoreUnavailable(self._disk_low)

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            count = len(group[0].spans)
            while count < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                group.append(item)
                count += len(item.spans)
            try:
                await self._call(self._commit, group)
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

    def _commit(self, group: list[_Pending]) -> None:
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            resource_ids = self._resource_ids(conn, group)
            rows = [
                _span_row(s, resource_ids[id(s.resource)]) for item in group for s in item.spans
            ]
            self._insert_spans(conn, rows)
            details = [_detail_row(d) for item in group for d in item.details]
            if details:
                conn.executemany(_INSERT_DETAIL, details)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _insert_spans(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows many at a time with one multi-row INSERT per chunk.

        executemany() takes the GIL back after every row, and waits for it whenever the event
        loop is busy decoding; one statement per chunk releases the GIL for the whole chunk.
        """
        if not rows:
            return
        width = len(rows[0])
        chunk = max(1, min(_MAX_ROWS_PER_INSERT, conn.getlimit(_VARIABLE_LIMIT) // width))
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            statement = self._statements.get(len(part))
            if statement is None:
                placeholders = "(" + ", ".join("?" * width) + ")"
                statement = _INSERT_SPAN_PREFIX + ", ".join([placeholders] * len(part))
                if len(self._statements) > 64:
                    self._statements.clear()
                self._statements[len(part)] = statement
            conn.execute(statement, [value for row in part for value in row])

    def _resource_ids(
        self, conn: sqlite3.Connection, group: list[_Pending]
    ) -> dict[int, int | None]:
        """Row ids of the resources the spans share, each stored once (inside the commit)."""
        ids: dict[int, int | None] = {}
        for item in group:
            for span in item.spans:
                key = id(span.resource)
                if key in ids:
                    continue
                if not span.resource:
                    ids[key] = None
                    continue
                text = json.dumps(
                    span.resource, sort_keys=True, ensure_ascii=False, default=str
                )
                digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
                cached = self._resources.get(digest)
                if cached is None:
                    conn.execute(
                        "INSERT OR IGNORE INTO resources (digest, attributes) VALUES (?, ?)",
                        (digest, text),
                    )
                    row = conn.execute(
                        "SELECT id FROM resources WHERE digest = ?", (digest,)
                    ).fetchone()
                    cached = int(row[0]) if row else None
                    if len(self._resources) > 10_000:
                        self._resources.clear()
                    self._resources[digest] = cached
                ids[key] = cached
        return ids

    async def get_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every stored span of a trace, with content that arrived as log records merged in."""
        async with self._reader.execute(
            f"SELECT {_SPAN_COLUMNS} FROM spans s LEFT JOIN resources r ON r.id = s.resource_id"
            " WHERE s.trace_id = ? ORDER BY s.start_ns",
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

    async def operations(
        self, service: str, names: list[str], since_ns: int, until_ns: int
    ) -> dict[str, str]:
        """The GenAI operation (or else the span kind) of each named span of a service."""
        if not names:
            return {}
        marks = ",".join("?" for _ in names)
        query = (
            "SELECT name, COALESCE(MAX(operation), MAX(kind)) FROM spans"
            f" WHERE service = ? AND start_ns >= ? AND start_ns <= ? AND name IN ({marks})"
            " GROUP BY name"
        )
        async with self._reader.execute(query, (service, since_ns, until_ns, *names)) as cur:
            rows = await cur.fetchall()
        return {str(name): str(operation) for name, operation in rows if operation}

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
        """Apply retention by age and by size; returns the number of spans deleted.

        Spans are deleted in arrival order (row id), which follows time closely enough for
        retention and needs no index on time, so ingest pays for one index fewer.
        """
        now = time.time() if now is None else now
        cutoff = max(int((now - max_age_s) * 1e9), 0)
        deleted = await self._call(self._prune, cutoff, max_bytes)
        if deleted:
            logger.info("retention removed %d spans", deleted)
        return deleted

    def _prune(self, cutoff_ns: int, max_bytes: int) -> int:
        conn = self._connection()
        deleted = 0
        boundary = self._first_id_at_or_after(conn, cutoff_ns)
        if boundary is not None:
            deleted += conn.execute("DELETE FROM spans WHERE id < ?", (boundary,)).rowcount
        conn.execute("DELETE FROM span_details WHERE time_ns < ?", (cutoff_ns,))
        while (used := self._used_bytes(conn)) > max_bytes:
            count = conn.execute(
                "DELETE FROM spans WHERE id IN (SELECT id FROM spans ORDER BY id LIMIT ?)",
                (self._prune_batch(conn, used - max_bytes, used),),
            ).rowcount
            if not count:
                break
            deleted += count
        return deleted

    @staticmethod
    def _prune_batch(conn: sqlite3.Connection, excess: int, used: int) -> int:
        """How many of the oldest spans to delete next for `excess` bytes over the cap:
        as many as that many bytes hold at the store's mean size per span, 1 to 1000.

        A fixed batch would, under a small cap, delete more spans than the store holds
        over it, the newest among them. The mean counts every table, so it is at least a
        span's share and the batch errs on the small side; the caller deletes again until
        the store is under its cap.
        """
        low, high = conn.execute("SELECT min(id), max(id) FROM spans").fetchone()
        if low is None:
            return 1
        per_span = used / (int(high) - int(low) + 1)  # row ids follow arrival: no count(*)
        return max(1, min(PRUNE_BATCH, math.ceil(excess / per_span)))

    @staticmethod
    def _first_id_at_or_after(conn: sqlite3.Connection, cutoff_ns: int) -> int | None:
        """Binary search over row ids for the first span that started at or after cutoff."""
        row = conn.execute("SELECT min(id), max(id) FROM spans").fetchone()
        if not row or row[0] is None:
            return None
        lo, hi = int(row[0]), int(row[1]) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            found = conn.execute(
                "SELECT id, start_ns FROM spans WHERE id >= ? ORDER BY id LIMIT 1", (mid,)
            ).fetchone()
            if found is None or found[1] >= cutoff_ns:
                hi = mid
            else:
                lo = int(found[0]) + 1
        return lo

    async def used_bytes(self) -> int:
        """Bytes the database occupies, not counting free pages that SQLite will reuse."""
        return await self._call(lambda: self._used_bytes(self._connection()))

    @staticmethod
    def _used_bytes(conn: sqlite3.Connection) -> int:
        values = [
            int(conn.execute(f"PRAGMA {pragma}").fetchone()[0])
            for pragma in ("page_count", "freelist_count", "page_size")
        ]
        return (values[0] - values[1]) * values[2]

    async def count(self) -> int:
        async with self._reader.execute("SELECT count(*) FROM spans") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
