"""Where the console's live data comes from: a source that delivers the overview and open cases.

The stream source follows the agent's websocket and polls only now and then as a safety net;
the polling source asks the agent every few seconds. Anything with `run(deliver)` and
`refresh()` will do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from proveai_tui.client import AgentClient, AgentError
from proveai_tui.format import is_open

logger = logging.getLogger(__name__)

CASE_PAGE = 200
"""At most this many open cases (newest first) are listed."""

SAFETY_POLL_S = 30.0
"""Seconds between the stream source's full reads, which catch anything the stream missed."""

COALESCE_S = 0.25
"""The stream source delivers at most one snapshot per this many seconds."""

RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 5.0
"""Reconnection waits start at the first and double up to the most."""

MAX_MESSAGE_CHARS = 8 << 20
"""A stream message longer than this is ignored: no overview or case summary is that big."""

_SOCKET_LIMIT_BYTES = 4 * MAX_MESSAGE_CHARS
"""The websocket's own frame limit, above which aiohttp drops the connection: kept well over
the ignored size so that one oversized message costs that message, not the connection."""


@dataclass(frozen=True)
class Snapshot:
    """One delivery: what arrived, and why not when something did not.

    `overview` and `cases` are None when they did not arrive this time; the console then keeps
    what it showed before.
    """

    overview: dict[str, Any] | None = None
    cases: list[dict[str, Any]] | None = None
    error: AgentError | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


Deliver = Callable[[Snapshot], None]


class LiveSource(Protocol):
    """Something that keeps the console's live view current."""

    async def run(self, deliver: Deliver) -> None:
        """Deliver snapshots until cancelled; never raises for a failed request."""

    def refresh(self) -> None:
        """Ask for fresh data now rather than at the next tick."""


def open_cases(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The open cases of a `/api/cases` answer, in the agent's order."""
    items = answer.get("items")
    if not isinstance(items, list):
        raise AgentError("GET /api/cases: the answer has no items list")
    return [case for case in items if isinstance(case, dict) and is_open(case)]


class PollingSource:
    """Polls `/api/overview` and `/api/cases` every `interval_s` seconds.

    Args:
        client: the agent client.
        interval_s: seconds between polls.
    """

    def __init__(self, client: AgentClient, interval_s: float = 2.0) -> None:
        self.client = client
        self.interval_s = interval_s
        self._wake = asyncio.Event()

    def refresh(self) -> None:
        self._wake.set()

    async def run(self, deliver: Deliver) -> None:
        while True:
            deliver(await self.poll())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    async def poll(self) -> Snapshot:
        """One round trip for both answers; a failure of either is reported, not raised."""
        answers: list[Any] = await asyncio.gather(
            self.client.overview(),
            self.client.cases(state="open", limit=CASE_PAGE),
            return_exceptions=True,
        )
        overview_answer, cases_answer = answers
        overview = overview_answer if isinstance(overview_answer, dict) else None
        cases: list[dict[str, Any]] | None = None
        error: AgentError | None = None
        if isinstance(cases_answer, dict):
            try:
                cases = open_cases(cases_answer)
            except AgentError as bad:
                error = bad
        for answer in (overview_answer, cases_answer):
            if isinstance(answer, AgentError):
                error = error or answer
            elif isinstance(answer, BaseException):
                if isinstance(answer, asyncio.CancelledError):
                    raise answer
                logger.error("polling the agent failed", exc_info=answer)
                error = error or AgentError(f"unexpected failure: {answer!r}")
        return Snapshot(overview=overview, cases=cases, error=error)


def _case_number(case: dict[str, Any]) -> int:
    """The number of a CASE-N id, for the agent's newest-first order; -1 when it has none."""
    number = str(case.get("id", "")).removeprefix("CASE-")
    return int(number) if number.isdigit() else -1


class StreamSource:
    """Follows the agent's websocket (`/api/stream`) on top of one full read per connection.

    On each connection it reads the overview and the open cases once, then applies the
    stream's "case" and "overview" messages as they come. It still reads everything every
    `poll_s` seconds in case a message was lost (a slow console loses its oldest ones). Bursts
    are coalesced: at most one delivery per `coalesce_s`. When the stream closes or cannot be
    opened it delivers the error, keeps its data, and reconnects with growing waits.

    Args:
        client: the agent client.
        poll_s: seconds between safety-net reads of the whole state.
        coalesce_s: the shortest time between two deliveries.
    """

    def __init__(
        self,
        client: AgentClient,
        poll_s: float = SAFETY_POLL_S,
        coalesce_s: float = COALESCE_S,
    ) -> None:
        self.client = client
        self.poll_s = poll_s
        self.coalesce_s = coalesce_s
        self._reader = PollingSource(client, poll_s)
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._overview: dict[str, Any] | None = None
        self._cases: dict[str, dict[str, Any]] = {}
        self._cases_read = False
        self._overview_changed = False
        self._cases_changed = False
        self._error: AgentError | None = None

    def refresh(self) -> None:
        self._wake.set()

    async def run(self, deliver: Deliver) -> None:
        wait_s = RECONNECT_FIRST_S
        while True:
            try:
                socket = await self.client.stream(_SOCKET_LIMIT_BYTES)
            except AgentError as error:
                logger.debug("opening the stream failed: %s", error.message)
                deliver(await self._without_stream(error))
            else:
                opened = time.monotonic()
                try:
                    await self._follow(socket, deliver)
                finally:
                    await socket.close()
                if time.monotonic() - opened > RECONNECT_MAX_S:
                    wait_s = RECONNECT_FIRST_S
                lost = AgentError(f"lost the live stream from {self.client.base_url}")
                logger.info("%s", lost.message)
                deliver(self._take(lost, everything=True))
            await self._pause(wait_s)
            wait_s = min(wait_s * 2, RECONNECT_MAX_S)

    async def _pause(self, seconds: float) -> None:
        """Wait before the next try; a refresh asked meanwhile cuts the wait short."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _without_stream(self, error: AgentError) -> Snapshot:
        """What to deliver when the stream did not open.

        When the agent answered (a refused key, an agent without the stream) a plain read
        still brings data and the agent's own words for the refusal; when it could not be
        reached a read would only fail the same way.
        """
        if error.unreachable:
            return self._take(error)
        self._apply_read(await self._reader.poll())
        return self._take(self._error or error)

    async def _follow(self, socket: aiohttp.ClientWebSocketResponse, deliver: Deliver) -> None:
        """Deliver the full state, then the stream's changes, until the socket closes."""
        self._apply_read(await self._reader.poll())
        deliver(self._take(self._error))
        polling = asyncio.create_task(self._poll_rarely())
        flushing = asyncio.create_task(self._flush(deliver))
        try:
            await self._read(socket)
        finally:
            for task in (polling, flushing):
                task.cancel()
            await asyncio.gather(polling, flushing, return_exceptions=True)

    async def _read(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            message = await socket.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                self.apply_message(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                logger.warning("ignored a binary stream message of %d bytes", len(message.data))
            elif message.type == aiohttp.WSMsgType.ERROR:
                logger.info("the stream failed: %r", socket.exception())
                return
            elif message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                return

    async def _poll_rarely(self) -> None:
        while True:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._apply_read(await self._reader.poll())
            self._dirty.set()

    async def _flush(self, deliver: Deliver) -> None:
        """Deliver what changed at once, then nothing more for `coalesce_s`."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            deliver(self._take(self._error))
            await asyncio.sleep(self.coalesce_s)

    def _take(self, error: AgentError | None, everything: bool = False) -> Snapshot:
        """A snapshot of the parts that changed since the last one, with `error`.

        `everything` sends what is known even unchanged: when the stream is lost, the data
        was current until that moment, and the console's "last data" should say so.
        """
        overview = self._overview if self._overview_changed or everything else None
        cases = (
            self.cases() if self._cases_changed or (everything and self._cases_read) else None
        )
        self._overview_changed = self._cases_changed = False
        self._dirty.clear()
        return Snapshot(overview=overview, cases=cases, error=error)

    def _apply_read(self, snapshot: Snapshot) -> None:
        """Take a full read's answers as the whole state; its error stands until the next."""
        if snapshot.overview is not None:
            self._overview = snapshot.overview
            self._overview_changed = True
        if snapshot.cases is not None:
            self._cases = {str(case.get("id")): case for case in snapshot.cases}
            self._cases_changed = self._cases_read = True
        self._error = snapshot.error

    def cases(self) -> list[dict[str, Any]]:
        """The open cases known now, newest first as the agent lists them."""
        ordered = sorted(self._cases.values(), key=_case_number, reverse=True)
        return ordered[:CASE_PAGE]

    def apply_message(self, text: str) -> None:
        """Apply one stream message; anything malformed is logged and ignored, never raised."""
        if len(text) > MAX_MESSAGE_CHARS:
            logger.warning("ignored a stream message of %d characters", len(text))
            return
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            logger.warning("ignored a stream message that is not JSON (%d chars)", len(text))
            return
        if not isinstance(message, dict) or not isinstance(message.get("data"), dict):
            logger.warning("ignored a stream message without a data object")
            return
        kind, data = message.get("type"), message["data"]
        if kind == "case":
            self._apply_case(data)
        elif kind == "overview":
            self._apply_overview(data)
        elif kind == "change":
            logger.debug("a change arrived; no screen of the console follows changes live")
        else:
            logger.warning("ignored a stream message of unknown type %.40r", kind)

    def _apply_case(self, case: dict[str, Any]) -> None:
        case_id, state = case.get("id"), case.get("state")
        if not isinstance(case_id, str) or not isinstance(state, str):
            logger.warning("ignored a case message without a string id and state")
            return
        known = self._cases.get(case_id)
        if known is not None and _older(case, known):
            logger.debug("ignored an update of %s older than what is shown", case_id)
            return
        if is_open(case):
            self._cases[case_id] = case
        elif self._cases.pop(case_id, None) is None:
            return
        self._cases_changed = True
        self._dirty.set()

    def _apply_overview(self, overview: dict[str, Any]) -> None:
        if not isinstance(overview.get("services"), list):
            logger.warning("ignored an overview message without a services list")
            return
        self._overview = overview
        self._overview_changed = True
        self._dirty.set()


def _older(case: dict[str, Any], known: dict[str, Any]) -> bool:
    """True when `case` was updated before `known`, by the agent's RFC 3339 UTC times."""
    new, old = case.get("updated_at"), known.get("updated_at")
    return isinstance(new, str) and isinstance(old, str) and new < old
