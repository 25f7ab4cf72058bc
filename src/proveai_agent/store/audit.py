"""The audit log: append-only records, each hash-chained to the one before it.

A record's hash is SHA-256 over the previous record's hash and the record itself as
canonical JSON (sorted keys, no spaces, UTF-8). SQLite triggers refuse UPDATE and DELETE
on the table, so changing history needs the triggers dropped first; `verify` then finds
the first record whose sequence, link or hash does not hold and says which and why.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite

from .db import transaction

GENESIS = "0" * 64
"""The previous hash of the first record."""


def canonical(value: Any) -> str:
    """JSON with sorted keys and no spaces: one text for one value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(prev_hash: str, record: dict[str, Any]) -> str:
    """The hash of a record (seq, at, actor, action, subject, data) after `prev_hash`."""
    body = canonical(
        {k: record[k] for k in ("seq", "at", "actor", "action", "subject", "data")}
    )
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


@dataclass(slots=True)
class Verdict:
    """What `verify` found: ok, how many records, and the first bad one with the reason."""

    ok: bool
    records: int
    first_bad: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "first_bad": self.first_bad,
            "reason": self.reason,
        }


class AuditStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader

    async def append(
        self,
        actor: str,
        action: str,
        subject: str,
        data: dict[str, Any],
        at: float | None = None,
    ) -> dict[str, Any]:
        """Append one record, chained to the last, in one transaction; returns it."""
        async with transaction(self._writer):
            async with self._writer.execute(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
            ) as cur:
                row = await cur.fetchone()
            seq, prev = (int(row[0]) + 1, str(row[1])) if row else (1, GENESIS)
            record = {
                "seq": seq,
                "at": round(time.time() if at is None else at, 6),
                "actor": actor,
                "action": action,
                "subject": subject,
                "data": data,
            }
            record["prev_hash"] = prev
            record["hash"] = record_hash(prev, record)
            await self._writer.execute(
                "INSERT INTO audit (seq, at, actor, action, subject, data, prev_hash, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    record["at"],
                    actor,
                    action,
                    subject,
                    canonical(data),
                    prev,
                    record["hash"],
                ),
            )
        return record

    async def records(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Records with a sequence number above `after`, in order."""
        async with self._reader.execute(
            "SELECT seq, at, actor, action, subject, data, prev_hash, hash FROM audit"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [_row(r) for r in rows]

    async def head(self) -> dict[str, Any] | None:
        async with self._reader.execute(
            "SELECT seq, at, actor, action, subject, data, prev_hash, hash FROM audit"
            " ORDER BY seq DESC LIMIT 1"
        ) as cur:
            row = await cur.fetchone()
        return _row(row) if row else None

    async def verify(self) -> Verdict:
        """Walk the whole chain; the first record that breaks it, and why."""
        expected_seq, prev, count = 1, GENESIS, 0
        async with self._reader.execute(
            "SELECT seq, at, actor, action, subject, data, prev_hash, hash FROM audit"
            " ORDER BY rowid"
        ) as cur:
            async for row in cur:
                count += 1
                try:
                    record = _row(row)
                except ValueError:
                    return Verdict(False, count, int(row[0]), "its data is not valid JSON")
                reason = _check(record, expected_seq, prev)
                if reason:
                    return Verdict(False, count, record["seq"], reason)
                expected_seq, prev = record["seq"] + 1, record["hash"]
        return Verdict(True, count, None, "the chain holds")


def _check(record: dict[str, Any], expected_seq: int, prev: str) -> str | None:
    if record["seq"] != expected_seq:
        return (
            f"sequence {record['seq']} where {expected_seq} was next: "
            "a record is missing, added or moved"
        )
    if record["prev_hash"] != prev:
        return (
            "its link to the record before does not match: a record before it changed or moved"
        )
    if record_hash(prev, record) != record["hash"]:
        return "its content does not match its hash: it was changed"
    return None


def _row(row: Any) -> dict[str, Any]:
    return {
        "seq": int(row[0]),
        "at": row[1],
        "actor": row[2],
        "action": row[3],
        "subject": row[4],
        "data": json.loads(row[5]),
        "prev_hash": row[6],
        "hash": row[7],
    }
