"""The knowledge base: failure signatures with the root cause and fix that resolved them.

Each entry is a signature (a case's classes, signals and correlated changes in words, see
engine/service.py `signature_of`) embedded with the embedding model, its root cause and its
fix. A new case's signature is compared with every entry by cosine similarity (numpy over
the vectors held in memory); an entry lifts its cause by its weight times how similar it
is, from 0 at `SIM_FLOOR` to 1 at `SIM_FULL`. The library ships seed entries for common
GenAI failures (engine/kb_seed.toml) at a lower weight than learnt ones; a resolved case
adds an entry; "not helpful" feedback on a suggestion halves the weight of the similar
entries of its cause and adds a negative one, so the same pattern ranks that cause lower
next time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import tomllib
from pathlib import Path
from typing import Protocol

import numpy as np

from ..store.kb import Entry, KbStore

logger = logging.getLogger(__name__)

SEEDS = Path(__file__).with_name("kb_seed.toml")
SIM_FLOOR = 0.6
"""Below this cosine similarity an entry says nothing about a case."""
SIM_FULL = 0.9
"""At or above it an entry counts fully."""
SEED_WEIGHT = 0.6
LEARNT_WEIGHT = 1.0
UNHELPFUL_WEIGHT = -0.5
HELPFUL_FACTOR = 1.2
MAX_WEIGHT = 1.5


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors (one row each)."""

    name: str

    def embed(self, texts: list[str]) -> np.ndarray: ...


class KnowledgeBase:
    """Entries in SQLite, vectors in memory; `lift` runs in the engine's worker thread."""

    def __init__(self, store: KbStore, embedder: Embedder, seeds: Path = SEEDS) -> None:
        self.store = store
        self.embedder = embedder
        self.seeds = seeds
        self._lock = threading.Lock()
        self._entries: list[Entry] = []
        self._matrix = np.zeros((0, 0), dtype=np.float32)

    async def load(self) -> None:
        """Add the seed entries once per embedding model, then read every entry."""
        model = self.embedder.name
        if "seed" not in await self.store.sources(model):
            seeds = tomllib.loads(self.seeds.read_text()).get("entry", [])
            vectors = await asyncio.to_thread(
                self.embedder.embed, [item["signature"] for item in seeds]
            )
            for item, vector in zip(seeds, vectors, strict=True):
                await self.store.add(
                    Entry(
                        item["signature"],
                        item["cause_id"],
                        item["fix"],
                        "seed",
                        SEED_WEIGHT,
                        model,
                        vector,
                        time.time(),
                    )
                )
            logger.info("knowledge base seeded with %d entries", len(seeds))
        self._set(await self.store.all(model))

    def _set(self, entries: list[Entry]) -> None:
        matrix = (
            np.vstack([e.vector for e in entries]).astype(np.float32)
            if entries
            else np.zeros((0, 0), dtype=np.float32)
        )
        with self._lock:
            self._entries = entries
            self._matrix = matrix

    def similar(self, signature: str) -> list[tuple[Entry, float]]:
        """Entries by similarity to the signature, most similar first (blocking)."""
        with self._lock:
            entries, matrix = self._entries, self._matrix
        if not entries:
            return []
        vector = self.embedder.embed([signature])[0]
        similarities = matrix @ vector
        order = np.argsort(-similarities)
        return [(entries[i], float(similarities[i])) for i in order]

    def lift(self, signature: str) -> tuple[dict[str, float], dict[str, str]]:
        """Per cause, the lift from -1 to 1 that similar entries give it, and the resolved
        case most like this one that had that cause (blocking)."""
        lifts: dict[str, float] = {}
        cases: dict[str, str] = {}
        for entry, similarity in self.similar(signature):
            share = min(1.0, max(0.0, (similarity - SIM_FLOOR) / (SIM_FULL - SIM_FLOOR)))
            if share <= 0:
                break
            lifts[entry.cause_id] = lifts.get(entry.cause_id, 0.0) + entry.weight * share
            if entry.source != "seed" and entry.weight > 0:
                cases.setdefault(entry.cause_id, entry.source)
        return {c: max(-1.0, min(1.0, v)) for c, v in lifts.items()}, cases

    async def learn(self, signature: str, cause_id: str, fix: str, case_id: str) -> None:
        """A resolved case: its signature now points to its root cause and fix."""
        vector = (await asyncio.to_thread(self.embedder.embed, [signature]))[0]
        entry = Entry(
            signature,
            cause_id,
            fix,
            case_id,
            LEARNT_WEIGHT,
            self.embedder.name,
            vector,
            time.time(),
        )
        await self.store.add(entry)
        self._set([*self._entries, entry])
        logger.info("knowledge base learnt %s from %s", cause_id, case_id)

    async def feedback(
        self, signature: str, cause_id: str, helpful: bool, case_id: str
    ) -> None:
        """An engineer's verdict on a suggestion for a case with this signature."""
        similar = await asyncio.to_thread(self.similar, signature)
        for entry, similarity in similar:
            if similarity < SIM_FLOOR or entry.cause_id != cause_id or entry.id is None:
                continue
            if entry.weight > 0:
                factor = HELPFUL_FACTOR if helpful else 0.5
                entry.weight = min(MAX_WEIGHT, entry.weight * factor)
                await self.store.set_weight(entry.id, entry.weight)
        if not helpful:
            vector = (await asyncio.to_thread(self.embedder.embed, [signature]))[0]
            negative = Entry(
                signature,
                cause_id,
                "not helpful",
                case_id,
                UNHELPFUL_WEIGHT,
                self.embedder.name,
                vector,
                time.time(),
            )
            await self.store.add(negative)
            self._set([*self._entries, negative])
