"""HTTP client for the agent's API; every failure comes back as one readable AgentError."""

from __future__ import annotations

import json
import logging
import os
import ssl
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8470"
KEY_HEADER = "X-API-Key"


class AgentError(Exception):
    """A request to the agent that did not give an answer the console can use.

    Args:
        message: one line for the operator, with the cause as the other side gave it.
        status: the HTTP status when the agent answered, None when it could not be reached.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def unreachable(self) -> bool:
        """True when no HTTP answer came back at all."""
        return self.status is None


def check_url(url: str) -> str:
    """The agent's base URL without a trailing slash; ValueError when it is not http(s)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return url.strip().rstrip("/")


def _http_error(status: int, body: bytes) -> AgentError:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "error"
    detail = ""
    try:
        decoded = json.loads(body)
        if isinstance(decoded, dict) and decoded.get("error"):
            detail = str(decoded["error"])
    except ValueError:
        detail = body.decode("utf-8", "replace").strip()[:200]
    message = f"{status} {reason}" + (f": {detail}" if detail else "")
    if status == 401:
        message += " — set the key with --api-key or PROVEAI_API_KEY"
    elif status == 403:
        message += " — this key may not do that"
    return AgentError(message, status)


def tls_context(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """What an https:// agent's certificate is checked against: `ca_file` (PEM) alone when
    given, for a private CA, else the system's store. Names are always checked.

    Raises:
        ValueError: the file cannot be read or holds no CA certificate.
    """
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file))
    except FileNotFoundError:
        raise ValueError(f"{ca_file}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{ca_file}: not a readable PEM CA certificate ({exc})") from None


def _tls_error(base_url: str, error: aiohttp.ClientSSLError) -> AgentError:
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        cause = error.certificate_error
        reason = getattr(cause, "verify_message", None) or str(cause)
        return AgentError(
            f"cannot trust {base_url}: its certificate does not verify ({reason})"
            " — give its CA with --ca-file or PROVEAI_CA_FILE"
        )
    reason = getattr(error.os_error, "reason", None) or str(error.os_error or error)
    if reason == "WRONG_VERSION_NUMBER":
        return AgentError(
            f"TLS with {base_url} failed: it answers plain HTTP — use an http:// URL"
        )
    return AgentError(f"TLS with {base_url} failed: {str(reason).lower().replace('_', ' ')}")


def _connect_error(base_url: str, error: aiohttp.ClientConnectorError) -> AgentError:
    code = error.os_error.errno if error.os_error else None
    cause = os.strerror(code) if code and code > 0 else (error.os_error.strerror or str(error))
    return AgentError(f"cannot reach {base_url}: {cause.lower()}")


class AgentClient:
    """Reads the agent's API.

    Args:
        base_url: the agent, e.g. http://127.0.0.1:8470.
        api_key: sent as X-API-Key; None sends no key.
        timeout_s: the longest a request may take, connection included.
        ca_file: the CA (PEM) that an https:// agent's certificate must chain to; None for
            the system's store. ValueError when it cannot be loaded.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.base_url = check_url(base_url)
        self._api_key = api_key or None
        self._timeout_s = timeout_s
        https = self.base_url.startswith("https:")
        self._tls = tls_context(ca_file) if https or ca_file is not None else None
        self._session: aiohttp.ClientSession | None = None

    @property
    def has_key(self) -> bool:
        return self._api_key is not None

    async def overview(self, range: str | None = None) -> dict[str, Any]:
        """`GET /api/overview`: sources, spanmetrics and per-service numbers, with series
        over `range` (15m, 1h, 6h, 24h, 7d, 30d, 90d, 365d); the agent's 15m by default."""
        return await self._get_object("/api/overview", {"range": range} if range else None)

    async def cases(self, **params: str | int) -> dict[str, Any]:
        """`GET /api/cases` with its filters (state, class, service, q, limit, cursor)."""
        return await self._get_object("/api/cases", params)

    async def case(self, case_id: str) -> dict[str, Any]:
        """`GET /api/cases/{id}`: the whole case."""
        return await self._get_object(f"/api/cases/{quote(case_id, safe='')}")

    async def trace(self, trace_id: str) -> dict[str, Any]:
        """`GET /api/traces/{trace_id}`: the trace's spans."""
        return await self._get_object(f"/api/traces/{quote(trace_id.lower(), safe='')}")

    async def changes(self, **params: str) -> dict[str, Any]:
        """`GET /api/changes` (service, since): deploys, file and attribute changes."""
        return await self._get_object("/api/changes", params)

    async def audit(self, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        """`GET /api/audit`: audit records after sequence number `after`, oldest first."""
        return await self._get_object("/api/audit", {"after": after, "limit": limit})

    async def audit_verify(self) -> dict[str, Any]:
        """`GET /api/audit/verify`: whether the chain holds, and the first broken record."""
        return await self._get_object("/api/audit/verify")

    async def transition(
        self, case_id: str, to: str, actor: str, **fields: str
    ) -> dict[str, Any]:
        """`POST /api/cases/{id}/transition`; the case as it is now. A refusal (409) comes
        back as an AgentError whose message is the agent's reason."""
        body = {"to": to, "actor": actor, **{k: v for k, v in fields.items() if v}}
        return await self._post_object(f"/api/cases/{quote(case_id, safe='')}/transition", body)

    async def add_note(self, case_id: str, actor: str, text: str) -> dict[str, Any]:
        """`POST /api/cases/{id}/notes`; the case with the note in its timeline."""
        body = {"actor": actor, "text": text}
        return await self._post_object(f"/api/cases/{quote(case_id, safe='')}/notes", body)

    async def feedback(
        self, case_id: str, suggestion_id: str, helpful: bool, actor: str, note: str = ""
    ) -> dict[str, Any]:
        """`POST /api/cases/{id}/feedback` on one suggestion."""
        body: dict[str, Any] = {
            "suggestion_id": suggestion_id,
            "helpful": helpful,
            "actor": actor,
        }
        if note:
            body["note"] = note
        return await self._post_object(f"/api/cases/{quote(case_id, safe='')}/feedback", body)

    async def ticket(self, case_id: str, system: str, actor: str) -> dict[str, Any]:
        """`POST /api/cases/{id}/ticket` (system github or jira); the ticket made."""
        body = {"system": system, "actor": actor}
        return await self._post_object(f"/api/cases/{quote(case_id, safe='')}/ticket", body)

    async def stream(
        self, max_message_bytes: int, heartbeat_s: float = 10.0
    ) -> aiohttp.ClientWebSocketResponse:
        """Open `GET /api/stream`, the agent's websocket of live updates; the caller closes it.

        The connection pings every `heartbeat_s` so that an agent gone without a word (a lost
        SSH tunnel, a killed host) is noticed; the request timeout covers only the handshake.
        """
        try:
            return await self._client_session().ws_connect(
                self.base_url + "/api/stream",
                heartbeat=heartbeat_s,
                max_msg_size=max_message_bytes,
            )
        except aiohttp.WSServerHandshakeError as error:
            if error.status >= 400:
                raise _http_error(error.status, b"") from None
            raise AgentError(
                f"GET /api/stream: {error.status} is not a websocket", error.status
            ) from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise self._transport_error(error, "GET /api/stream") from None

    def _transport_error(self, error: Exception, what: str) -> AgentError:
        """A request that got no HTTP answer, as one line: unreachable, untrusted, dropped,
        too slow."""
        if isinstance(error, aiohttp.ClientSSLError):
            return _tls_error(self.base_url, error)
        if isinstance(error, aiohttp.ClientConnectorError):
            return _connect_error(self.base_url, error)
        if isinstance(error, aiohttp.ServerDisconnectedError):
            hint = " — if it serves HTTPS, use an https:// URL" if self._tls is None else ""
            return AgentError(f"{self.base_url} closed the connection without answering{hint}")
        if isinstance(error, TimeoutError):
            return AgentError(f"no answer from {self.base_url} within {self._timeout_s:g} s")
        return AgentError(f"{what} failed: {error or type(error).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json"}
            if self._api_key:
                headers[KEY_HEADER] = self._api_key
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                connector=aiohttp.TCPConnector(ssl=self._tls if self._tls else True),
            )
        return self._session

    async def _get_object(
        self, path: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        answer = await self._get(path, params)
        if not isinstance(answer, dict):
            raise AgentError(
                f"GET {path}: the agent answered {type(answer).__name__}, not an object"
            )
        return answer

    async def _post_object(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self._request("POST", path, body=body)
        if not isinstance(answer, dict):
            raise AgentError(
                f"POST {path}: the agent answered {type(answer).__name__}, not an object"
            )
        return answer

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return await self._request("GET", path, params=params)

    async def _request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        url = self.base_url + path
        clean = {k: str(v) for k, v in (params or {}).items() if v is not None and v != ""}
        try:
            async with self._client_session().request(
                method, url, params=clean, json=body
            ) as response:
                body_bytes = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise self._transport_error(error, f"{method} {path}") from None

        if status >= 400:
            refused = _http_error(status, body_bytes)
            logger.debug("%s %s: %s", method, url, refused.message)
            raise refused
        try:
            return json.loads(body_bytes)
        except ValueError:
            raise AgentError(f"{method} {path}: the answer is not JSON", status) from None
