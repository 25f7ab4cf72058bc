"""Root-cause ranking: the causes a case's classes admit, scored by the evidence in the case.

A cause's evidence score is

    0.5 × change fit + 0.25 × signal fit + 0.25 × detail fit (+ knowledge-base lift)

- change fit: the best change of the case's service in the hour before its first signal
  that the cause explains (its words in the change's text and none of its `unless`, or an
  attribute change of one of its keys in its scopes), times the change's time weight; a
  `no_change` cause scores what the best explaining change leaves, 0.6 × (1 − best);
- signal fit: 1 when one of the case's signals is of a kind the cause produces;
- detail fit: the pipeline stage of the latency or error signals (the operation of the
  span they are about) and whether an agent loop's repeats fail, where the cause names
  them; 1 where it names neither.

The joint score is the evidence score times the score of the best class the cause
explains. A hypothesis' confidence is its joint score times 0.6 + 0.4 × its margin over
the next hypothesis (0 for all but the first): clear evidence for one cause only gives high
confidence, two causes the evidence cannot tell apart give both at most 0.6 of their score.
Below `MIN_CONFIDENCE` the engine does not name a root cause; it names the evidence that
would decide.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePath
from typing import Any

from ..cases import correlate
from ..cases.correlate import has
from ..cases.service import parse_rfc3339

CATALOGUE = Path(__file__).with_name("causes.toml")
MIN_CONFIDENCE = 0.5
MIN_CLASS_SCORE = 0.3
"""Classes below this share of the leading class's score are not explored."""
VERIFY_WINDOW_S = 300
MAX_HYPOTHESES = 5


@dataclass(frozen=True, slots=True)
class Cause:
    """One root cause of the catalogue (engine/causes.toml)."""

    id: str
    classes: tuple[str, ...]
    hypothesis: str
    action: str
    effort: str
    verify: str
    words: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    signals: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    loop: str | None = None
    no_change: bool = False
    kinds: tuple[str, ...] = ()


@cache
def catalogue(path: Path = CATALOGUE) -> tuple[Cause, ...]:
    """The causes the engine can name; raises ValueError for a malformed catalogue."""
    data = tomllib.loads(path.read_text())
    causes = []
    for item in data.get("cause", []):
        try:
            causes.append(
                Cause(
                    id=item["id"],
                    classes=tuple(item["classes"]),
                    hypothesis=item["hypothesis"],
                    action=item["action"],
                    effort=item["effort"],
                    verify=item.get("verify", "signal"),
                    words=tuple(w.lower() for w in item.get("words", ())),
                    unless=tuple(w.lower() for w in item.get("unless", ())),
                    keys=tuple(item.get("keys", ())),
                    scopes=tuple(item.get("scopes", ())),
                    signals=tuple(item.get("signals", ())),
                    stages=tuple(item.get("stages", ())),
                    loop=item.get("loop"),
                    no_change=bool(item.get("no_change", False)),
                    kinds=tuple(item.get("kinds", ())),
                )
            )
        except KeyError as missing:
            raise ValueError(f"{path}: cause {item.get('id')!r} lacks {missing}") from None
    ids = [cause.id for cause in causes]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: cause ids repeat")
    return tuple(causes)


@dataclass(slots=True)
class Evidence:
    """What the ranking reads from a case, computed once."""

    service: str
    class_scores: dict[str, float]
    signals: list[dict[str, Any]]
    changes: list[tuple[float, dict[str, Any]]]
    """(time weight, change) of the case's own service, before its first signal."""
    stages: set[str]
    """Operations of the spans that latency and error signals are about."""
    loop_failing: bool | None
    kb_lift: dict[str, float] = field(default_factory=dict)
    """Cause id → up to 1: how closely resolved cases with this cause resemble this one."""


@dataclass(slots=True)
class Scored:
    cause: Cause
    failure_class: str
    joint: float
    fits: dict[str, float]
    matched: list[dict[str, Any]]
    confidence: float = 0.0


def evidence_of(
    doc: dict[str, Any], stages: set[str], kb_lift: dict[str, float] | None = None
) -> Evidence:
    """The ranking's view of a case document; `stages` come from the span store."""
    first = float(doc.get("first_signal_at") or 0.0)
    changes = []
    for change in doc.get("recent_changes", []):
        if change.get("service") != doc["service"]:
            continue
        at = _epoch(change.get("at"))
        weight = correlate.time_weight(at, first) if at is not None and first else 0.0
        if weight > 0:
            changes.append((weight, change))
    loops = [s for s in doc.get("signals", []) if s.get("kind") == "agent_loop"]
    loop_failing = None
    if loops:
        failed = sum(float(s["evidence"].get("failed") or 0) for s in loops)
        repeats = sum(float(s["evidence"].get("repeats") or 0) for s in loops)
        loop_failing = repeats > 0 and failed >= repeats / 2
    return Evidence(
        service=doc["service"],
        class_scores=dict(doc.get("class_scores") or {}),
        signals=list(doc.get("signals", [])),
        changes=changes,
        stages=stages,
        loop_failing=loop_failing,
        kb_lift=kb_lift or {},
    )


def rank(evidence: Evidence, kb_weight: float = 0.15) -> list[Scored]:
    """The causes the case's classes admit, best first, with their confidences."""
    top_class = max(evidence.class_scores.values(), default=0.0)
    explored = {
        c: s for c, s in evidence.class_scores.items() if s >= MIN_CLASS_SCORE * top_class
    }
    scored: list[Scored] = []
    explaining: list[tuple[Cause, float, list[dict[str, Any]]]] = []
    for cause in catalogue():
        classes = [c for c in cause.classes if c in explored]
        if not classes:
            continue
        change_fit, matched = _change_fit(cause, evidence)
        explaining.append((cause, change_fit, matched))
    best_change = max((fit for _, fit, _ in explaining), default=0.0)
    for cause, change_fit, matched in explaining:
        if cause.no_change:
            change_fit = 0.6 * (1.0 - best_change)
        fits = {
            "change": change_fit,
            "signal": _signal_fit(cause, evidence),
            "detail": _detail_fit(cause, evidence),
            "knowledge_base": evidence.kb_lift.get(cause.id, 0.0),
        }
        score = 0.5 * fits["change"] + 0.25 * fits["signal"] + 0.25 * fits["detail"]
        # The knowledge base may take a score past 1: a cause both the evidence and past
        # cases point to is surer than one the evidence alone points to.
        score = max(0.0, score + kb_weight * fits["knowledge_base"])
        failure_class = max(
            (c for c in cause.classes if c in explored), key=lambda c: explored[c]
        )
        joint = score * explored[failure_class]
        scored.append(Scored(cause, failure_class, joint, fits, matched))
    return confide(scored)[:MAX_HYPOTHESES]


def confide(scored: list[Scored]) -> list[Scored]:
    """Sort by joint score and set each confidence from its margin over the nearest other."""
    scored.sort(key=lambda s: -s.joint)
    for item in scored:
        others = [s.joint for s in scored[:2] if s is not item]
        nearest = others[0] if others else 0.0
        margin = max(0.0, (item.joint - nearest) / item.joint) if item.joint > 0 else 0.0
        item.confidence = round(min(1.0, item.joint * (0.6 + 0.4 * margin)), 3)
    return scored


def missing_evidence(evidence: Evidence, scored: list[Scored]) -> list[str]:
    """What would decide between the leading hypotheses, when they do not decide."""
    missing: list[str] = []
    if not evidence.changes:
        missing.append(
            f"no change of {evidence.service} was recorded in the hour before the first "
            "signal: deploy markers, or watch_files on its prompt, model and retrieval "
            "settings, would show what changed"
        )
    elif not any(s.fits["change"] >= 0.5 for s in scored):
        missing.append(
            f"none of the {len(evidence.changes)} changes of {evidence.service} before the "
            "first signal says what it changed: a deploy marker that names the component, "
            "or the file's changed lines, would decide"
        )
    if len(scored) >= 2 and scored[0].joint - scored[1].joint < 0.1 * max(
        scored[0].joint, 1e-9
    ):
        missing.append(
            f"the evidence fits {scored[0].cause.id} and {scored[1].cause.id} alike: "
            + _discriminator(scored[0].cause, scored[1].cause)
        )
    return missing or ["the evidence is weak for every cause the failure class admits"]


def _discriminator(first: Cause, second: Cause) -> str:
    if first.stages != second.stages:
        return "spans of the slow stage would tell them apart"
    if first.loop != second.loop:
        return "whether the repeated tool calls fail would tell them apart"
    return "the change history of the service's configuration would tell them apart"


def _change_text(change: dict[str, Any]) -> str:
    """What a change says, without its service's name ("research-agent" is no search)."""
    source = str(change.get("source") or "")
    if change.get("kind") == "file":
        source = "/".join(PurePath(source).parts[-2:])
    text = f"{source} {change.get('summary') or ''}".lower()
    service = str(change.get("service") or "").lower()
    return text.replace(service, " ") if service else text


def _explains(cause: Cause, change: dict[str, Any]) -> bool:
    if cause.kinds and change.get("kind") not in cause.kinds:
        return False
    text = _change_text(change)
    if change.get("kind") == "attribute" and change.get("source") in cause.keys:
        summary = str(change.get("summary") or "").lower()
        if not cause.scopes or any(f" of {scope}" in summary for scope in cause.scopes):
            return True
    if not cause.words or not any(has(text, word) for word in cause.words):
        return False
    return not any(has(text, word) for word in cause.unless)


def _change_fit(cause: Cause, evidence: Evidence) -> tuple[float, list[dict[str, Any]]]:
    best, matched = 0.0, []
    for weight, change in evidence.changes:
        if cause.no_change or not _explains(cause, change):
            continue
        matched.append(change)
        best = max(best, weight)
    return best, matched


def _signal_fit(cause: Cause, evidence: Evidence) -> float:
    for signal in evidence.signals:
        kind, subject = signal.get("kind"), signal.get("subject")
        if kind in cause.signals or f"{kind}:{subject}" in cause.signals:
            return 1.0
    return 0.0


def _detail_fit(cause: Cause, evidence: Evidence) -> float:
    checks: list[float] = []
    if cause.stages:
        checks.append(1.0 if evidence.stages & set(cause.stages) else 0.0)
    if cause.loop is not None:
        if evidence.loop_failing is None:
            checks.append(0.0)
        else:
            failing = cause.loop == "failing"
            checks.append(1.0 if evidence.loop_failing == failing else 0.0)
    return sum(checks) / len(checks) if checks else 1.0


def _epoch(text: Any) -> float | None:
    return parse_rfc3339(text) if isinstance(text, str) else None
