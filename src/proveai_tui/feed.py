"""Where the console's live data comes from: a source that delivers the overview and open cases.

The polling source asks the agent every few seconds. A push source (the agent's websocket) can
take its place: anything with `run(deliver)` and `refresh()` will do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from proveai_tui.client import AgentClient, AgentError
from proveai_tui.format import is_open

logger = logging.getLogger(__name__)

CASE_PAGE = 200
"""At most this many open cases (newest first) are listed."""


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
