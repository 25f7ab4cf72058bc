"""Online backup of the agent's database: a consistent copy taken while the agent writes."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class Copy:
    """What a backup wrote: where, how many bytes, its schema version and integrity."""

    path: Path
    bytes: int
    schema_version: int
    integrity: str


def backup(source: Path, target: Path) -> Copy:
    """Copy the database at `source` to `target`, a new file; never overwrites one.

    SQLite's online backup copies every page in one step, inside one read transaction:
    the copy is the database as of one commit, WAL included, and in WAL mode the agent's
    writers go on meanwhile. The copy is written beside `target` under a temporary name
    and linked into place only when complete and checked, so `target` is either absent
    or a whole copy, and a file that appears there meanwhile is not replaced.

    Raises:
        FileExistsError: `target` exists.
        FileNotFoundError: there is no database at `source`.
        sqlite3.Error: the database could not be read or the copy written.
    """
    if target.exists():
        raise FileExistsError(f"{target} exists; a backup never overwrites a file")
    if not source.is_file():
        raise FileNotFoundError(f"no database at {source}")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        _copy(source, partial)
        copy = _check(partial)
        try:
            os.link(partial, target)
        except FileExistsError:
            raise FileExistsError(
                f"{target} appeared during the backup; it was left as it is"
            ) from None
        except OSError:  # a file system without hard links
            if target.exists():
                raise FileExistsError(f"{target} exists; it was left as it is") from None
            os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    copy.path = target
    return copy


def _copy(source: Path, partial: Path) -> None:
    src = sqlite3.connect(source)
    try:
        src.execute("PRAGMA busy_timeout=10000")
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)
            # One self-contained file: no -wal or -shm to carry along with it.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _check(path: Path) -> Copy:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()
    integrity = "; ".join(str(row[0]) for row in rows)
    return Copy(path, path.stat().st_size, version, integrity)
