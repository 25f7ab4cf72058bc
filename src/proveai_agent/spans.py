"""The normalised records that ingest produces and store, metrics and detectors consume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPAN_KINDS = (
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
)
STATUS_CODES = ("STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR")


@dataclass(slots=True)
class Span:
    """One span after decoding and GenAI normalisation.

    Ids are lowercase hex. GenAI fields are None when the span did not carry them:
    unknown is never reported as zero.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    service: str
    name: str
    kind: str
    status: str
    status_message: str
    start_ns: int
    end_ns: int
    model: str | None = None
    response_model: str | None = None
    operation: str | None = None
    provider: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reasons: list[str] = field(default_factory=list)
    ttft_s: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    raw: bytes | None = field(default=None, compare=False, repr=False)
    """The span as it arrived in protobuf (an OTLP `Span` message), stored as it is."""

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


@dataclass(slots=True)
class SpanDetail:
    """Content for a span that arrived apart from it, as an OTLP log record.

    `kind` is "message" (data: direction, role, parts, source) or "score"
    (data: name, value, label). The span it belongs to may arrive before or after.
    """

    trace_id: str
    span_id: str
    service: str
    time_ns: int
    kind: str
    data: dict[str, Any]


@dataclass(slots=True)
class MetricPoint:
    """A GenAI client metric data point from `/v1/metrics`, reduced to sum and count."""

    name: str
    service: str
    attributes: dict[str, str]
    sum: float
    count: int
    time_ns: int
    cumulative: bool
    stream_id: str


@dataclass(slots=True)
class Rejected:
    """A span or record that was refused, with the reason reported in partial_success."""

    index: str
    reason: str


@dataclass(slots=True)
class Batch:
    """Everything one OTLP request decoded to."""

    spans: list[Span] = field(default_factory=list)
    details: list[SpanDetail] = field(default_factory=list)
    metrics: list[MetricPoint] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    dropped_metrics: int = 0
    ignored_records: int = 0
    """Log records accepted but not stored: they carry no GenAI event."""
    size_bytes: int = 0
    """The size of the request body it was decoded from, decompressed."""
