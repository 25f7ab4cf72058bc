"""API keys: where they come from, their roles, and the aiohttp middleware that checks them.

A key is accepted in `X-API-Key`, as `Authorization: Bearer KEY`, or as the password of
Basic auth (any user name). `operator` keys may do everything, `read` keys only GET.
Keys come from `PROVEAI_API_KEYS` (comma-separated, `KEY` or `KEY:ROLE`) and from a keys
file (one `KEY [ROLE]` a line, `#` comments) that is re-read when it changes. A source
that fails `FAILURES_PER_MINUTE` times within a minute is answered 429 until that minute
is over.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web, web_middlewares

logger = logging.getLogger(__name__)

ROLES = ("operator", "read")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ROLE = web.RequestKey("role", str)
FAILURES_PER_MINUTE = 20
"""Failed authentications a source may make within a minute before it gets 429."""
MAX_TRACKED_SOURCES = 10_000


def parse_entries(text: str, separator: str | None) -> dict[str, str]:
    """Keys and roles from env (comma-separated `KEY:ROLE`) or file (`KEY ROLE` lines)."""
    keys: dict[str, str] = {}
    items = text.split(",") if separator == "," else text.splitlines()
    for raw in items:
        item = raw.split("#", 1)[0].strip() if separator is None else raw.strip()
        if not item:
            continue
        if separator == ",":
            key, _, role = item.rpartition(":")
            if not key or role not in ROLES:
                key, role = item, "operator"
        else:
            parts = item.split()
            key, role = parts[0], parts[1] if len(parts) > 1 else "operator"
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r} in keys file (use operator or read)")
        keys[key] = role
    return keys


class KeyRing:
    """The keys in force; the keys file is re-read whenever its modification time changes."""

    def __init__(self, env_keys: str | None, keys_file: Path | None) -> None:
        self._env = parse_entries(env_keys, ",") if env_keys else {}
        self._file = keys_file
        self._file_keys: dict[str, str] = {}
        self._stamp: tuple[int, ...] | None = None
        self._refresh()

    def _refresh(self) -> None:
        if self._file is None:
            return
        try:
            st = self._file.stat()
        except FileNotFoundError:
            self._file_keys, self._stamp = {}, None
            return
        # The inode and ctime too: a file moved into place (rsync -a, cp -p, install -p)
        # can keep the old one's size and modification time.
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            self._file_keys = parse_entries(self._file.read_text(), None)
            logger.info("keys file re-read: %d keys", len(self._file_keys))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            logger.error(
                "keys file %s not usable, keeping the previous keys: %s", self._file, exc
            )
        self._stamp = stamp

    def __len__(self) -> int:
        self._refresh()
        return len(self._env) + len(self._file_keys)

    def role_of(self, presented: str) -> str | None:
        """The role of a presented key, comparing against every key in constant time."""
        self._refresh()
        found: str | None = None
        candidate = presented.encode("utf-8", "surrogateescape")
        for key, role in (*self._env.items(), *self._file_keys.items()):
            if hmac.compare_digest(candidate, key.encode("utf-8", "surrogateescape")):
                found = role
        return found


class FailureLimit:
    """Failed authentications per source, counted in a minute that starts at its first one.

    Once a source has failed `limit` times in its minute, everything it sends is answered
    429 until the minute is over, before its key is even compared: guessing learns nothing
    more, and a flood costs one dictionary look-up a request. A valid key from that source
    waits too; clients behind one proxy address share its budget. At most `max_sources`
    sources are tracked; past that the oldest is forgotten.
    """

    def __init__(
        self,
        limit: int = FAILURES_PER_MINUTE,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = MAX_TRACKED_SOURCES,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._max_sources = max_sources
        self._windows: dict[str, tuple[float, int]] = {}

    def wait_s(self, source: str) -> int:
        """Whole seconds until `source` may try again; 0 when it may now."""
        entry = self._windows.get(source)
        if entry is None:
            return 0
        start, count = entry
        left = start + self.window_s - self._clock()
        if left <= 0:
            del self._windows[source]
            return 0
        return max(1, math.ceil(left)) if count >= self.limit else 0

    def failed(self, source: str) -> bool:
        """Count a failure; True when it is the one that reaches the limit."""
        now = self._clock()
        start, count = self._windows.pop(source, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        while len(self._windows) >= self._max_sources:
            del self._windows[next(iter(self._windows))]
        self._windows[source] = (start, count + 1)
        return count + 1 == self.limit


def ensure_keys_file(path: Path) -> str:
    """Create a keys file with one new operator key if it does not exist; returns a key."""
    if path.exists():
        keys = parse_entries(path.read_text(), None)
        for key, role in keys.items():
            if role == "operator":
                return key
    key = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(f"{key} operator\n")
    return key


def presented_key(request: web.Request) -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorFactory = Callable[[web.Request, int, str], web.StreamResponse]


def middleware(
    keys: KeyRing,
    open_routes: list[str],
    error: ErrorFactory,
    refused: Callable[[str | None, str], None] | None = None,
    limit: FailureLimit | None = None,
) -> web_middlewares.Middleware:
    """Refuse requests without a valid key (401), writes with a read key (403) and sources
    over their limit of failed authentications (429)."""
    open_set = frozenset(open_routes)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_set:
            return await handler(request)
        source = request.remote or "unknown"
        wait = limit.wait_s(source) if limit is not None else 0
        if wait:
            if refused is not None:
                refused(request.remote, request.path)
            response = error(
                request, 429, f"too many failed authentications; retry in {wait} s"
            )
            response.headers["Retry-After"] = str(wait)
            return response
        key = presented_key(request)
        role = keys.role_of(key) if key else None
        if role is None:
            reason = "missing API key" if not key else "invalid API key"
            logger.debug(
                "refused %s %s from %s: %s",
                request.method,
                request.path,
                request.remote,
                reason,
            )
            if refused is not None:
                refused(request.remote, request.path)
            if limit is not None and limit.failed(source):
                logger.info(
                    "%s failed to authenticate %d times within a minute: answered 429 until"
                    " the minute is over",
                    source,
                    limit.limit,
                )
            return error(request, 401, reason)
        if role == "read" and request.method not in READ_METHODS:
            return error(request, 403, "this key may only read")
        request[ROLE] = role
        return await handler(request)

    return check
