"""Turns signals into cases: opens CASE-n, joins signals of a service, snapshots context."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from ..signals import Signal
from ..store.cases import CaseStore
from ..store.changes import Change, ChangeStore
from ..store.spans import SpanStore
from . import correlate, lifecycle
from .lifecycle import AGENT, Request

logger = logging.getLogger(__name__)

SEVERITY_ORDER = ("low", "medium", "high", "critical")
REOPEN_WITHIN_S = 86400
"""A resolved or closed case whose failure recurs within this long opens again."""
TITLES = {
    "error_spike": "Error spike",
    "latency_regression": "Latency regression",
    "score_drop": "Quality drop",
    "agent_loop": "Agent loop",
    "token_explosion": "Token explosion",
    "context_overflow": "Context overflow",
    "drift": "Slow drift",
}


def rfc3339(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The case as the case list shows it."""
    hypotheses = doc.get("hypotheses") or []
    top = max((h.get("confidence") or 0.0 for h in hypotheses), default=None)
    return {
        "id": doc["id"],
        "title": doc["title"],
        "state": doc["state"],
        "severity": doc["severity"],
        "advisory": doc.get("advisory", False),
        "service": doc["service"],
        "trigger": doc["trigger"],
        "failure_class": doc.get("failure_class"),
        "opened_at": doc["opened_at"],
        "updated_at": doc["updated_at"],
        "signals": len(doc.get("signals", [])),
        "top_confidence": top,
    }


def parse_case_id(case_id: str) -> int | None:
    prefix, _, number = case_id.partition("-")
    if prefix != "CASE" or not number.isdigit() or len(number) > 18:
        return None
    return int(number)


class CaseService:
    """Owns case creation and grouping; other parts hand it signals."""

    def __init__(
        self,
        cases: CaseStore,
        spans: SpanStore,
        grouping_window_s: float,
        exemplar_traces: int = 5,
        window_s: float = 300,
        changes: ChangeStore | None = None,
        change_doc: Callable[[Change], dict[str, Any]] | None = None,
    ) -> None:
        self.cases = cases
        self.spans = spans
        self.changes = changes
        if changes is not None and change_doc is None:
            raise ValueError("a change store needs change_doc, the changes' wire format")
        self.change_doc = change_doc
        self.grouping_window_s = grouping_window_s
        self.exemplar_traces = exemplar_traces
        self.window_s = window_s
        self._lock = asyncio.Lock()
        self.listeners: list[Callable[[dict[str, Any]], Awaitable[None]]] = []
        self.notify: Callable[[str, dict[str, Any]], None] | None = None
        """Told of a case opening, escalating, resolving or failing verification."""
        self.audit: Callable[[str, list[dict[str, Any]]], Awaitable[None]] | None = None
        """Records the timeline events a write adds (the audit log), before it returns."""

    def _tell(self, event: str, doc: dict[str, Any]) -> None:
        if self.notify is not None:
            self.notify(event, doc)

    async def _append(
        self, case_id: str, event: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Add one timeline event to a case: `event(doc)` returns it (and may change the
        case, or raise LookupError); raises LookupError for no such case."""
        number = parse_case_id(case_id)
        async with self._lock:
            doc = await self.cases.get(number) if number is not None else None
            if doc is None or number is None:
                raise LookupError(f"no case {case_id}")
            now = time.time()
            doc["updated_at"] = rfc3339(now)
            doc["timeline"].append({"at": doc["updated_at"], **event(doc)})
            await self._update(number, doc, now)
        for listener in self.listeners:
            await listener(doc)
        return doc

    async def add_ticket(
        self, case_id: str, actor: str, ticket: dict[str, Any] | None, error: str | None
    ) -> dict[str, Any]:
        """Store a ticket's link on a case, or the failure to create one, in its timeline."""

        def event(doc: dict[str, Any]) -> dict[str, Any]:
            if ticket is None:
                return {"type": "ticket_failed", "actor": actor, "error": error}
            doc.setdefault("tickets", []).append(ticket)
            return {"type": "ticket", "actor": actor, **ticket}

        return await self._append(case_id, event)

    async def _insert(self, doc: dict[str, Any], at: float) -> int:
        number = await self.cases.insert(doc, at)  # the case gets its id here
        if await self._record(doc):
            await self.cases.update(number, doc, at)
        return number

    async def _update(
        self, number: int, doc: dict[str, Any], at: float, last_signal_at: float | None = None
    ) -> None:
        # The audit log first: a write acknowledged is always recorded; one cut short by a
        # crash may be recorded without being stored, never the other way round.
        await self._record(doc)
        await self.cases.update(number, doc, at, last_signal_at=last_signal_at)

    async def _record(self, doc: dict[str, Any]) -> bool:
        """Hand the events not recorded yet to the audit log; the case keeps the count."""
        done = int(doc.get("audited_events", 0))
        events = doc["timeline"][done:]
        if self.audit is None or not events:
            return False
        await self.audit(doc["id"], events)
        doc["audited_events"] = len(doc["timeline"])
        return True

    async def on_signal(self, signal: Signal) -> dict[str, Any]:
        """Open a case for the signal, or add it to the service's open case in the window."""
        async with self._lock:
            found = await self.cases.open_case_for(
                signal.service, signal.at - self.grouping_window_s
            )
            if found is None:
                found = await self._recurring(signal)
            if found is None:
                doc = await self._open(signal)
            else:
                number, doc = found
                self._join(doc, signal)
                await self._assess(doc)
                await self._update(number, doc, signal.at, last_signal_at=signal.at)
        for listener in self.listeners:
            await listener(doc)
        return doc

    async def _open(self, signal: Signal) -> dict[str, Any]:
        at = rfc3339(signal.at)
        target = f" / {signal.span_name}" if signal.span_name else ""
        if signal.subject:
            target += f" ({signal.subject})"
        doc = new_case(
            title=f"{TITLES.get(signal.kind, signal.kind)} in {signal.service}{target}",
            service=signal.service,
            at=at,
            trigger=signal.trigger,
            severity=signal.severity,
            snapshot=await self._snapshot(signal),
            actor="agent",
        )
        doc["failure_class"] = signal.failure_class
        doc["advisory"] = signal.advisory
        doc["first_signal_at"] = signal.at
        doc["signals"] = [_signal_doc(signal, at)]
        doc["narrative"] = signal.summary
        doc["timeline"].insert(0, {"at": at, "type": "signal", "summary": signal.summary})
        await self._assess(doc)
        number = await self._insert(doc, signal.at)
        logger.info("case CASE-%d opened: %s", number, doc["title"])
        self._tell("opened", doc)
        return doc

    def _join(self, doc: dict[str, Any], signal: Signal) -> None:
        at = rfc3339(signal.at)
        doc["updated_at"] = at
        for existing in doc["signals"]:
            if existing.get("key") == signal.key:
                existing["last_seen"] = at
                existing["count"] = existing.get("count", 1) + 1
                existing["evidence"] = signal.evidence
                existing["summary"] = signal.summary
                existing["severity"] = signal.severity
                break
        else:
            doc["signals"].append(_signal_doc(signal, at))
            doc["timeline"].append({"at": at, "type": "signal", "summary": signal.summary})
        doc["advisory"] = all(s.get("advisory") for s in doc["signals"])
        if SEVERITY_ORDER.index(signal.severity) > SEVERITY_ORDER.index(doc["severity"]):
            doc["severity"] = signal.severity
            self._tell("escalated", doc)

    async def _recurring(self, signal: Signal) -> tuple[int, dict[str, Any]] | None:
        """A resolved or closed case of the service with this signal, opened again."""
        for number, doc in await self.cases.ended_cases_for(
            signal.service, signal.at - REOPEN_WITHIN_S
        ):
            if any(s.get("key") == signal.key for s in doc["signals"]):
                request = Request(
                    "DETECTED", "agent", AGENT, note=f"recurred: {signal.summary}"
                )
                lifecycle.apply(doc, request, rfc3339(signal.at))
                logger.info("case %s opened again: the failure recurred", doc["id"])
                return number, doc
        return None

    async def transition(self, case_id: str, request: Request) -> dict[str, Any]:
        """Move a case; raises LookupError for an unknown case and Refused for an illegal
        transition. The agent's own steps that follow at once (suggestions ready, a fix to
        verify) are made in the same update."""
        number = parse_case_id(case_id)
        async with self._lock:
            doc = await self.cases.get(number) if number is not None else None
            if doc is None or number is None:
                raise LookupError(f"no case {case_id}")
            lifecycle.check(doc, request)
            now = time.time()
            lifecycle.apply(doc, request, rfc3339(now))
            self._follow_on(doc, now)
            await self._update(number, doc, now)
        logger.info("case %s moved to %s by %s", case_id, doc["state"], request.actor)
        for listener in self.listeners:
            await listener(doc)
        return doc

    def _follow_on(self, doc: dict[str, Any], now: float) -> None:
        """The agent's transitions that follow at once from the state a case is in."""
        at = rfc3339(now)
        if doc["state"] == "INVESTIGATING" and doc.get("remediation_suggestions"):
            note = "the engine's suggestions are ready"
            lifecycle.apply(doc, Request("REMEDIATION_SUGGESTED", "agent", AGENT, note), at)
        if doc["state"] == "FIX_APPLIED":
            lifecycle.apply(doc, Request("VERIFYING", "agent", AGENT, "verifying the fix"), at)
            doc["verification"] = {"started_at": now, **chosen_verification(doc)}

    async def finish_verification(
        self, case_id: str, holds: bool, detail: str, at: float
    ) -> dict[str, Any] | None:
        """The verification's outcome: RESOLVED (with its resolution) or INVESTIGATING."""
        number = parse_case_id(case_id)
        async with self._lock:
            doc = await self.cases.get(number) if number is not None else None
            if doc is None or number is None or doc["state"] != "VERIFYING":
                return None
            stamp = rfc3339(at)
            if holds:
                lifecycle.apply(doc, Request("RESOLVED", "agent", AGENT, detail), stamp)
                opened = parse_rfc3339(doc["opened_at"])
                fix = doc.get("fix") or {}
                doc["resolution"] = {
                    "root_cause": fix.get("root_cause") or _suggested_cause(doc),
                    "fix_applied": fix.get("fix") or _suggested_action(doc),
                    "verified_at": stamp,
                    "time_to_remediate_s": round(at - opened, 3) if opened else None,
                }
            else:
                lifecycle.apply(doc, Request("INVESTIGATING", "agent", AGENT, detail), stamp)
                self._follow_on(doc, at)
            await self._update(number, doc, at)
        logger.info(
            "case %s verification %s: %s", case_id, "held" if holds else "failed", detail
        )
        self._tell("resolved" if holds else "verification_failed", doc)
        for listener in self.listeners:
            await listener(doc)
        return doc

    async def attach_analysis(self, case_id: str, analysis: dict[str, Any]) -> None:
        """Store the engine's analysis in a case, as it is now (signals may have joined)."""
        number = parse_case_id(case_id)
        if number is None:
            return
        async with self._lock:
            doc = await self.cases.get(number)
            if doc is None:
                return
            for key in ("hypotheses", "remediation_suggestions", "narrative", "analysis"):
                doc[key] = analysis[key]
            now = time.time()
            doc["updated_at"] = rfc3339(now)
            verdict = analysis["analysis"]["verdict"]
            doc["timeline"].append(
                {"at": doc["updated_at"], "type": "analysis", "summary": verdict}
            )
            # An investigation started before the engine had suggestions moves on now.
            self._follow_on(doc, now)
            await self._update(number, doc, now)
        for listener in self.listeners:
            await listener(doc)

    async def add_note(self, case_id: str, actor: str, text: str) -> dict[str, Any]:
        """An engineer's note in the case's timeline; raises LookupError for no such case."""
        return await self._append(
            case_id, lambda _: {"type": "note", "actor": actor, "text": text}
        )

    async def feedback(
        self, case_id: str, suggestion_id: str, helpful: bool, actor: str, note: str | None
    ) -> dict[str, Any]:
        """Record an engineer's verdict on a suggestion; raises LookupError for an unknown
        case or suggestion."""

        def event(doc: dict[str, Any]) -> dict[str, Any]:
            if not any(s["id"] == suggestion_id for s in doc["remediation_suggestions"]):
                raise LookupError(f"{case_id} has no suggestion {suggestion_id}")
            found = {
                "type": "feedback",
                "suggestion_id": suggestion_id,
                "helpful": helpful,
                "actor": actor,
            }
            return {**found, "note": note} if note else found

        return await self._append(case_id, event)

    async def _assess(self, doc: dict[str, Any]) -> None:
        """Class scores, leading class and recent changes, from signals and change log."""
        first = float(doc.get("first_signal_at") or 0.0)
        changes: list[Change] = []
        if self.changes is not None and first:
            changes = await self.changes.list(since=first - correlate.LOOKBACK_S, until=first)
        scores, recent = correlate.assess(
            doc["service"], doc["signals"], first, changes, self.change_doc or _no_doc
        )
        doc["class_scores"] = scores
        doc["failure_class"] = correlate.leading_class(scores, doc.get("failure_class"))
        doc["recent_changes"] = recent

    async def _snapshot(self, signal: Signal) -> dict[str, Any]:
        until_ns = int(signal.at * 1e9)
        since_ns = until_ns - int((self.window_s + 60) * 1e9)
        order = "errors" if signal.kind == "error_spike" else "slowest"
        trace_ids = await self.spans.exemplar_trace_ids(
            signal.service, since_ns, until_ns, signal.span_name, order, self.exemplar_traces
        )
        traces = [
            {"trace_id": trace_id, "spans": await self.spans.get_trace(trace_id)}
            for trace_id in trace_ids
        ]
        return context_snapshot(traces, {"signal": signal.evidence})

    async def open_manual(self, trace_id: str, title: str) -> dict[str, Any] | None:
        """Open a case by hand from a stored trace; None when the trace is not stored."""
        spans = await self.spans.get_trace(trace_id)
        if not spans:
            return None
        root = next((s for s in spans if not s["parent_span_id"]), spans[0])
        now = time.time()
        doc = new_case(
            title=title,
            service=root["service"],
            at=rfc3339(now),
            trigger="manual",
            severity="medium",
            snapshot=context_snapshot([{"trace_id": trace_id, "spans": spans}], {}),
            actor="engineer",
        )
        async with self._lock:
            number = await self._insert(doc, now)
        logger.info("case CASE-%d opened by hand from trace %s", number, trace_id)
        for listener in self.listeners:
            await listener(doc)
        return doc


def chosen_verification(doc: dict[str, Any]) -> dict[str, Any]:
    """The verification of the suggestion the fix applied, else of the first suggestion."""
    suggestions = doc.get("remediation_suggestions") or []
    chosen = (doc.get("fix") or {}).get("suggestion_id")
    picked = next((s for s in suggestions if s["id"] == chosen), None)
    picked = picked or (suggestions[0] if suggestions else None)
    if picked is None:
        return {"suggestion_id": None, "query": None}
    return {"suggestion_id": picked["id"], **picked["verification"]}


def _suggested(doc: dict[str, Any]) -> dict[str, Any]:
    chosen = (doc.get("fix") or {}).get("suggestion_id")
    suggestions = doc.get("remediation_suggestions") or []
    return next((s for s in suggestions if s["id"] == chosen), {})


def _suggested_cause(doc: dict[str, Any]) -> str | None:
    return _suggested(doc).get("cause_id")


def _suggested_action(doc: dict[str, Any]) -> str | None:
    return _suggested(doc).get("action")


def parse_rfc3339(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 time as the API writes it; None for anything else."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


def _no_doc(change: Change) -> dict[str, Any]:
    return {"id": change.id}


def _signal_doc(signal: Signal, at: str) -> dict[str, Any]:
    return {
        **signal.to_dict(),
        "key": signal.key,
        "at": at,
        "first_seen": at,
        "last_seen": at,
        "count": 1,
    }


def new_case(
    *,
    title: str,
    service: str,
    at: str,
    trigger: str,
    severity: str,
    snapshot: dict[str, Any],
    actor: str,
) -> dict[str, Any]:
    """A case document in state DETECTED, before it has an id, signals or hypotheses."""
    return {
        "id": None,
        "title": title,
        "state": "DETECTED",
        "severity": severity,
        "advisory": False,
        "service": service,
        "opened_at": at,
        "updated_at": at,
        "trigger": trigger,
        "failure_class": None,
        "class_scores": {},
        "signals": [],
        "context_snapshot": snapshot,
        "recent_changes": [],
        "hypotheses": [],
        "remediation_suggestions": [],
        "narrative": "",
        "timeline": [{"at": at, "type": "transition", "to": "DETECTED", "actor": actor}],
        "resolution": None,
        "tickets": [],
    }


def context_snapshot(
    traces: list[dict[str, Any]], infra_metrics: dict[str, Any]
) -> dict[str, Any]:
    """The case context: exemplar traces and the prompts, outputs, chunks and scores in them."""
    prompts: list[Any] = []
    outputs: list[Any] = []
    chunks: list[Any] = []
    scores: dict[str, list[float]] = {}
    for trace in traces:
        for span in trace["spans"]:
            for message in span.get("messages", []):
                target = outputs if message.get("direction") == "output" else prompts
                target.append({"span_id": span["span_id"], **message})
            for chunk in span.get("chunks", []):
                chunks.append({"span_id": span["span_id"], **chunk})
            for name, value in span.get("scores", {}).items():
                scores.setdefault(name, []).append(value)
    return {
        "traces": traces,
        "prompts": prompts[:20],
        "retrieved_chunks": chunks[:20],
        "model_outputs": outputs[:20],
        "eval_scores": {k: sum(v) / len(v) for k, v in scores.items()},
        "infra_metrics": infra_metrics,
    }
