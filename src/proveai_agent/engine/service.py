"""The remediation engine's worker: analyses cases off the event loop and attaches the result.

A case is analysed when it opens and again, at most every `reanalyse_s`, while signals
join it. Analysis has four stages: context assembly (the case's signals, changes and the
operations of the spans its signals are about), classification (the case's class
scores), root-cause ranking (engine/rank.py, with the knowledge base's lift) and
suggestions (action, effort, confidence, similar past case, verification). A local model,
when configured, may then re-weight the ranking within `model_weight` and write the
narrative; when it times out, fails or answers out of bounds, the evidence ranking stands
and the case says so. The engine suggests; it never applies a fix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..config import EngineConfig
from . import rank
from .rank import Evidence, Scored

logger = logging.getLogger(__name__)

UNABLE = "unable to determine root cause"


class Reasoner(Protocol):
    """A local model that picks among the candidate causes and writes the narrative."""

    def choose(
        self, summary: str, candidates: list[str], timeout_s: float
    ) -> tuple[str | None, str]: ...


class Memory(Protocol):
    """The knowledge base: lifts causes that resolved similar cases."""

    def lift(self, signature: str) -> tuple[dict[str, float], dict[str, str]]: ...


Loader = Callable[[str], Awaitable[dict[str, Any] | None]]
Stages = Callable[[dict[str, Any]], Awaitable[set[str]]]
Attach = Callable[[str, dict[str, Any]], Awaitable[None]]


class Engine:
    """Queue of cases to analyse; `run()` is the worker, `submit()` asks for an analysis.

    Args:
        load: returns a case document by id.
        stages: returns the operations of the spans a case's signals are about.
        attach: stores an analysis into a case (the case service does it under its lock).
        config: timing and weights.
        reasoner: the local model, or None to rank on evidence alone.
        memory: the knowledge base, or None.
    """

    def __init__(
        self,
        load: Loader,
        stages: Stages,
        attach: Attach,
        config: EngineConfig | None = None,
        reasoner: Reasoner | None = None,
        memory: Memory | None = None,
    ) -> None:
        self.load = load
        self.stages = stages
        self.attach = attach
        self.config = config or EngineConfig()
        self.reasoner = reasoner
        self.memory = memory
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._last: dict[str, float] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    def submit(self, case_id: str) -> None:
        """Ask for an analysis of the case, unless one is already waiting."""
        if case_id in self._queued:
            return
        self._queued.add(case_id)
        self.idle.clear()
        self._queue.put_nowait(case_id)

    async def run(self) -> None:
        """Analyse submitted cases one at a time, until cancelled."""
        while True:
            case_id = await self._queue.get()
            wait = self._last.get(case_id, 0.0) + self.config.reanalyse_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._queued.discard(case_id)
            try:
                doc = await self.load(case_id)
                if doc is not None:
                    self._last[case_id] = time.monotonic()
                    await self.attach(case_id, await self.analyse(doc))
            except Exception:
                logger.exception("analysis of %s failed", case_id)
            finally:
                if self._queue.empty():
                    self.idle.set()

    async def analyse(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The hypotheses, suggestions, narrative and analysis record of one case."""
        started = time.perf_counter()
        stages = await self.stages(doc)
        return await asyncio.to_thread(self._analyse, doc, stages, started)

    def _analyse(self, doc: dict[str, Any], stages: set[str], started: float) -> dict[str, Any]:
        signature = signature_of(doc)
        lift, similar = self.memory.lift(signature) if self.memory else ({}, {})
        evidence = rank.evidence_of(doc, stages, lift)
        scored = rank.rank(evidence, self.config.kb_weight)
        model = self._consult(evidence, scored, doc)
        if model.get("choice"):
            scored = _reweight(scored, model["choice"], self.config.model_weight)
        top = scored[0] if scored else None
        unable = top is None or top.confidence < rank.MIN_CONFIDENCE
        hypotheses = [_hypothesis(item) for item in scored]
        suggestions = (
            [] if unable else _suggestions(doc, scored, similar, self.config.verify_window_s)
        )
        narrative = model.get("narrative") or _narrative(doc, scored, unable)
        return {
            "hypotheses": hypotheses,
            "remediation_suggestions": suggestions,
            "narrative": narrative,
            "analysis": {
                "root_cause": None if unable or top is None else top.cause.id,
                "confidence": top.confidence if top else 0.0,
                "unable": unable,
                "verdict": UNABLE
                if unable
                else f"root cause {top.cause.id}"
                if top
                else UNABLE,
                "missing_evidence": rank.missing_evidence(evidence, scored) if unable else [],
                "model": {k: v for k, v in model.items() if k != "narrative"},
                "duration_s": round(time.perf_counter() - started, 3),
                "signature": signature,
                "stages": sorted(stages),
            },
        }

    def _consult(
        self, evidence: Evidence, scored: list[Scored], doc: dict[str, Any]
    ) -> dict[str, Any]:
        if self.reasoner is None or not scored:
            return {"used": False}
        candidates = [item.cause.id for item in scored]
        summary = evidence_summary(doc, scored)
        try:
            choice, narrative = self.reasoner.choose(
                summary, candidates, self.config.model_timeout_s
            )
        except Exception as error:  # timeout, load failure, invalid output
            logger.info("the model did not answer for %s: %s", doc.get("id"), error)
            return {"used": True, "answered": False, "reason": str(error)[:300]}
        if choice is not None and choice not in candidates:
            return {"used": True, "answered": False, "reason": f"chose {choice!r}"}
        return {"used": True, "answered": True, "choice": choice, "narrative": narrative}


def signature_of(doc: dict[str, Any]) -> str:
    """A case's failure signature in words: its classes, signals and correlated changes."""
    scores = doc.get("class_scores") or {}
    classes = ", ".join(c for c, s in scores.items() if s >= 0.5)
    signals = "; ".join(
        f"{s['kind']} {s.get('subject') or s.get('span_name') or ''}".strip()
        for s in doc.get("signals", [])
    )
    changes = "; ".join(
        str(c.get("summary")) for c in doc.get("recent_changes", []) if c.get("correlated")
    )
    return f"{classes}. signals: {signals}. changes: {changes or 'none'}"


def evidence_summary(doc: dict[str, Any], scored: list[Scored]) -> str:
    """The compact evidence a model reasons over: a few lines, the numbers computed."""
    lines = [f"service {doc['service']}; classes {doc.get('class_scores')}"]
    for signal in doc.get("signals", [])[:6]:
        lines.append(f"signal: {signal.get('summary')}")
    for change in doc.get("recent_changes", [])[:6]:
        if change.get("service") == doc["service"]:
            lines.append(f"change: {change.get('summary')}")
    for item in scored:
        lines.append(
            f"candidate {item.cause.id}: {item.cause.hypothesis} (evidence {item.joint:.2f})"
        )
    return "\n".join(lines)


def _reweight(scored: list[Scored], choice: str, weight: float) -> list[Scored]:
    """The model's choice gains `weight` of joint score; evidence still bounds it."""
    for item in scored:
        if item.cause.id == choice:
            item.joint += weight * item.joint
    return rank.confide(scored)


def _hypothesis(item: Scored) -> dict[str, Any]:
    evidence = [f"{name} fit {value:.2f}" for name, value in item.fits.items() if value]
    evidence += [f"change: {change.get('summary')}" for change in item.matched[:3]]
    return {
        "cause_id": item.cause.id,
        "failure_class": item.failure_class,
        "hypothesis": item.cause.hypothesis,
        "confidence": item.confidence,
        "evidence": evidence,
    }


def _suggestions(
    doc: dict[str, Any], scored: list[Scored], similar: dict[str, str], window_s: int
) -> list[dict[str, Any]]:
    found = []
    for index, item in enumerate(scored):
        if item.confidence < rank.MIN_CONFIDENCE and index > 0:
            break
        found.append(
            {
                "id": f"{doc['id']}-S{index + 1}",
                "cause_id": item.cause.id,
                "hypothesis": item.cause.hypothesis,
                "action": item.cause.action,
                "effort": item.cause.effort,
                "confidence": item.confidence,
                "similar_case": similar.get(item.cause.id),
                "verification": verification(doc, item, window_s),
            }
        )
    return found


def verification(
    doc: dict[str, Any], item: Scored, window_s: int = rank.VERIFY_WINDOW_S
) -> dict[str, Any]:
    """The PromQL that shows the fix held: the strongest matching signal's own query,
    back on the healthy side of the threshold that signal fired at."""
    signals = [
        s
        for s in doc.get("signals", [])
        if s.get("kind") in item.cause.signals
        or f"{s.get('kind')}:{s.get('subject')}" in item.cause.signals
    ] or list(doc.get("signals", []))
    for signal in signals:
        evidence = signal.get("evidence") or {}
        query, threshold = evidence.get("query"), evidence.get("threshold")
        if not query or not isinstance(threshold, int | float):
            continue
        comparator = ">=" if signal.get("kind") in ("score_drop",) else "<="
        return {
            "query": query,
            "comparator": comparator,
            "threshold": threshold,
            "window_s": window_s,
        }
    return {"query": None, "comparator": None, "threshold": None, "window_s": None}


def _narrative(doc: dict[str, Any], scored: list[Scored], unable: bool) -> str:
    signals = doc.get("signals") or [{}]
    first = str(signals[0].get("summary") or "").rstrip(".")
    opening = f"{first}. " if first else ""
    if unable or not scored:
        return f"{opening}The evidence does not single out a root cause."
    top = scored[0]
    because = "; ".join(str(c.get("summary")) for c in top.matched[:2])
    after = f" It follows: {because}." if because else ""
    return (
        f"{opening}Most likely {top.cause.id} ({top.failure_class}, confidence "
        f"{top.confidence:.2f}): {top.cause.hypothesis}{after}"
    )
