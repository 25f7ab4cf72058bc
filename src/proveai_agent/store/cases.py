"""Case rows: the case document as JSON plus the columns the case list filters on."""

from __future__ import annotations

import json
from typing import Any

import aiosqlite

from .db import transaction

OPEN_STATES = (
    "DETECTED",
    "TRIAGED",
    "INVESTIGATING",
    "REMEDIATION_SUGGESTED",
    "FIX_APPLIED",
    "VERIFYING",
)

_SUMMARY_COLUMNS = (
    "json_extract(doc, '$.id'), json_extract(doc, '$.title'), json_extract(doc, '$.state'),"
    " json_extract(doc, '$.severity'), json_extract(doc, '$.advisory'),"
    " json_extract(doc, '$.service'), json_extract(doc, '$.trigger'),"
    " json_extract(doc, '$.failure_class'), json_extract(doc, '$.opened_at'),"
    " json_extract(doc, '$.updated_at'), coalesce(json_array_length(doc, '$.signals'), 0),"
    " (SELECT max(coalesce(json_extract(h.value, '$.confidence'), 0.0))"
    " FROM json_each(doc, '$.hypotheses') AS h)"
)
"""The fields of `cases.service.summary`, read by SQLite out of the stored document."""
_SUMMARY_KEYS = (
    "id",
    "title",
    "state",
    "severity",
    "advisory",
    "service",
    "trigger",
    "failure_class",
    "opened_at",
    "updated_at",
    "signals",
    "top_confidence",
)


class CaseStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader

    async def insert(self, doc: dict[str, Any], opened_at: float) -> int:
        """Store a new case; returns its number (the n of CASE-n)."""
        async with transaction(self._writer):
            cur = await self._writer.execute(
                "INSERT INTO cases (state, severity, service, failure_class, trigger, title,"
                " opened_at, updated_at, last_signal_at, doc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '{}')",
                (
                    doc["state"],
                    doc["severity"],
                    doc["service"],
                    doc.get("failure_class"),
                    doc["trigger"],
                    doc["title"],
                    opened_at,
                    opened_at,
                    opened_at,
                ),
            )
            number = int(cur.lastrowid or 0)
            doc["id"] = f"CASE-{number}"
            await self._writer.execute(
                "UPDATE cases SET doc = ? WHERE id = ?", (json.dumps(doc), number)
            )
        return number

    async def update(
        self,
        number: int,
        doc: dict[str, Any],
        updated_at: float,
        last_signal_at: float | None = None,
    ) -> None:
        await self._writer.execute(
            "UPDATE cases SET state = ?, severity = ?, failure_class = ?, title = ?,"
            " updated_at = ?, last_signal_at = COALESCE(?, last_signal_at), doc = ?"
            " WHERE id = ?",
            (
                doc["state"],
                doc["severity"],
                doc.get("failure_class"),
                doc["title"],
                updated_at,
                last_signal_at,
                json.dumps(doc),
                number,
            ),
        )

    async def get(self, number: int) -> dict[str, Any] | None:
        async with self._reader.execute("SELECT doc FROM cases WHERE id = ?", (number,)) as cur:
            row = await cur.fetchone()
        return json.loads(row[0]) if row else None

    async def open_case_for(
        self, service: str, since: float
    ) -> tuple[int, dict[str, Any]] | None:
        """The service's open case whose last signal is not older than `since`."""
        marks = ",".join("?" for _ in OPEN_STATES)
        async with self._writer.execute(
            f"SELECT id, doc FROM cases WHERE service = ? AND state IN ({marks})"
            " AND last_signal_at >= ? ORDER BY id DESC LIMIT 1",
            (service, *OPEN_STATES, since),
        ) as cur:
            row = await cur.fetchone()
        return (int(row[0]), json.loads(row[1])) if row else None

    async def ended_cases_for(
        self, service: str, since: float
    ) -> list[tuple[int, dict[str, Any]]]:
        """The service's resolved or closed cases updated at or after `since`, newest first."""
        async with self._writer.execute(
            "SELECT id, doc FROM cases WHERE service = ? AND state IN ('RESOLVED', 'CLOSED')"
            " AND updated_at >= ? ORDER BY id DESC LIMIT 20",
            (service, since),
        ) as cur:
            rows = await cur.fetchall()
        return [(int(r[0]), json.loads(r[1])) for r in rows]

    async def summaries(
        self,
        state: str | None = None,
        failure_class: str | None = None,
        service: str | None = None,
        text: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """The case list's rows (`cases.service.summary` of each document) and the total
        that match the filters, newest first.

        SQLite reads the few fields out of each document: a case document carries its
        evidence snapshot (tens of KB), and parsing a page of them in Python cost the list
        most of its time.
        """
        rows, total = await self._page(
            _SUMMARY_COLUMNS, state, failure_class, service, text, limit, before
        )
        items = [dict(zip(_SUMMARY_KEYS, row, strict=True)) for row in rows]
        for item in items:
            item["advisory"] = bool(item["advisory"])
        return items, total

    async def _page(
        self,
        columns: str,
        state: str | None,
        failure_class: str | None,
        service: str | None,
        text: str | None,
        limit: int,
        before: int | None,
    ) -> tuple[list[Any], int]:
        clauses: list[str] = []
        params: list[Any] = []
        if state == "open":
            clauses.append(f"state IN ({','.join('?' for _ in OPEN_STATES)})")
            params.extend(OPEN_STATES)
        elif state:
            clauses.append("state = ?")
            params.append(state)
        if failure_class:
            clauses.append("failure_class = ?")
            params.append(failure_class)
        if service:
            clauses.append("service = ?")
            params.append(service)
        if text:
            clauses.append("(title LIKE ? ESCAPE '\\' OR service LIKE ? ESCAPE '\\')")
            pattern = (
                "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
            params.extend([pattern, pattern])
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._reader.execute(f"SELECT count(*) FROM cases{where}", params) as cur:
            row = await cur.fetchone()
        total = int(row[0]) if row else 0
        page_clauses = [*clauses, "id < ?"] if before is not None else clauses
        page_params = [*params, before] if before is not None else params
        page_where = f" WHERE {' AND '.join(page_clauses)}" if page_clauses else ""
        async with self._reader.execute(
            f"SELECT {columns} FROM cases{page_where} ORDER BY id DESC LIMIT ?",
            [*page_params, limit],
        ) as cur:
            rows = await cur.fetchall()
        return list(rows), total

    async def list(
        self,
        state: str | None = None,
        failure_class: str | None = None,
        service: str | None = None,
        text: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Case documents, newest first, and the total that match the filters."""
        rows, total = await self._page(
            "doc", state, failure_class, service, text, limit, before
        )
        return [json.loads(r[0]) for r in rows], total
