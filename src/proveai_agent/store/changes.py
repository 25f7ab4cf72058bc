"""The change log: deploy markers, watched-file edits and attribute drift, by service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiosqlite

KINDS = ("deploy", "file", "attribute")


@dataclass(slots=True)
class Change:
    """Something that changed for a service, which the engine may correlate with a failure."""

    at: float
    service: str
    kind: str
    summary: str
    before: str | None
    after: str | None
    source: str
    id: int | None = None


class ChangeStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader

    async def add(self, change: Change) -> Change:
        """Record a change; returns it with its id."""
        cur = await self._writer.execute(
            "INSERT INTO changes (at, service, kind, summary, before, after, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                change.at,
                change.service,
                change.kind,
                change.summary,
                change.before,
                change.after,
                change.source,
            ),
        )
        change.id = int(cur.lastrowid or 0)
        return change

    async def list(
        self,
        service: str | None = None,
        since: float | None = None,
        limit: int = 500,
        until: float | None = None,
    ) -> list[Change]:
        """Changes, oldest first, of one service or all, at or after `since` and at or
        before `until`."""
        clauses: list[str] = []
        params: list[Any] = []
        if service:
            clauses.append("service = ?")
            params.append(service)
        if since is not None:
            clauses.append("at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("at <= ?")
            params.append(until)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._reader.execute(
            "SELECT id, at, service, kind, summary, before, after, source FROM changes"
            f"{where} ORDER BY at, id LIMIT ?",
            [*params, limit],
        ) as cur:
            rows = await cur.fetchall()
        return [
            Change(
                at=r[1],
                service=r[2],
                kind=r[3],
                summary=r[4],
                before=r[5],
                after=r[6],
                source=r[7],
                id=r[0],
            )
            for r in rows
        ]
