"""What the agent writes to its audit log, and the checks and exports around it.

Every case event (detection, signal, transition, analysis, feedback, note) is recorded with
its actor and time as it is stored. Refused authentications are counted per source and
minute and written as one record each when the minute is over, so that a flood of bad
requests cannot grow the log without bound (at most `MAX_SOURCES` sources a minute; the
rest are counted together). The head of the chain is written to `audit-head.log` in the
data directory at every checkpoint: an operator copies that file off the machine to
anchor the chain elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .store.audit import AuditStore, canonical

logger = logging.getLogger(__name__)

MAX_SOURCES = 1000
OTHER_SOURCES = "(other sources)"
HEAD_FILE = "audit-head.log"


class AuditLog:
    """The agent's side of the audit log."""

    def __init__(self, store: AuditStore, data_dir: Path) -> None:
        self.store = store
        self.head_file = Path(data_dir) / HEAD_FILE
        self._refused: dict[int, Counter[str]] = {}

    async def case_events(self, case_id: str, events: list[dict[str, Any]]) -> None:
        """Record case timeline events, in order."""
        for event in events:
            actor = str(event.get("actor") or "agent")
            await self.store.append(actor, f"case.{event.get('type', 'event')}", case_id, event)

    def refused(self, source: str | None, path: str, at: float | None = None) -> None:
        """Count a refused authentication (written when its minute is over)."""
        minute = int((time.time() if at is None else at) // 60)
        counts = self._refused.setdefault(minute, Counter())
        name = source or "unknown"
        if name not in counts and len(counts) >= MAX_SOURCES:
            name = OTHER_SOURCES
        counts[name] += 1

    async def flush_refused(self, now: float | None = None) -> int:
        """Write one record per source for each minute that is over; returns how many."""
        current = int((time.time() if now is None else now) // 60)
        written = 0
        for minute in sorted(m for m in self._refused if m < current):
            for source, count in sorted(self._refused.pop(minute).items()):
                data = {"minute": minute * 60, "count": count}
                await self.store.append("unknown", "auth.refused", source, data)
                written += 1
        return written

    async def checkpoint(self) -> dict[str, Any] | None:
        """Append the chain's head to the head file; returns it."""
        head = await self.store.head()
        if head is None:
            return None
        line = canonical({"at": time.time(), "seq": head["seq"], "hash": head["hash"]})
        await asyncio.to_thread(_append_line, self.head_file, line)
        return head

    async def export(self, out: Any) -> int:
        """Write every record as JSON lines, chain fields included; returns how many."""
        after, written = 0, 0
        while True:
            batch = await self.store.records(after=after, limit=1000)
            if not batch:
                return written
            for record in batch:
                out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
            written += len(batch)
            after = batch[-1]["seq"]


def _append_line(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
