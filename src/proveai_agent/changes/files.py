"""Watched files: prompt templates, retrieval configuration, index manifests.

Each configured path (a file or a folder) belongs to a service. When a file's content
changes, a change is recorded with its path, the content hash before and after, the size
of the change and a short summary. A burst of writes to one file counts once: events are
debounced, and a write that leaves the content as it was records nothing.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import awatch

from ..store.changes import Change

logger = logging.getLogger(__name__)

MAX_READ_BYTES = 4 * 1024 * 1024
SHOWN_LINES = 4
"""A change's summary quotes this many of its changed lines..."""
SHOWN_CHARS = 60
"""...each cut to this many characters, so that what changed can be read and matched."""


@dataclass(frozen=True, slots=True)
class WatchedPath:
    path: Path
    service: str


@dataclass(slots=True)
class _Content:
    digest: str
    size: int
    text: list[str] | None


def _read(path: Path) -> _Content | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_READ_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8").splitlines() if len(data) <= MAX_READ_BYTES else None
    except UnicodeDecodeError:
        text = None
    return _Content(digest, len(data), text)


def _summary(path: Path, before: _Content | None, after: _Content | None) -> str:
    if before is None:
        return f"{path.name} created ({after.size if after else 0} bytes)"
    if after is None:
        return f"{path.name} deleted"
    if before.text is not None and after.text is not None:
        added = removed = 0
        shown: list[str] = []
        for line in difflib.unified_diff(before.text, after.text, lineterm="", n=0):
            if line.startswith(("+++", "---", "@@")):
                continue
            if line.startswith("+"):
                added += 1
            elif line.startswith("-"):
                removed += 1
            else:
                continue
            if len(shown) < SHOWN_LINES and line[1:].strip():
                text = " ".join(line[1:].split())
                shown.append(
                    line[0] + (text[:SHOWN_CHARS] + "…" if len(text) > SHOWN_CHARS else text)
                )
        quoted = f": {' | '.join(shown)}" if shown else ""
        return f"{path.name}: {added + removed} lines changed (+{added} -{removed}){quoted}"
    return f"{path.name}: {after.size - before.size:+d} bytes"


class FileWatcher:
    """Watches the configured paths and hands each real content change to `record`."""

    def __init__(
        self,
        paths: list[WatchedPath],
        record: Callable[[Change], Awaitable[None]],
        quiet_ms: int = 300,
        debounce_ms: int = 2000,
    ) -> None:
        # Events name resolved paths, so the configured ones are resolved too.
        self.paths = [WatchedPath(w.path.resolve(), w.service) for w in paths]
        self.record = record
        # A burst ends when no write came for quiet_ms, and is cut at debounce_ms at most.
        self.quiet_ms = quiet_ms
        self.debounce_ms = debounce_ms
        self._known: dict[Path, _Content | None] = {}
        self.ready = asyncio.Event()

    def _owner(self, path: Path) -> WatchedPath | None:
        for watched in self.paths:
            if path == watched.path or watched.path in path.parents:
                return watched
        return None

    def _files(self) -> list[Path]:
        found: list[Path] = []
        for watched in self.paths:
            if watched.path.is_dir():
                found.extend(p for p in watched.path.rglob("*") if p.is_file())
            elif watched.path.exists():
                found.append(watched.path)
        return found

    async def run(self) -> None:
        """Watch until cancelled; the current contents are the baseline, not changes."""
        existing = await asyncio.to_thread(self._baseline)
        if not existing:
            logger.warning("none of the watched paths exists; no file changes are recorded")
            self.ready.set()
            return
        watcher = awatch(*existing, debounce=self.debounce_ms, step=self.quiet_ms)
        self.ready.set()
        async for events in watcher:
            for path in sorted({Path(p) for _, p in events}):
                await self._check(path)

    def _baseline(self) -> list[Path]:
        """Read what the files hold now; returns the watched paths that exist."""
        for path in self._files():
            self._known[path] = _read(path)
        return [w.path for w in self.paths if w.path.exists()]

    async def _check(self, path: Path) -> None:
        watched = self._owner(path)
        if watched is None:
            return
        after = await asyncio.to_thread(_read, path)
        before = self._known.get(path)
        if (before.digest if before else None) == (after.digest if after else None):
            return
        self._known[path] = after
        change = Change(
            at=time.time(),
            service=watched.service,
            kind="file",
            summary=_summary(path, before, after),
            before=before.digest if before else None,
            after=after.digest if after else None,
            source=str(path),
        )
        await self.record(change)
