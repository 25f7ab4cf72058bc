"""Opens the agent's SQLite database (WAL) and applies the versioned schema migrations."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite

logger = logging.getLogger(__name__)

# Each entry migrates the schema from version i to i + 1; PRAGMA user_version holds the version.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE spans (
        id INTEGER PRIMARY KEY,
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_span_id TEXT,
        service TEXT NOT NULL,
        resource_id INTEGER,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        duration_s REAL NOT NULL,
        model TEXT,
        operation TEXT,
        provider TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        finish_reasons TEXT,
        scores TEXT,
        body BLOB NOT NULL
    );
    CREATE TABLE resources (
        id INTEGER PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        attributes TEXT NOT NULL
    );
    CREATE UNIQUE INDEX spans_ids ON spans (trace_id, span_id);
    CREATE INDEX spans_service_start ON spans (service, start_ns);
    CREATE TABLE span_details (
        id INTEGER PRIMARY KEY,
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        service TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX span_details_trace ON span_details (trace_id, span_id);
    CREATE INDEX span_details_time ON span_details (time_ns);
    CREATE TABLE cases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        service TEXT NOT NULL,
        failure_class TEXT,
        trigger TEXT NOT NULL,
        title TEXT NOT NULL,
        opened_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_signal_at REAL NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX cases_service_state ON cases (service, state);
    CREATE INDEX cases_updated ON cases (updated_at);
    """,
    """
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        service TEXT NOT NULL,
        kind TEXT NOT NULL,
        summary TEXT NOT NULL,
        before TEXT,
        after TEXT,
        source TEXT NOT NULL
    );
    CREATE INDEX changes_service_at ON changes (service, at);
    CREATE INDEX changes_at ON changes (at);
    """,
    """
    CREATE TABLE kb_entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        signature TEXT NOT NULL,
        cause_id TEXT NOT NULL,
        fix TEXT NOT NULL,
        source TEXT NOT NULL,
        weight REAL NOT NULL,
        model TEXT NOT NULL,
        vector BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX kb_entries_cause ON kb_entries (cause_id);
    """,
    """
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only');
    END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only');
    END;
    """,
]


async def connect(path: Path) -> aiosqlite.Connection:
    """Open a connection with the pragmas every connection of the agent uses."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA synchronous=NORMAL")
    await conn.execute("PRAGMA busy_timeout=10000")
    await conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextlib.asynccontextmanager
async def transaction(conn: aiosqlite.Connection) -> AsyncIterator[None]:
    """BEGIN IMMEDIATE, then COMMIT, or ROLLBACK when the body raises or is cancelled.

    The exception that ended the body is the one raised. A cancelled await does not stop the
    statement it waited for: the connection's thread still runs it, and the ROLLBACK queued
    behind it. When that statement was the COMMIT, nothing is left to roll back, and the
    rollback's own error must not replace the cancellation, or the cancelled task would carry
    on as if an ordinary error had happened.
    """
    await conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        await conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.OperationalError):
            await conn.execute("ROLLBACK")
        raise


async def migrate(conn: aiosqlite.Connection) -> int:
    """Bring the schema up to date; returns the version now in force."""
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this agent knows "
            f"({len(MIGRATIONS)}); upgrade the agent"
        )
    for target in range(version, len(MIGRATIONS)):
        async with transaction(conn):
            for statement in _statements(MIGRATIONS[target]):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version={target + 1}")
        logger.info("database schema migrated to version %d", target + 1)
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    """The statements of a migration; a trigger's body keeps its own semicolons."""
    statements: list[str] = []
    pending = ""
    for part in script.split(";"):
        pending = f"{pending};{part}" if pending else part
        if "CREATE TRIGGER" in pending and not pending.rstrip().upper().endswith("END"):
            continue
        if pending.strip():
            statements.append(pending.strip())
        pending = ""
    return statements
