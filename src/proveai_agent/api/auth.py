"""API keys: where they come from, their roles, and the aiohttp middleware that checks them.

A key is accepted in `X-API-Key`, as `Authorization: Bearer KEY`, or as the password of
Basic auth (any user name). `operator` keys may do everything, `read` keys only GET.
Keys come from `PROVEAI_API_KEYS` (comma-separated, `KEY` or `KEY:ROLE`) and from a keys
file (one `KEY [ROLE]` a line, `#` comments) that is re-read when it changes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web, web_middlewares

logger = logging.getLogger(__name__)

ROLES = ("operator", "read")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ROLE = web.RequestKey("role", str)


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
        self._stamp: tuple[int, int] | None = None
        self._refresh()

    def _refresh(self) -> None:
        if self._file is None:
            return
        try:
            st = self._file.stat()
        except FileNotFoundError:
            self._file_keys, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
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
) -> web_middlewares.Middleware:
    """Refuse requests without a valid key (401) and writes with a read key (403)."""
    open_set = frozenset(open_routes)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_set:
            return await handler(request)
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
            return error(request, 401, reason)
        if role == "read" and request.method not in READ_METHODS:
            return error(request, 403, "this key may only read")
        request[ROLE] = role
        return await handler(request)

    return check
