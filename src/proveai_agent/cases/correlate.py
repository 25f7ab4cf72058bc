"""Class scores of a case and the recent changes that may have caused it.

A case's class scores come from its signals: each signal supports one or more failure
classes with a weight (`Signal.candidates`), scaled by how specific its kind is (a loop
seen in the traces says more about the cause than the latency it adds). Changes then
count as evidence: a change of the case's service shortly before the first signal, on a
topic that can cause the leading classes, is marked correlated and lifts the classes it
fits. A prompt template change before a quality or behaviour drop also supports
PROMPT_REGRESSION.

A change's topics come from its source (the file's folder and name, or the attribute
key), its summary and, for a deploy marker, its kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

from ..store.changes import Change

LOOKBACK_S = 3600.0
"""Changes up to this long before the first signal are listed with the case."""
FULL_WEIGHT_S = 900.0
"""A change this close before the first signal counts fully; older ones count less."""
OLDEST_WEIGHT = 0.3
"""The weight of a change LOOKBACK_S before the first signal."""
CORRELATED_MIN = 0.5
"""A change scoring at least this is marked correlated."""
CHANGE_LIFT = 0.15
"""How much the best-fitting change adds to a class score (before normalising)."""
PROMPT_SHARE = 0.9
"""PROMPT_REGRESSION's share of the quality or behaviour class a prompt change precedes."""
MAX_LISTED = 100

TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "template", "instruction"),
    "model": ("model", "quantis", "quantiz", "checkpoint", "snapshot"),
    "embedding": ("embed",),
    "retrieval": ("retriev", "search", "rerank", "vector", "top_k", "chunk", "hnsw"),
    "index": ("index",),
    "generation": (
        "temperature",
        "max_tokens",
        "top_p",
        "penalty",
        "sampling",
        "reasoning",
        "generation",
        "decoding",
    ),
    "tools": ("tool", "retry", "retries"),
    "context": ("history", "memory", "context window", "truncat", "conversation"),
}
AFFINITY: dict[str, dict[str, float]] = {
    "RETRIEVAL_DRIFT": {
        "retrieval": 1.0,
        "embedding": 1.0,
        "index": 1.0,
        "deploy": 0.4,
        "model": 0.3,
        "prompt": 0.3,
    },
    "HALLUCINATION": {
        "model": 1.0,
        "generation": 1.0,
        "prompt": 0.6,
        "retrieval": 0.5,
        "deploy": 0.4,
    },
    "COHERENCE_DEGRADATION": {"model": 1.0, "generation": 1.0, "prompt": 0.6, "deploy": 0.4},
    "AGENT_LOOP": {"prompt": 1.0, "tools": 1.0, "model": 0.5, "generation": 0.4, "deploy": 0.4},
    "LATENCY_REGRESS": {
        "model": 1.0,
        "retrieval": 1.0,
        "index": 0.8,
        "embedding": 0.6,
        "generation": 0.6,
        "tools": 0.5,
        "deploy": 0.5,
    },
    "CONTEXT_OVERFLOW": {
        "retrieval": 1.0,
        "context": 1.0,
        "prompt": 0.8,
        "generation": 0.5,
        "model": 0.5,
        "deploy": 0.4,
    },
    "PROMPT_REGRESSION": {"prompt": 1.0, "deploy": 0.3},
    "TOKEN_EXPLOSION": {"generation": 1.0, "model": 1.0, "prompt": 0.7, "deploy": 0.4},
    "ERROR_SPIKE": {"deploy": 1.0, "model": 0.7, "tools": 0.6, "retrieval": 0.5},
}
"""How plausibly a change on each topic causes each class."""
OTHER_AFFINITY = 0.1
"""A change on no known topic (logging, UI flags, ...) can cause any class, barely."""

SPECIFICITY: dict[str, float] = {
    "agent_loop": 1.0,
    "context_overflow": 1.0,
    "token_explosion": 0.95,
    "score_drop": 0.9,
    "latency_regression": 0.8,
    "error_spike": 0.8,
}
"""How much a signal of each kind says about the class, against its symptoms."""
DEFAULT_SPECIFICITY = 0.8
ADVISORY_FACTOR = 0.6
BEHAVIOUR_KINDS = ("score_drop", "agent_loop", "token_explosion", "context_overflow")


def topics(change: Change) -> set[str]:
    """The topics a change is about; empty when none is recognised.

    A file is about what its folder and name say; only when they say nothing known do its
    quoted changed lines count (a prompt template's text mentions chunks and context
    without being about retrieval).
    """
    if change.kind == "file":
        path = "/".join(PurePath(change.source).parts[-2:])
        head, _, quoted = change.summary.partition("): ")
        return _topics(f"{path} {head}", change.service) or _topics(quoted, change.service)
    found = _topics(f"{change.source} {change.summary}", change.service)
    if change.kind == "deploy":
        found.add("deploy")
    return found


def _topics(text: str, service: str) -> set[str]:
    # The service's own name says nothing of the change ("research-agent" is no search).
    text = text.lower().replace(service.lower(), " ")
    return {topic for topic, words in TOPIC_WORDS.items() if any(has(text, w) for w in words)}


def has(text: str, word: str) -> bool:
    """Whether a word (or a word's beginning, such as "retriev") starts a word of `text`:
    "search" is in "vector search" and "web_search", not in "research"."""
    return re.search(r"(?<![a-z0-9])" + re.escape(word), text) is not None


def affinity(failure_class: str, found: Iterable[str]) -> float:
    """How plausibly a change on these topics causes the class."""
    found = list(found)
    if not found:
        return OTHER_AFFINITY
    table = AFFINITY.get(failure_class, {})
    return max(table.get(topic, 0.0) for topic in found)


def base_scores(signals: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Class scores from the signals alone, the strongest class at 1."""
    raw: dict[str, float] = {}
    for signal in signals:
        weight = SPECIFICITY.get(signal.get("kind", ""), DEFAULT_SPECIFICITY)
        if signal.get("advisory"):
            weight *= ADVISORY_FACTOR
        candidates = signal.get("candidates") or {signal["failure_class"]: 1.0}
        for failure_class, share in candidates.items():
            raw[failure_class] = max(raw.get(failure_class, 0.0), weight * share)
    return _normalised(raw)


def time_weight(change_at: float, first_signal_at: float) -> float:
    """1 for a change shortly before the first signal, less for older ones, 0 after it."""
    before = first_signal_at - change_at
    if before < 0 or before > LOOKBACK_S:
        return 0.0
    if before <= FULL_WEIGHT_S:
        return 1.0
    share = (before - FULL_WEIGHT_S) / (LOOKBACK_S - FULL_WEIGHT_S)
    return 1.0 - share * (1.0 - OLDEST_WEIGHT)


def assess(
    service: str,
    signals: list[dict[str, Any]],
    first_signal_at: float,
    changes: Iterable[Change],
    change_doc: Any,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The case's class scores and its recent changes, each marked correlated or not.

    Args:
        service: the case's service.
        signals: the case's signal documents.
        first_signal_at: when its first signal was seen, epoch seconds.
        changes: the changes of all services since LOOKBACK_S before the first signal.
        change_doc: turns a Change into its wire format.

    Returns:
        The class scores (the strongest at 1) and the recent changes, the correlated
        ones first, most strongly correlated first, then the service's own, then those
        of other services, newest first within each.
    """
    base = base_scores(signals)
    listed: list[tuple[tuple[float, bool, float], dict[str, Any]]] = []
    lift: dict[str, float] = {}
    prompt_change = False
    for change in changes:
        found = topics(change)
        weight = time_weight(change.at, first_signal_at) if change.service == service else 0.0
        score = weight * max(
            (share * affinity(c, found) for c, share in base.items()), default=0.0
        )
        correlated = score >= CORRELATED_MIN
        doc = {
            **change_doc(change),
            "topics": sorted(found),
            "correlation": round(score, 3),
            "correlated": correlated,
        }
        rank = (score if correlated else -1.0, change.service == service, change.at)
        listed.append((rank, doc))
        if weight > 0:
            for failure_class in AFFINITY:
                fit = weight * affinity(failure_class, found)
                lift[failure_class] = max(lift.get(failure_class, 0.0), fit)
            prompt_change = prompt_change or (correlated and "prompt" in found)

    scores = {c: s + CHANGE_LIFT * lift.get(c, 0.0) for c, s in base.items()}
    behaviour = max(
        (
            base.get(c, 0.0)
            for signal in signals
            if signal.get("kind") in BEHAVIOUR_KINDS
            for c in signal.get("candidates") or {signal["failure_class"]: 1.0}
        ),
        default=0.0,
    )
    if prompt_change and behaviour > 0:
        prompt = PROMPT_SHARE * behaviour + CHANGE_LIFT * lift.get("PROMPT_REGRESSION", 0.0)
        scores["PROMPT_REGRESSION"] = max(scores.get("PROMPT_REGRESSION", 0.0), prompt)

    listed.sort(key=lambda item: item[0], reverse=True)
    return _normalised(scores), [doc for _, doc in listed[:MAX_LISTED]]


def leading_class(scores: dict[str, float], fallback: str | None) -> str | None:
    """The class with the highest score; ties go to the earliest listed."""
    if not scores:
        return fallback
    return max(scores, key=lambda c: scores[c])


def _normalised(raw: dict[str, float]) -> dict[str, float]:
    top = max(raw.values(), default=0.0)
    if top <= 0:
        return {}
    ordered = sorted(raw.items(), key=lambda item: -item[1])
    return {c: round(s / top, 3) for c, s in ordered if s > 0}
