"""The case lifecycle: which transitions exist, who may make each, and what each needs.

    DETECTED → TRIAGED → INVESTIGATING → REMEDIATION_SUGGESTED → FIX_APPLIED → VERIFYING
    → RESOLVED, with VERIFYING → INVESTIGATING when the fix does not hold, any open state
    → CLOSED, and RESOLVED or CLOSED → DETECTED when the failure recurs.

An engineer triages, investigates, applies a fix, closes and reopens; the agent suggests,
verifies, resolves and reopens on recurrence. Anything else is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store.cases import OPEN_STATES as OPEN

STATES = (*OPEN, "RESOLVED", "CLOSED")
ENGINEER, AGENT = "engineer", "agent"
CLOSE_REASONS = ("false_positive", "duplicate", "wont_fix")
SEVERITIES = ("critical", "high", "medium", "low")

TRANSITIONS: dict[tuple[str, str], str] = {
    ("DETECTED", "TRIAGED"): ENGINEER,
    ("TRIAGED", "INVESTIGATING"): ENGINEER,
    ("INVESTIGATING", "REMEDIATION_SUGGESTED"): AGENT,
    ("REMEDIATION_SUGGESTED", "FIX_APPLIED"): ENGINEER,
    ("FIX_APPLIED", "VERIFYING"): AGENT,
    ("VERIFYING", "RESOLVED"): AGENT,
    ("VERIFYING", "INVESTIGATING"): AGENT,
    **{(state, "CLOSED"): ENGINEER for state in OPEN},
    ("RESOLVED", "DETECTED"): "either",
    ("CLOSED", "DETECTED"): "either",
}
"""(from, to) → who may make it: an engineer, the agent, or either."""


class Refused(Exception):
    """An illegal transition; the message says why (answered as HTTP 409)."""


@dataclass(frozen=True, slots=True)
class Request:
    """A transition as asked for, with what the target state needs."""

    to: str
    actor: str
    by: str
    note: str | None = None
    suggestion_id: str | None = None
    root_cause: str | None = None
    fix: str | None = None
    reason: str | None = None
    duplicate_of: str | None = None
    severity: str | None = None
    owner: str | None = None


def check(doc: dict[str, Any], request: Request) -> None:
    """Raise Refused with the reason when `request` may not be made on `doc` now."""
    state, to = doc["state"], request.to
    if to not in STATES:
        raise Refused(f"{to!r} is not a state; states: {', '.join(STATES)}")
    who = TRANSITIONS.get((state, to))
    if who is None:
        allowed = [t for (s, t) in TRANSITIONS if s == state]
        raise Refused(
            f"a case in {state} cannot move to {to}; it can move to {', '.join(allowed)}"
        )
    if who not in ("either", request.by):
        raise Refused(f"only the {who} moves a case from {state} to {to}")
    if to == "TRIAGED" and request.severity is not None and request.severity not in SEVERITIES:
        raise Refused(f"severity must be one of {', '.join(SEVERITIES)}")
    if to == "FIX_APPLIED":
        if not request.suggestion_id and not request.fix:
            raise Refused("a fix needs the suggestion_id it applies, or the fix as text")
        ids = {s["id"] for s in doc.get("remediation_suggestions", [])}
        if request.suggestion_id and request.suggestion_id not in ids:
            raise Refused(f"{doc['id']} has no suggestion {request.suggestion_id}")
    if to == "CLOSED":
        if request.reason not in CLOSE_REASONS:
            raise Refused(f"closing needs a reason: {', '.join(CLOSE_REASONS)}")
        if request.reason == "duplicate" and not request.duplicate_of:
            raise Refused("a duplicate needs duplicate_of, the case it duplicates")
        if request.duplicate_of == doc["id"]:
            raise Refused("a case cannot duplicate itself")


def apply(doc: dict[str, Any], request: Request, at: str) -> dict[str, Any]:
    """Make the (checked) transition on `doc`; returns its timeline event."""
    event: dict[str, Any] = {
        "at": at,
        "type": "transition",
        "from": doc["state"],
        "to": request.to,
        "actor": request.actor,
    }
    for key in ("note", "suggestion_id", "root_cause", "fix", "reason", "duplicate_of"):
        value = getattr(request, key)
        if value:
            event[key] = value
    if request.to == "TRIAGED":
        if request.severity:
            doc["severity"] = request.severity
            event["severity"] = request.severity
        if request.owner:
            doc["owner"] = request.owner
            event["owner"] = request.owner
    if request.to == "FIX_APPLIED":
        doc["fix"] = {
            "suggestion_id": request.suggestion_id,
            "fix": request.fix,
            "root_cause": request.root_cause,
            "applied_at": at,
            "actor": request.actor,
        }
    if request.to == "CLOSED":
        doc["closed"] = {"reason": request.reason, "duplicate_of": request.duplicate_of}
    if request.to == "DETECTED":
        doc["resolution"] = None
        doc.pop("closed", None)
    doc["state"] = request.to
    doc["updated_at"] = at
    doc["timeline"].append(event)
    return event
