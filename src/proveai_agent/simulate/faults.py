"""Injected faults: what goes wrong on which simulated service, and when it starts and stops.

A fault is data (`Fault`): `--inject` makes one of the two simple kinds, a scenario
(simulate/scenarios.py) brings its own effect. `FaultSchedule` turns the faults into the
`Effect` each service sees at a given moment of the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

FAULT_KINDS = ("latency", "errors")
"""`latency`: model calls take several times longer; `errors`: a share of them fail."""

POLL_INTERVAL_S = 1.0
"""How often the control file is read while a fault is active."""


@dataclass(frozen=True, slots=True)
class ModelFailure:
    """How a failed model call looks: the provider SDK's exception and the HTTP status."""

    error_type: str = "openai.InternalServerError"
    message: str = "503 Service Unavailable"
    status_code: int = 503


AttributeValue = str | bool | int | float | list[str]


@dataclass(frozen=True, slots=True)
class Effect:
    """What the active faults do to one service's traces right now.

    The defaults are a healthy service. Ratios are the share of requests affected;
    factors multiply a healthy value. `attributes` are (operation or span name, key,
    value) triples set on the matching spans, e.g. a model that changed.
    """

    latency_factor: float = 1.0
    """Model calls take this many times longer."""
    error_ratio: float = 0.0
    """Share of model calls that fail with `failure`."""
    failure: ModelFailure = field(default_factory=ModelFailure)
    retrieval_latency_factor: float = 1.0
    """Vector searches take this many times longer."""
    retrieval_miss_ratio: float = 0.0
    """Share of searches that miss the chunks that answer the question."""
    ungrounded_ratio: float = 0.0
    """Share of answers that claim what the retrieved context does not say."""
    incoherent_ratio: float = 0.0
    """Share of answers that ramble, repeat themselves or contradict themselves."""
    off_instruction_ratio: float = 0.0
    """Share of answers that ignore the prompt template's instructions (no citations,
    answers beyond the context)."""
    output_token_factor: float = 1.0
    """Model calls write this many times more tokens (and take longer to)."""
    overflow_ratio: float = 0.0
    """Share of model calls whose input fills the context window and whose answer is cut
    off (finish reason `length`)."""
    loop_repeats: int = 0
    """The planner calls web_search again with the same arguments this many more times."""
    tool_error_retries: int = 0
    """web_search fails and the planner retries it with the same arguments this many
    times before it gives up."""
    attributes: tuple[tuple[str, str, AttributeValue], ...] = ()

    def combine(self, other: Effect) -> Effect:
        """Both effects at once: factors multiply, the larger ratio or count wins."""
        failing = other if other.error_ratio > self.error_ratio else self
        values: dict[str, object] = {}
        for item in fields(Effect):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            if item.name == "failure":
                values[item.name] = failing.failure
            elif item.name == "attributes":
                values[item.name] = mine + theirs
            elif item.name.endswith("_factor"):
                values[item.name] = mine * theirs
            else:
                values[item.name] = max(mine, theirs)
        return Effect(**values)  # type: ignore[arg-type]


NO_EFFECT = Effect()


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault on one service, active from `start_s` until `stop_s` seconds into the run.

    `stop_s` None means it runs until fixed through the control file or the run ends.
    """

    kind: str
    start_s: float = 0.0
    stop_s: float | None = None
    service: str = "rag-api"
    latency_factor: float = 8.0
    error_ratio: float = 0.4
    failure: ModelFailure = field(default_factory=ModelFailure)
    custom: Effect | None = None
    """A scenario's fault (kind `scenario`): this effect, described by `label`."""
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind == "scenario":
            if self.custom is None:
                raise ValueError("a scenario fault needs its effect")
        elif self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}"
            )
        if self.start_s < 0:
            raise ValueError("a fault cannot start before the run")
        if self.stop_s is not None and self.stop_s <= self.start_s:
            raise ValueError(
                f"a fault must stop after it starts (start +{self.start_s:g}s, "
                f"stop +{self.stop_s:g}s)"
            )

    def effect(self) -> Effect:
        if self.custom is not None:
            return self.custom
        if self.kind == "latency":
            return Effect(latency_factor=self.latency_factor)
        return Effect(error_ratio=self.error_ratio, failure=self.failure)

    def title(self) -> str:
        """The fault in a few words, e.g. `errors on rag-api`."""
        return f"{self.label or self.kind} on {self.service}"

    def describe(self) -> str:
        """What the fault does, e.g. `errors on rag-api (40% of chat calls fail)`."""
        if self.custom is not None:
            return self.title()
        if self.kind == "latency":
            detail = f"chat calls {self.latency_factor:g}x slower"
        else:
            detail = f"{self.error_ratio:.0%} of chat calls fail with {self.failure.message}"
        return f"{self.kind} on {self.service} ({detail})"

    def plan(self) -> str:
        """The fault and its window, for the start line."""
        until = f" until +{self.stop_s:g}s" if self.stop_s is not None else ""
        return f"{self.describe()} from +{self.start_s:g}s{until}"


class FaultSchedule:
    """The faults of one run and their state: pending, active or stopped.

    A fault stops at its `stop_s`, on `request_fix()`, or when the control file is written
    with `fix` in it while the fault is active. A control file that already exists when
    the run starts counts only once it changes, so a file left from an earlier run stops
    nothing.
    """

    def __init__(
        self, faults: tuple[Fault, ...] | list[Fault], control_file: Path | None
    ) -> None:
        self._faults = list(faults)
        self._state = ["pending"] * len(self._faults)
        self._control_file = control_file
        self._control_seen = self._control_signature()
        self._last_poll_s: float | None = None
        self._fix_requested = False

    def request_fix(self) -> None:
        """Stop the active faults at the next update (SIGUSR1 calls this)."""
        self._fix_requested = True

    @property
    def faults(self) -> list[Fault]:
        return list(self._faults)

    def describe(self) -> str:
        """The planned faults in one phrase, `none` when there are none."""
        return "; ".join(fault.plan() for fault in self._faults) or "none"

    def update(self, elapsed_s: float) -> list[str]:
        """Start and stop faults as of `elapsed_s` into the run; returns what changed."""
        changes: list[str] = []
        for index, fault in enumerate(self._faults):
            if self._state[index] == "pending" and elapsed_s >= fault.start_s:
                self._state[index] = "active"
                changes.append(f"fault started: {fault.describe()}")
            if (
                self._state[index] == "active"
                and fault.stop_s is not None
                and elapsed_s >= fault.stop_s
            ):
                self._state[index] = "stopped"
                changes.append(f"fault stopped: {fault.title()} (--fix-at)")

        if self._fix_requested:
            self._fix_requested = False
            for index, fault in enumerate(self._faults):
                if self._state[index] == "active":
                    self._state[index] = "stopped"
                    changes.append(f"fault stopped: {fault.title()} (on request)")

        if self._poll_due(elapsed_s):
            self._last_poll_s = elapsed_s
            if self._control_says_fix():
                for index, fault in enumerate(self._faults):
                    if self._state[index] == "active":
                        self._state[index] = "stopped"
                        changes.append(f"fault stopped: {fault.title()} (control file)")
        return changes

    def effect(self, service: str) -> Effect:
        """The combined effect of the active faults on `service`."""
        effect = NO_EFFECT
        for index, fault in enumerate(self._faults):
            if self._state[index] == "active" and fault.service == service:
                effect = effect.combine(fault.effect())
        return effect

    def next_check_s(self) -> float | None:
        """When `update` next has something to do, in seconds into the run; None for never."""
        times = [
            fault.start_s
            for fault, state in zip(self._faults, self._state, strict=True)
            if state == "pending"
        ]
        times += [
            fault.stop_s
            for fault, state in zip(self._faults, self._state, strict=True)
            if state == "active" and fault.stop_s is not None
        ]
        if self._watching():
            times.append((self._last_poll_s or 0.0) + POLL_INTERVAL_S)
        return min(times) if times else None

    def _watching(self) -> bool:
        return self._control_file is not None and "active" in self._state

    def _poll_due(self, elapsed_s: float) -> bool:
        if not self._watching():
            return False
        return self._last_poll_s is None or elapsed_s - self._last_poll_s >= POLL_INTERVAL_S

    def _control_signature(self) -> tuple[int, int] | None:
        if self._control_file is None:
            return None
        try:
            stat = os.stat(self._control_file)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def _control_says_fix(self) -> bool:
        if self._control_file is None:
            return False
        signature = self._control_signature()
        if signature is None or signature == self._control_seen:
            self._control_seen = signature
            return False
        self._control_seen = signature
        try:
            text = self._control_file.read_text(errors="replace")
        except OSError:
            return False
        return "fix" in text.lower()
