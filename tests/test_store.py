"""The span store on a real SQLite file: group commits, reads, log-record merge, retention."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from proveai_agent.spans import Span, SpanDetail
from proveai_agent.store import db
from proveai_agent.store.spans import SpanStore

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def span(span_id: str, parent: str | None = None, start: int = 1_000, **kw) -> Span:
    fields = dict(
        trace_id=TRACE,
        span_id=span_id,
        parent_span_id=parent,
        service="rag-api",
        name="chat",
        kind="SPAN_KIND_CLIENT",
        status="STATUS_CODE_OK",
        status_message="",
        start_ns=start,
        end_ns=start + 2_500_000_000,
    )
    fields.update(kw)
    return Span(**fields)


@pytest.fixture
async def store(tmp_path):
    path = tmp_path / "proveai.db"
    writer = await db.connect(path)
    await db.migrate(writer)
    reader = await db.connect(path)
    spans = SpanStore(path, reader)
    spans.start()
    yield spans, path
    await spans.stop()
    await reader.close()
    await writer.close()


async def test_written_spans_are_on_disk_when_write_returns(store):
    spans, path = store
    await spans.write(
        [span("00f067aa0ba902b7"), span("00f067aa0ba902b8", "00f067aa0ba902b7")], []
    )
    # A separate plain sqlite3 connection sees the rows: they are committed.
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 2


async def test_concurrent_writes_share_commits_and_all_land(store):
    spans, _ = store
    batches = [
        [span(f"{i:016x}", start=i) for i in range(j * 100 + 1, j * 100 + 101)]
        for j in range(20)
    ]
    await asyncio.gather(*(spans.write(b, []) for b in batches))
    assert await spans.count() == 2000


async def test_a_resent_span_replaces_itself_and_is_not_doubled(store):
    spans, _ = store
    await spans.write([span("00f067aa0ba902b7")], [])
    await spans.write([span("00f067aa0ba902b7", status="STATUS_CODE_ERROR")], [])
    trace = await spans.get_trace(TRACE)
    assert [s["status"] for s in trace] == ["STATUS_CODE_ERROR"]


async def test_trace_read_returns_wire_format_with_log_messages_merged(store):
    spans, _ = store
    detail = SpanDetail(
        TRACE,
        "00f067aa0ba902b7",
        "rag-api",
        5,
        "message",
        {"direction": "input", "role": "user", "parts": [], "source": "log"},
    )
    score = SpanDetail(
        TRACE,
        "00f067aa0ba902b7",
        "rag-api",
        6,
        "score",
        {"name": "relevance", "value": 0.25, "label": None},
    )
    # The log records arrive before their span.
    await spans.write([], [detail, score])
    await spans.write(
        [
            span(
                "00f067aa0ba902b7",
                input_tokens=10,
                output_tokens=None,
                finish_reasons=["stop", "length"],
            )
        ],
        [],
    )
    (got,) = await spans.get_trace(TRACE)
    assert got["duration_s"] == 2.5
    assert got["input_tokens"] == 10
    assert got["output_tokens"] is None
    assert got["finish_reasons"] == ["stop", "length"]
    assert got["messages"][0]["role"] == "user"
    assert got["scores"] == {"relevance": 0.25}


async def test_retention_by_age_deletes_only_older_spans(store):
    spans, _ = store
    now = 10_000.0
    old = span("00f067aa0ba902b1", start=int((now - 7200) * 1e9))
    new = span("00f067aa0ba902b2", start=int((now - 60) * 1e9))
    await spans.write([old, new], [])
    assert await spans.prune(max_age_s=3600, max_bytes=1 << 40, now=now) == 1
    assert [s["span_id"] for s in await spans.get_trace(TRACE)] == ["00f067aa0ba902b2"]


async def test_retention_by_size_deletes_oldest_first_until_under_the_cap(store):
    spans, _ = store
    big = "x" * 4000
    rows = [span(f"{i:016x}", start=i * 1000, attributes={"blob": big}) for i in range(1, 3001)]
    await spans.write(rows, [])
    before = await spans.used_bytes()
    cap = before // 2
    deleted = await spans.prune(max_age_s=1e12, max_bytes=cap, now=1.0)
    assert deleted > 0
    assert await spans.used_bytes() <= cap
    remaining = await spans.get_trace(TRACE)
    # The survivors are the newest spans.
    assert remaining[-1]["span_id"] == f"{3000:016x}"
    assert int(remaining[0]["span_id"], 16) > deleted - 1


async def test_migrations_are_versioned_and_idempotent(tmp_path):
    path = tmp_path / "x.db"
    conn = await db.connect(path)
    version = await db.migrate(conn)
    assert await db.migrate(conn) == version
    async with conn.execute("PRAGMA user_version") as cur:
        assert (await cur.fetchone())[0] == version
    async with conn.execute("PRAGMA journal_mode") as cur:
        assert (await cur.fetchone())[0] == "wal"
    await conn.close()


async def test_checkpoint_moves_the_wal_into_the_database(store):
    spans, path = store
    await spans.write([span(f"{i:016x}", start=i) for i in range(1, 2001)], [])
    # The writer never checkpoints by itself: the rows are in the WAL, not in the file.
    before = path.stat().st_size
    await spans.checkpoint()
    after = path.stat().st_size
    assert after > before + 100 * 1024


async def test_a_transaction_whose_body_fails_leaves_nothing_and_raises_that_error(tmp_path):
    conn = await db.connect(tmp_path / "t.db")
    try:
        await conn.execute("CREATE TABLE t (x INTEGER)")
        with pytest.raises(ValueError, match="body failed"):
            async with db.transaction(conn):
                await conn.execute("INSERT INTO t VALUES (1)")
                raise ValueError("body failed")
        async with conn.execute("SELECT count(*) FROM t") as cur:
            assert await cur.fetchone() == (0,)
        assert not conn.in_transaction
    finally:
        await conn.close()


async def test_a_cancellation_after_the_commit_ran_stays_a_cancellation(tmp_path):
    # A task cancelled while it awaits COMMIT: the commit still runs in the connection's
    # thread, so the rollback that follows finds no transaction. The task must still end
    # cancelled, not with the rollback's error, which a worker loop would catch and go on.
    conn = await db.connect(tmp_path / "t.db")
    try:
        await conn.execute("CREATE TABLE t (x INTEGER)")
        with pytest.raises(asyncio.CancelledError):
            async with db.transaction(conn):
                await conn.execute("INSERT INTO t VALUES (1)")
                await conn.execute("COMMIT")
                raise asyncio.CancelledError
        async with conn.execute("SELECT count(*) FROM t") as cur:
            assert await cur.fetchone() == (1,)
    finally:
        await conn.close()
