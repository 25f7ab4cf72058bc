"""Derives the spanmetrics-compatible series and the GenAI quality series from ingested spans.

Names and labels are those of the stack's span metrics connector (namespace
`traces.span.metrics`, unit seconds, exporter namespace `llm`), so dashboards and detectors
read the same series whether the agent or a collector derived them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from ..spans import Batch, MetricPoint
from .series import Registry

DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SPAN_LABELS = (
    "service_name",
    "span_name",
    "span_kind",
    "status_code",
    "gen_ai_request_model",
    "gen_ai_operation_name",
    "gen_ai_provider_name",
)
CLIENT_METRICS = {
    "gen_ai.client.token.usage": "llm_gen_ai_client_token_usage",
    "gen_ai.client.operation.duration": "llm_gen_ai_client_operation_duration_seconds",
    "gen_ai.server.time_to_first_token": "llm_gen_ai_server_time_to_first_token_seconds",
    "gen_ai.server.request.duration": "llm_gen_ai_server_request_duration_seconds",
}


class SpanMetrics:
    """Everything the agent exposes on /metrics about the telemetry it received."""

    def __init__(self, derive_spanmetrics: bool, cap: int, hold_s: float) -> None:
        self.derive_spanmetrics = derive_spanmetrics
        r = self.registry = Registry(cap=cap, hold_s=hold_s)
        self.calls = r.counter(
            "llm_traces_span_metrics_calls", "Spans received, by span identity", SPAN_LABELS
        )
        self.duration = r.histogram(
            "llm_traces_span_metrics_duration_seconds",
            "Span duration in seconds",
            SPAN_LABELS,
            DURATION_BUCKETS,
        )
        self.tokens = r.counter(
            "llm_gen_ai_tokens",
            "GenAI tokens reported by spans (usage missing from a span is not counted)",
            ("service_name", "gen_ai_request_model", "gen_ai_token_type"),
        )
        self.scores = r.histogram(
            "llm_gen_ai_evaluation_score",
            "GenAI evaluation scores",
            ("service_name", "gen_ai_evaluation_name"),
            SCORE_BUCKETS,
        )
        self.ttft = r.histogram(
            "llm_gen_ai_time_to_first_token_seconds",
            "Time to first token in seconds",
            ("service_name", "gen_ai_request_model"),
            TTFT_BUCKETS,
        )
        labels = ("service_name", "gen_ai_request_model", "gen_ai_token_type")
        self.client_sum = r.counter(
            "llm_gen_ai_client_metric_sum",
            "Sum of GenAI client metric points received on /v1/metrics, by metric",
            ("metric", *labels),
        )
        self.client_count = r.counter(
            "llm_gen_ai_client_metric_count",
            "Count of GenAI client metric points received on /v1/metrics, by metric",
            ("metric", *labels),
        )
        self.spans_received = r.counter(
            "proveai_ingest_spans", "Spans accepted and committed", ("service_name",)
        )
        self.rejected = r.counter(
            "proveai_ingest_rejected", "Spans, log records or points refused", ("signal",)
        )
        self.metrics_dropped = r.counter(
            "proveai_ingest_metric_points_dropped",
            "Metric data points received that are not GenAI client metrics",
            (),
        )
        self._last_cumulative: dict[str, tuple[float, int]] = {}

    def observe(self, batch: Batch, signal: str) -> None:
        """Count a committed batch."""
        if batch.rejected:
            self.rejected.inc((signal,), len(batch.rejected))
        if batch.dropped_metrics:
            self.metrics_dropped.inc((), batch.dropped_metrics)
        # Counted per label set, then added to the families once each: a batch of spans
        # mostly shares a few label sets, and the families' checks cost per call. First
        # appearances keep their order, which decides the label sets admitted under a cap.
        received: dict[tuple[str], int] = {}
        durations: dict[tuple[str, ...], list[float]] = {}
        tokens: dict[tuple[str, str, str], int] = {}
        ttfts: dict[tuple[str, str], list[float]] = {}
        derive = self.derive_spanmetrics
        for span in batch.spans:
            service = span.service
            key = (service,)
            received[key] = received.get(key, 0) + 1
            model = span.model or ""
            if derive:
                ident = (
                    service,
                    span.name,
                    span.kind,
                    span.status,
                    model,
                    span.operation or "",
                    span.provider or "",
                )
                values = durations.get(ident)
                if values is None:
                    durations[ident] = [span.duration_s]
                else:
                    values.append(span.duration_s)
            if span.input_tokens is not None:
                counted = (service, model, "input")
                tokens[counted] = tokens.get(counted, 0) + span.input_tokens
            if span.output_tokens is not None:
                counted = (service, model, "output")
                tokens[counted] = tokens.get(counted, 0) + span.output_tokens
            if span.ttft_s is not None:
                ttfts.setdefault((service, model), []).append(span.ttft_s)
            for name, value in span.scores.items():
                self.scores.observe((service, name), value)
        for key, count in received.items():
            self.spans_received.inc(key, count)
        calls, duration = self.calls, self.duration
        for labels, seconds_each in durations.items():
            calls.inc(labels, len(seconds_each))
            duration.observe_all(labels, seconds_each)
            if labels[3] != "STATUS_CODE_ERROR":
                calls.ensure((*labels[:3], "STATUS_CODE_ERROR", *labels[4:]))
        for counted, amount in tokens.items():
            self.tokens.inc(counted, amount)
        for model_key, ttft_each in ttfts.items():
            self.ttft.observe_all(model_key, ttft_each)
        for detail in batch.details:
            if detail.kind == "score":
                score = detail.data.get("value")
                if isinstance(score, int | float):
                    self.scores.observe((detail.service, str(detail.data.get("name"))), score)
        for point in batch.metrics:
            self._observe_point(point)

    def _observe_point(self, point: MetricPoint) -> None:
        name = CLIENT_METRICS.get(point.name)
        if name is None:
            return
        total, count = point.sum, point.count
        if point.cumulative:
            last = self._last_cumulative.get(point.stream_id)
            self._last_cumulative[point.stream_id] = (point.sum, point.count)
            if last is not None and point.count >= last[1] and point.sum >= last[0]:
                total, count = point.sum - last[0], point.count - last[1]
        key = (
            name,
            point.service,
            point.attributes.get("gen_ai.request.model", ""),
            point.attributes.get("gen_ai.token.type", ""),
        )
        self.client_sum.inc(key, total)
        self.client_count.inc(key, count)

    def collect(self) -> Iterator[Metric]:
        return self.registry.collect()
