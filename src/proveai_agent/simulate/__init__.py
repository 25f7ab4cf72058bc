"""Traffic simulator: synthetic GenAI services that send realistic traces over OTLP.

The sources (`rag`, `agents`) plan each trace as plain data with times relative to the
trace's start; the runner turns the plans into real OpenTelemetry spans anchored to the
wall clock. Planning needs nothing but the standard library, so it is deterministic for
a seed and testable without a network.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

AttributeValue = str | bool | int | float | list[str]

MS = 1_000_000
"""Nanoseconds in a millisecond."""


@dataclass(slots=True)
class PlannedEvent:
    """A span event, `at_ns` after the trace's start."""

    name: str
    at_ns: int
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


@dataclass(slots=True)
class PlannedSpan:
    """A span to emit; times are nanoseconds after the trace's start.

    `error` is the status description of a failed span, None for a span that succeeded.
    """

    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    events: list[PlannedEvent] = field(default_factory=list)
    children: list[PlannedSpan] = field(default_factory=list)
    error: str | None = None

    def walk(self) -> list[PlannedSpan]:
        """This span and all below it, parents before children."""
        spans = [self]
        for child in self.children:
            spans.extend(child.walk())
        return spans


def between_ms(rng: random.Random, low: float, high: float) -> int:
    """A duration in nanoseconds drawn uniformly between two bounds in milliseconds."""
    return int(rng.uniform(low, high) * MS)


def lognormal_ms(
    rng: random.Random, median: float, sigma: float, low: float, high: float
) -> int:
    """A right-skewed duration in nanoseconds around `median` ms, clamped to [low, high] ms."""
    value = median * math.exp(rng.gauss(0.0, sigma))
    return int(min(max(value, low), high) * MS)


def estimate_tokens(text: str) -> int:
    """Roughly the token count a BPE tokenizer gives for English text (four characters each)."""
    return max(1, math.ceil(len(text) / 4))


def random_id(rng: random.Random, length: int) -> str:
    """A lowercase alphanumeric identifier such as providers put in response ids."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choice(alphabet) for _ in range(length))


def input_messages(*messages: tuple[str, str]) -> str:
    """(role, text) pairs as the `gen_ai.input.messages` JSON of the GenAI conventions."""
    return json.dumps(
        [
            {"role": role, "parts": [{"type": "text", "content": content}]}
            for role, content in messages
        ]
    )


def output_messages(text: str, finish_reason: str = "stop") -> str:
    """The model's answer as the `gen_ai.output.messages` JSON of the GenAI conventions."""
    return json.dumps(
        [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": text}],
                "finish_reason": finish_reason,
            }
        ]
    )


def mark_failed(span: PlannedSpan, error_type: str, message: str) -> None:
    """Record a failure the way OpenTelemetry instrumentations do.

    ERROR status with the message, `error.type`, and an `exception` event at the span's end.
    """
    span.error = message
    span.attributes["error.type"] = error_type
    span.events.append(
        PlannedEvent(
            "exception",
            span.end_ns,
            {"exception.type": error_type, "exception.message": message},
        )
    )
