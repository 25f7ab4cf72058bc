"""Stops the simulated fault once the agent records that an engineer applied a fix for it.

With `simulate --fix-when-applied` the simulator plays the service that gets fixed: it
asks the agent's `GET /api/cases` once a second and, as soon as a case about a faulted
service is in FIX_APPLIED or VERIFYING, stops its faults, so that the agent's verification
then sees the failure gone, as it would after a real fix.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable

from proveai_agent.simulate.changes import AgentApi

logger = logging.getLogger(__name__)

APPLIED_STATES = ("FIX_APPLIED", "VERIFYING")
POLL_S = 1.0
TIMEOUT_S = 5.0


class FixWatcher:
    """Polls the agent in a daemon thread and calls `on_fix` once, when a fix is applied.

    Args:
        api: the agent's base URL and key (a read key is enough).
        services: the services whose cases count.
        on_fix: called from the watcher's thread.
        poll_s: seconds between polls.
    """

    def __init__(
        self,
        api: AgentApi,
        services: Iterable[str],
        on_fix: Callable[[str], None],
        poll_s: float = POLL_S,
    ) -> None:
        if api.url is None:
            raise ValueError("--fix-when-applied needs the agent's URL (--agent)")
        self.api = api
        self.services = set(services)
        self.on_fix = on_fix
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fix-watcher", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=TIMEOUT_S + self.poll_s)

    def applied_case(self) -> str | None:
        """The id of a case about one of the services with a fix applied, or None."""
        for state in APPLIED_STATES:
            query = urllib.parse.urlencode({"state": state, "limit": 100})
            request = urllib.request.Request(f"{self.api.url}/api/cases?{query}")
            if self.api.key:
                request.add_header("X-API-Key", self.api.key)
            context = self.api.tls()
            with urllib.request.urlopen(
                request, timeout=TIMEOUT_S, context=context
            ) as response:
                answer = json.load(response)
            for case in answer.get("items", []):
                if case.get("service") in self.services:
                    return str(case.get("id"))
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                case_id = self.applied_case()
            except (OSError, ValueError, AttributeError) as error:
                if not self._failing:  # one line when the agent goes away, not one a second
                    logger.warning("cannot ask the agent for applied fixes: %s", error)
                self._failing = True
                continue
            self._failing = False
            if case_id is not None:
                self.on_fix(case_id)
                return
