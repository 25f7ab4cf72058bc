"""The figures of the compliance report, read from the agent's database for a period."""

from __future__ import annotations

import json
from typing import Any

import aiosqlite

ENTRY_KINDS = ("SPAN_KIND_SERVER", "SPAN_KIND_CONSUMER")


class ReportStore:
    def __init__(self, reader: aiosqlite.Connection) -> None:
        self._reader = reader

    async def requests(self, since_ns: int, until_ns: int) -> dict[str, int]:
        """Entry spans (server or consumer) per service: the requests the services served."""
        async with self._reader.execute(
            "SELECT service, count(*) FROM spans WHERE start_ns >= ? AND start_ns < ?"
            " AND kind IN (?, ?) GROUP BY service ORDER BY service",
            (since_ns, until_ns, *ENTRY_KINDS),
        ) as cur:
            return {str(r[0]): int(r[1]) for r in await cur.fetchall()}

    async def spans(self, since_ns: int, until_ns: int) -> int:
        async with self._reader.execute(
            "SELECT count(*) FROM spans WHERE start_ns >= ? AND start_ns < ?",
            (since_ns, until_ns),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def scores(
        self, since_ns: int, until_ns: int
    ) -> dict[tuple[str, str], tuple[float, int]]:
        """(service, evaluation) → (mean score, count) of the spans' evaluation scores."""
        async with self._reader.execute(
            "SELECT s.service, e.key, avg(e.value), count(*)"
            " FROM spans s, json_each(s.scores) e"
            " WHERE s.scores IS NOT NULL AND s.scores != '{}' AND s.start_ns >= ?"
            " AND s.start_ns < ? GROUP BY s.service, e.key ORDER BY s.service, e.key",
            (since_ns, until_ns),
        ) as cur:
            rows = await cur.fetchall()
        return {(str(r[0]), str(r[1])): (float(r[2]), int(r[3])) for r in rows}

    async def cases(self, since: float, until: float) -> list[dict[str, Any]]:
        """Cases opened or updated in the period, as documents."""
        async with self._reader.execute(
            "SELECT doc FROM cases WHERE (opened_at >= ? AND opened_at < ?)"
            " OR (updated_at >= ? AND updated_at < ?) ORDER BY id",
            (since, until, since, until),
        ) as cur:
            return [json.loads(r[0]) for r in await cur.fetchall()]
