"""Knowledge-base rows: a failure signature, its root cause and fix, and its embedding."""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite
import numpy as np


@dataclass(slots=True)
class Entry:
    """One pattern the engine learnt or was shipped with.

    `source` is "seed" or the id of the resolved case it came from; `weight` starts at 1
    and falls with "not helpful" feedback; `model` names the embedding model of `vector`.
    """

    signature: str
    cause_id: str
    fix: str
    source: str
    weight: float
    model: str
    vector: np.ndarray
    created_at: float
    id: int | None = None


class KbStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader

    async def add(self, entry: Entry) -> Entry:
        cur = await self._writer.execute(
            "INSERT INTO kb_entries (signature, cause_id, fix, source, weight, model, vector,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.signature,
                entry.cause_id,
                entry.fix,
                entry.source,
                entry.weight,
                entry.model,
                np.asarray(entry.vector, dtype=np.float32).tobytes(),
                entry.created_at,
            ),
        )
        entry.id = int(cur.lastrowid or 0)
        return entry

    async def set_weight(self, entry_id: int, weight: float) -> None:
        await self._writer.execute(
            "UPDATE kb_entries SET weight = ? WHERE id = ?", (weight, entry_id)
        )

    async def all(self, model: str) -> list[Entry]:
        """Every entry embedded with `model`, oldest first."""
        async with self._reader.execute(
            "SELECT id, signature, cause_id, fix, source, weight, model, vector, created_at"
            " FROM kb_entries WHERE model = ? ORDER BY id",
            (model,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            Entry(
                signature=r[1],
                cause_id=r[2],
                fix=r[3],
                source=r[4],
                weight=r[5],
                model=r[6],
                vector=np.frombuffer(r[7], dtype=np.float32),
                created_at=r[8],
                id=r[0],
            )
            for r in rows
        ]

    async def sources(self, model: str) -> set[str]:
        async with self._reader.execute(
            "SELECT DISTINCT source FROM kb_entries WHERE model = ?", (model,)
        ) as cur:
            return {str(r[0]) for r in await cur.fetchall()}
