"""A signal: one detector's finding, with the numbers behind it, that opens or joins a case."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class Signal:
    """What a detector saw.

    Args:
        kind: the detector, e.g. "error_spike" or "latency_regression".
        failure_class: the class it points to (ERROR_SPIKE, LATENCY_REGRESS, ...).
        trigger: how the case is said to have been triggered (anomaly_detection, ...).
        service: the service the signal is about.
        span_name: the span name it is about, or None for the whole service.
        at: when it was seen, epoch seconds (the detector's clock, not the wall clock).
        severity: critical, high, medium or low.
        summary: one readable line with the key numbers.
        evidence: the numbers (current value, baseline, threshold, the PromQL used, ...).
        subject: what inside the service and span it is about when one service can have
            several such findings at once: an evaluation name, a tool, a model.
        candidates: the failure classes the finding supports, each with a weight from 0
            to 1; empty means `failure_class` alone, at 1.
        advisory: a slow trend worth a look rather than an incident (proactive drift).
    """

    kind: str
    failure_class: str
    trigger: str
    service: str
    span_name: str | None
    at: float
    severity: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None
    candidates: dict[str, float] = field(default_factory=dict)
    advisory: bool = False

    @property
    def key(self) -> str:
        """Identity of what is wrong, so the same finding is not added twice to a case."""
        key = f"{self.kind}|{self.service}|{self.span_name or ''}"
        return f"{key}|{self.subject}" if self.subject else key

    def class_weights(self) -> dict[str, float]:
        """The classes this signal supports, with their weights."""
        return dict(self.candidates) if self.candidates else {self.failure_class: 1.0}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
