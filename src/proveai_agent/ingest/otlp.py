"""Decoding of OTLP/HTTP request bodies (protobuf or JSON) into normalised `Batch` records.

The body arrives already decompressed. Protobuf bodies are parsed with the opentelemetry-proto
classes and their messages walked directly; JSON bodies are parsed with `json` and the resulting
dict walked by hand, because real senders stray from the proto3 JSON mapping. JSON accepts:

- trace and span ids as hex (the OTLP spec; any case) or base64 (the proto3 mapping; padded or
  not, standard or URL-safe alphabet), told apart by length; output is always lowercase hex;
- 64-bit integers as decimal strings or JSON numbers;
- enums (`kind`, `status.code`, `aggregationTemporality`) as integers or names, with or
  without their prefix (`SPAN_KIND_SERVER`, `SERVER`);
- field names in lowerCamelCase or snake_case.

AnyValues become plain Python values: str, int, float, bool, list (arrayValue), dict
(kvlistValue), None (empty), and bytesValue becomes a lowercase hex string.

A span or log record that breaks a rule is rejected on its own, listed in `Batch.rejected` with
its index and reason for the partial_success answer; the rest of the request is kept. A body
that cannot be decoded at all raises `DecodeError`, and nothing else escapes these functions.
A span is rejected when its trace id is not 16 bytes or all zero, its span id not 8 bytes or all
zero, its parent span id present but not 8 bytes (8 zero bytes mean no parent), its end is
before its start, a timestamp does not fit a signed 64-bit integer, a value nests deeper than
MAX_VALUE_DEPTH or, in JSON, a field of the span has the wrong type; a GenAI log record is
rejected when its time does not fit a signed 64-bit integer. A malformed container
(`resourceSpans` not an array, a span not an object, ...) fails the whole body.

Bounds against hostile input (see the constants below): attributes past MAX_ATTRIBUTES on a
span, event, log record or data point are dropped and their number recorded in the attribute
DROPPED_ATTRIBUTES_KEY; events past MAX_EVENTS are dropped and counted in the span attribute
DROPPED_EVENTS_KEY; strings (attribute values, span names, log bodies) are cut to
MAX_STRING_CHARS characters. Links are not kept.

Log records named as a GenAI event (`genai.LOG_EVENTS`, by the `event_name` field or else the
`event.name` attribute) become `SpanDetail`s and need a valid trace and span id or are rejected;
other records are counted in `Batch.ignored_records`. Metric data points of the GenAI
histograms in GENAI_METRICS become `MetricPoint`s; all others are counted in
`Batch.dropped_metrics`, as are GenAI points without a sum.

Spans and records of one resource share its `resource` dict: treat it as read-only.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from proveai_agent.ingest import genai
from proveai_agent.spans import (
    SPAN_KINDS,
    STATUS_CODES,
    Batch,
    MetricPoint,
    Rejected,
    Span,
)

if TYPE_CHECKING:
    from proveai_agent.ingest.redact import Redactor

MAX_ATTRIBUTES = 1024
"""Attributes kept per span, event, log record or data point; the rest are dropped."""
MAX_EVENTS = 1024
"""Events kept per span; the rest are dropped."""
MAX_STRING_CHARS = 64 * 1024
"""Longest string kept, in characters; longer ones are cut (bytes: this many hex digits)."""
MAX_VALUE_DEPTH = 16
"""Deepest AnyValue nesting (an attribute's value is depth 1); deeper rejects the span."""
DROPPED_ATTRIBUTES_KEY = "proveai.dropped_attributes_count"
DROPPED_EVENTS_KEY = "proveai.dropped_events_count"
UNKNOWN_SERVICE = "unknown_service"

GENAI_METRICS = frozenset(
    {
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.duration",
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.request.duration",
    }
)
"""Histogram metrics kept by decode_metrics; every other data point is counted as dropped."""

_PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
_JSON_TYPE = "application/json"
_MAX_INT64 = 2**63 - 1
_MIN_INT64 = -(2**63)
_CUMULATIVE = 2
_TEMPORALITIES = ("UNSPECIFIED", "DELTA", "CUMULATIVE")
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)
_BASE64_LENGTHS = {16: (24, 22), 8: (12, 11)}
# A lone surrogate escape is valid JSON but not valid Unicode; such a string cannot be stored.
_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_SPAN_KIND_COUNT = len(SPAN_KINDS)
_STATUS_CODE_COUNT = len(STATUS_CODES)
_HISTOGRAM_SHAPES = {"histogram": "histogram", "exponential_histogram": "exponentialHistogram"}
_RESPONSES: dict[str, tuple[Any, str, str]] = {
    "traces": (ExportTraceServiceResponse, "rejected_spans", "rejectedSpans"),
    "logs": (ExportLogsServiceResponse, "rejected_log_records", "rejectedLogRecords"),
    "metrics": (ExportMetricsServiceResponse, "rejected_data_points", "rejectedDataPoints"),
}


class _Origin(NamedTuple):
    """The resource metric points come from, or the reason every point under it is refused."""

    service: str
    instance: Any
    problem: str


class DecodeError(ValueError):
    """The body cannot be decoded; the message is readable and goes back to the client."""


class UnsupportedMediaType(ValueError):
    """The content type is neither OTLP protobuf nor OTLP JSON."""


class _Invalid(ValueError):
    """One span, record or data point breaks a rule; the message is the rejection reason."""


def decode_traces(
    body: bytes, content_type: str, content: bool = True, redactor: Redactor | None = None
) -> Batch:
    """Decode an ExportTraceServiceRequest into normalised spans and rejections.

    A `redactor` rewrites the parsed request before anything is read from it (redact.py).
    """
    return _decode(
        body,
        content_type,
        ExportTraceServiceRequest,
        partial(_traces_pb, content=content),
        partial(_traces_json, content=content),
        redactor,
    )


def decode_logs(body: bytes, content_type: str, redactor: Redactor | None = None) -> Batch:
    """Decode an ExportLogsServiceRequest into span details (GenAI events) and rejections."""
    return _decode(body, content_type, ExportLogsServiceRequest, _logs_pb, _logs_json, redactor)


def decode_metrics(body: bytes, content_type: str, redactor: Redactor | None = None) -> Batch:
    """Decode an ExportMetricsServiceRequest into GenAI metric points and a dropped count."""
    return _decode(
        body, content_type, ExportMetricsServiceRequest, _metrics_pb, _metrics_json, redactor
    )


def encode_response(
    signal: str, content_type: str, rejected: int, message: str
) -> tuple[bytes, str]:
    """The Export*ServiceResponse body for `signal`, encoded like the request.

    Args:
        signal: "traces", "logs" or "metrics".
        content_type: the request's content type; the answer uses the same encoding.
        rejected: how many spans, log records or data points were refused.
        message: the partial_success error message, shown to the sender.

    Returns:
        (body, content type). Without rejections the body is the empty message: no bytes for
        protobuf, `{}` for JSON.
    """
    media_type, is_json = _media_type(content_type)
    if signal not in _RESPONSES:
        raise ValueError(f"unknown OTLP signal {signal!r}")
    response_type, field, json_field = _RESPONSES[signal]

    if is_json:
        answer: dict[str, Any] = {}
        if rejected > 0:
            # proto3 JSON writes int64 as a decimal string.
            answer["partialSuccess"] = {json_field: str(rejected), "errorMessage": message}
        return json.dumps(answer).encode(), _JSON_TYPE

    response = response_type()
    if rejected > 0:
        setattr(response.partial_success, field, rejected)
        response.partial_success.error_message = message
    return response.SerializeToString(), media_type


def _media_type(content_type: str) -> tuple[str, bool]:
    """(media type, is JSON) of an OTLP content type, parameters ignored."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type in _PROTOBUF_TYPES:
        return media_type, False
    if media_type == _JSON_TYPE:
        return media_type, True
    raise UnsupportedMediaType(
        f"unsupported content type {content_type!r}: "
        "send application/x-protobuf or application/json"
    )


def _decode(
    body: bytes,
    content_type: str,
    request_type: Any,
    from_protobuf: Callable[[Any], Batch],
    from_json: Callable[[dict[str, Any]], Batch],
    redactor: Redactor | None = None,
) -> Batch:
    _, is_json = _media_type(content_type)
    name = request_type.DESCRIPTOR.name
    try:
        if is_json:
            document = _load_json(body)
            if redactor is not None:
                redactor.json(document)
            batch = from_json(document)
        else:
            request = request_type()
            request.ParseFromString(bytes(body))
            if redactor is not None:
                redactor.protobuf(request)
            batch = from_protobuf(request)
        batch.size_bytes = len(body)
        return batch
    except DecodeError:
        raise
    except ProtobufDecodeError as exc:
        raise DecodeError(f"body is not a valid {name} protobuf message: {exc}") from None
    except RecursionError:
        raise DecodeError(f"body nests too deeply to decode as {name}") from None
    except Exception as exc:
        raise DecodeError(f"body could not be decoded as {name}: {exc}") from exc


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"body is not valid UTF-8: {exc}") from None
    text = text.removeprefix("\ufeff")
    try:
        document = json.loads(text)
    except RecursionError:
        raise DecodeError("JSON body nests too deeply") from None
    except ValueError as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise DecodeError(f"JSON body must be an object, got {_json_type(document)}")
    if ("\\ud" in text or "\\uD" in text) and _LONE_SURROGATE.search(text):
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DecodeError("JSON body has a lone UTF-16 surrogate escape") from None
    return document


# Protobuf ---------------------------------------------------------------------------------


def _traces_pb(request: ExportTraceServiceRequest, content: bool = True) -> Batch:
    batch = Batch()
    spans = batch.spans
    for r, resource_spans in enumerate(request.resource_spans):
        resource, service, problem = _resource_pb(resource_spans)
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            for p, span in enumerate(scope_spans.spans):
                try:
                    if problem:
                        raise _Invalid(problem)
                    spans.append(_span_pb(span, service, resource, content))
                except _Invalid as exc:
                    where = f"resourceSpans[{r}].scopeSpans[{s}].spans[{p}]"
                    batch.rejected.append(Rejected(where, str(exc)))
    return batch


def _resource_pb(container: Any) -> tuple[dict[str, Any], str, str]:
    """(resource attributes, service, rejection reason for everything under it or "")."""
    try:
        resource = _attributes_pb(container.resource.attributes)
    except _Invalid as exc:
        return {}, UNKNOWN_SERVICE, f"resource: {exc}"
    return resource, _service(resource), ""


def _span_pb(span: Any, service: str, resource: dict[str, Any], content: bool = True) -> Span:
    # The common case, checked inline: ingest spends most of its time in this function.
    trace_id = span.trace_id
    span_id = span.span_id
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE_ID:
        _id_pb(trace_id, 16, "traceId")
    if len(span_id) != 8 or span_id == _ZERO_SPAN_ID:
        _id_pb(span_id, 8, "spanId")
    parent = span.parent_span_id
    parent_id = None
    if parent:
        if len(parent) != 8:
            raise _Invalid(f"parentSpanId must be 8 bytes, got {len(parent)}")
        if parent != _ZERO_SPAN_ID:
            parent_id = parent.hex()

    start = span.start_time_unix_nano
    end = span.end_time_unix_nano
    if end < start or end > _MAX_INT64:
        _check_times(start, end)

    name = span.name
    if len(name) > MAX_STRING_CHARS:
        name = name[:MAX_STRING_CHARS]
    kind = span.kind
    status = span.status
    code = status.code
    message = status.message
    if len(message) > MAX_STRING_CHARS:
        message = message[:MAX_STRING_CHARS]

    attributes = _attributes_pb(span.attributes)
    events = span.events
    result = Span(
        trace_id.hex(),
        span_id.hex(),
        parent_id,
        service,
        name,
        SPAN_KINDS[kind] if 0 <= kind < _SPAN_KIND_COUNT else SPAN_KINDS[0],
        STATUS_CODES[code] if 0 <= code < _STATUS_CODE_COUNT else STATUS_CODES[0],
        message,
        start,
        end,
        attributes=attributes,
        resource=resource,
        events=_events_pb(events, attributes) if events else [],
        raw=span.SerializeToString(),
    )
    genai.annotate(result, content=content)
    return result


def stored_span_parts(raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Attributes, events and status message of a span stored as its protobuf bytes."""
    span = PbSpan.FromString(raw)
    attributes = _attributes_pb(span.attributes)
    return attributes, _events_pb(span.events, attributes), span.status.message


def _id_pb(raw: bytes, size: int, field: str) -> str:
    if len(raw) != size:
        raise _Invalid(f"{field} must be {size} bytes, got {len(raw)}")
    if raw == (_ZERO_TRACE_ID if size == 16 else _ZERO_SPAN_ID):
        raise _Invalid(f"{field} must not be all zero")
    return raw.hex()


def _events_pb(events: Any, span_attributes: dict[str, Any]) -> list[dict[str, Any]]:
    if not events:
        return []
    if len(events) > MAX_EVENTS:
        span_attributes[DROPPED_EVENTS_KEY] = len(events) - MAX_EVENTS
        events = events[:MAX_EVENTS]
    result = []
    for i, event in enumerate(events):
        try:
            attributes = _attributes_pb(event.attributes)
        except _Invalid as exc:
            raise _Invalid(f"events[{i}]: {exc}") from None
        result.append(
            {
                "name": _cut(event.name),
                "time_ns": event.time_unix_nano,
                "attributes": attributes,
            }
        )
    return result


def _attributes_pb(pairs: Any) -> dict[str, Any]:
    """KeyValues as a dict; a non-empty string, the common case, skips WhichOneof."""
    result: dict[str, Any] = {}
    if not pairs:
        return result
    count = len(pairs)
    if count > MAX_ATTRIBUTES:
        pairs = pairs[:MAX_ATTRIBUTES]
    for pair in pairs:
        value = pair.value
        text = value.string_value
        if text:
            if len(text) > MAX_STRING_CHARS:
                text = text[:MAX_STRING_CHARS]
            result[pair.key] = text
        else:
            key = pair.key
            result[key] = _value_pb(value, 1, key)
    if count > MAX_ATTRIBUTES:
        result[DROPPED_ATTRIBUTES_KEY] = count - MAX_ATTRIBUTES
    return result


def _value_pb(value: Any, depth: int, key: str) -> Any:
    which = value.WhichOneof("value")
    if which == "string_value":
        return _cut(value.string_value)
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bool_value":
        return value.bool_value
    if which == "array_value":
        items = value.array_value.values
        if not items:
            return []
        if depth >= MAX_VALUE_DEPTH:
            raise _too_deep(key)
        texts = [item.string_value for item in items]
        if all(texts):
            return [_cut(text) for text in texts]
        return [_value_pb(item, depth + 1, key) for item in items]
    if which == "kvlist_value":
        pairs = value.kvlist_value.values
        if pairs and depth >= MAX_VALUE_DEPTH:
            raise _too_deep(key)
        return {pair.key: _value_pb(pair.value, depth + 1, key) for pair in pairs}
    if which == "bytes_value":
        return value.bytes_value[: MAX_STRING_CHARS // 2].hex()
    return None


def _logs_pb(request: ExportLogsServiceRequest) -> Batch:
    batch = Batch()
    for r, resource_logs in enumerate(request.resource_logs):
        _, service, problem = _resource_pb(resource_logs)
        for s, scope_logs in enumerate(resource_logs.scope_logs):
            for i, record in enumerate(scope_logs.log_records):
                name = record.event_name or _event_name_pb(record.attributes)
                if name not in genai.LOG_EVENTS:
                    batch.ignored_records += 1
                    continue
                try:
                    if problem:
                        raise _Invalid(problem)
                    trace_id = _id_pb(record.trace_id, 16, "traceId")
                    span_id = _id_pb(record.span_id, 8, "spanId")
                    time_ns = _record_time(
                        record.time_unix_nano or record.observed_time_unix_nano
                    )
                    attributes = _attributes_pb(record.attributes)
                    body = (
                        _value_pb(record.body, 1, "body") if record.HasField("body") else None
                    )
                except _Invalid as exc:
                    where = f"resourceLogs[{r}].scopeLogs[{s}].logRecords[{i}]"
                    batch.rejected.append(Rejected(where, str(exc)))
                    continue
                batch.details.extend(
                    genai.log_details(
                        trace_id=trace_id,
                        span_id=span_id,
                        service=service,
                        time_ns=time_ns,
                        event_name=name,
                        body=body,
                        attributes=attributes,
                    )
                )
    return batch


def _event_name_pb(pairs: Any) -> str:
    for pair in pairs:
        if pair.key == "event.name":
            return pair.value.string_value
    return ""


def _metrics_pb(request: ExportMetricsServiceRequest) -> Batch:
    batch = Batch()
    for r, resource_metrics in enumerate(request.resource_metrics):
        resource, service, problem = _resource_pb(resource_metrics)
        origin = _Origin(service, resource.get("service.instance.id"), problem)
        for s, scope_metrics in enumerate(resource_metrics.scope_metrics):
            for m, metric in enumerate(scope_metrics.metrics):
                shape = metric.WhichOneof("data")
                if shape is None:
                    continue
                data = getattr(metric, shape)
                if metric.name in GENAI_METRICS and shape in _HISTOGRAM_SHAPES:
                    where = (
                        f"resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}]"
                        f".{_HISTOGRAM_SHAPES[shape]}"
                    )
                    _histogram_pb(metric.name, data, origin, where, batch)
                else:
                    batch.dropped_metrics += len(data.data_points)
    return batch


def _histogram_pb(name: str, data: Any, origin: _Origin, where: str, batch: Batch) -> None:
    cumulative = data.aggregation_temporality == _CUMULATIVE
    for p, point in enumerate(data.data_points):
        try:
            if origin.problem:
                raise _Invalid(origin.problem)
            attributes = _attributes_pb(point.attributes)
        except _Invalid as exc:
            batch.rejected.append(Rejected(f"{where}.dataPoints[{p}]", str(exc)))
            continue
        if not point.HasField("sum"):
            batch.dropped_metrics += 1
            continue
        batch.metrics.append(
            _metric_point(
                name,
                origin,
                attributes,
                point.sum,
                point.count,
                point.time_unix_nano,
                cumulative,
            )
        )


# JSON -------------------------------------------------------------------------------------


def _traces_json(document: dict[str, Any], content: bool = True) -> Batch:
    batch = Batch()
    spans = batch.spans
    for r, resource_spans in enumerate(_array(document, "resourceSpans", "resource_spans", "")):
        where = f"resourceSpans[{r}]"
        resource, service, problem = _resource_json(resource_spans, where)
        for s, scope_spans in enumerate(
            _array(resource_spans, "scopeSpans", "scope_spans", where)
        ):
            scope_where = f"{where}.scopeSpans[{s}]"
            _object(scope_spans, scope_where)
            for p, span in enumerate(_array(scope_spans, "spans", "spans", scope_where)):
                span_where = f"{scope_where}.spans[{p}]"
                _object(span, span_where)
                try:
                    if problem:
                        raise _Invalid(problem)
                    spans.append(_span_json(span, service, resource, content))
                except _Invalid as exc:
                    batch.rejected.append(Rejected(span_where, str(exc)))
    return batch


def _resource_json(container: Any, where: str) -> tuple[dict[str, Any], str, str]:
    _object(container, where)
    resource = container.get("resource")
    if resource is None:
        return {}, UNKNOWN_SERVICE, ""
    _object(resource, f"{where}.resource")
    try:
        attributes = _attributes_json(resource.get("attributes"))
    except _Invalid as exc:
        return {}, UNKNOWN_SERVICE, f"resource: {exc}"
    return attributes, _service(attributes), ""


def _span_json(
    span: dict[str, Any], service: str, resource: dict[str, Any], content: bool = True
) -> Span:
    get = span.get
    trace_id = _id_json(get("traceId") or get("trace_id"), 16, "traceId")
    span_id = _id_json(get("spanId") or get("span_id"), 8, "spanId")
    parent = get("parentSpanId") or get("parent_span_id")
    parent_id = None
    if parent:
        parent_id = _id_json(parent, 8, "parentSpanId", parent=True) or None

    start = _uint_json(
        get("startTimeUnixNano") or get("start_time_unix_nano"), "startTimeUnixNano"
    )
    end = _uint_json(get("endTimeUnixNano") or get("end_time_unix_nano"), "endTimeUnixNano")
    _check_times(start, end)

    name = _string_json(get("name"), "name")
    kind = _enum_json(get("kind"), SPAN_KINDS, "SPAN_KIND_", "kind")
    status = get("status")
    if status is None:
        code, message = STATUS_CODES[0], ""
    elif isinstance(status, dict):
        code = _enum_json(status.get("code"), STATUS_CODES, "STATUS_CODE_", "status.code")
        message = _string_json(status.get("message"), "status.message")
    else:
        raise _Invalid(f"status must be an object, got {_json_type(status)}")

    attributes = _attributes_json(get("attributes"))
    events = _events_json(get("events"), attributes)

    result = Span(
        trace_id,
        span_id,
        parent_id,
        service,
        name,
        kind,
        code,
        message,
        start,
        end,
        attributes=attributes,
        resource=resource,
        events=events,
    )
    genai.annotate(result, content=content)
    return result


def _id_json(value: Any, size: int, field: str, *, parent: bool = False) -> str:
    """A hex or base64 id as lowercase hex; the encoding is told apart by length."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise _Invalid(f"{field} must be a string, got {_json_type(value)}")
    raw = None
    if len(value) == 2 * size:
        raw = _from_hex(value)
    elif len(value) in _BASE64_LENGTHS[size]:
        raw = _from_base64(value)
    if raw is None:
        raw = _from_hex(value) if len(value) % 2 == 0 else None
        if raw is None:
            raw = _from_base64(value)
        if raw is None:
            raise _Invalid(f"{field} is neither hex nor base64")
    if len(raw) != size:
        raise _Invalid(f"{field} must be {size} bytes, got {len(raw)}")
    if raw == (_ZERO_TRACE_ID if size == 16 else _ZERO_SPAN_ID):
        if parent:
            return ""
        raise _Invalid(f"{field} must not be all zero")
    return raw.hex()


def _from_hex(text: str) -> bytes | None:
    if not text.isascii() or not text.isalnum():
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _from_base64(text: str) -> bytes | None:
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        return None


def _events_json(items: Any, span_attributes: dict[str, Any]) -> list[dict[str, Any]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise _Invalid(f"events must be an array, got {_json_type(items)}")
    if len(items) > MAX_EVENTS:
        span_attributes[DROPPED_EVENTS_KEY] = len(items) - MAX_EVENTS
        items = items[:MAX_EVENTS]
    events = []
    for i, event in enumerate(items):
        if not isinstance(event, dict):
            raise _Invalid(f"events[{i}] must be an object, got {_json_type(event)}")
        get = event.get
        try:
            time_ns = _uint_json(get("timeUnixNano") or get("time_unix_nano"), "timeUnixNano")
            name = _string_json(get("name"), "name")
            attributes = _attributes_json(get("attributes"))
        except _Invalid as exc:
            raise _Invalid(f"events[{i}]: {exc}") from None
        events.append({"name": name, "time_ns": time_ns, "attributes": attributes})
    return events


def _attributes_json(items: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if items is None:
        return result
    if not isinstance(items, list):
        raise _Invalid(f"attributes must be an array, got {_json_type(items)}")
    count = len(items)
    if count > MAX_ATTRIBUTES:
        items = items[:MAX_ATTRIBUTES]
    for pair in items:
        key = pair.get("key") if type(pair) is dict else None
        if type(key) is not str:
            raise _Invalid("attributes must be objects with a string key")
        value = pair.get("value")
        text = value.get("stringValue") if type(value) is dict and len(value) == 1 else None
        if type(text) is str:
            result[key] = text if len(text) <= MAX_STRING_CHARS else text[:MAX_STRING_CHARS]
        else:
            result[key] = _value_json(value, 1, key)
    if count > MAX_ATTRIBUTES:
        result[DROPPED_ATTRIBUTES_KEY] = count - MAX_ATTRIBUTES
    return result


def _value_json(value: Any, depth: int, key: str) -> Any:
    """An OTLP JSON AnyValue as a plain value; an empty object is None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid(f"attribute {key!r}: value must be an AnyValue object")
    for kind, item in value.items():
        if item is None:
            continue
        if kind == "stringValue" or kind == "string_value":
            if not isinstance(item, str):
                raise _Invalid(f"attribute {key!r}: stringValue must be a string")
            return item if len(item) <= MAX_STRING_CHARS else item[:MAX_STRING_CHARS]
        if kind == "intValue" or kind == "int_value":
            return _int64_json(item, key)
        if kind == "doubleValue" or kind == "double_value":
            return _double_json(item, f"attribute {key!r}: doubleValue")
        if kind == "boolValue" or kind == "bool_value":
            if not isinstance(item, bool):
                raise _Invalid(f"attribute {key!r}: boolValue must be true or false")
            return item
        if kind == "arrayValue" or kind == "array_value":
            values = _values_json(item, key)
            if values and depth >= MAX_VALUE_DEPTH:
                raise _too_deep(key)
            return [_value_json(element, depth + 1, key) for element in values]
        if kind == "kvlistValue" or kind == "kvlist_value":
            pairs = _values_json(item, key)
            if pairs and depth >= MAX_VALUE_DEPTH:
                raise _too_deep(key)
            result = {}
            for pair in pairs:
                name = pair.get("key") if isinstance(pair, dict) else None
                if not isinstance(name, str):
                    raise _Invalid(f"attribute {key!r}: kvlistValue entries need a string key")
                result[name] = _value_json(pair.get("value"), depth + 1, key)
            return result
        if kind == "bytesValue" or kind == "bytes_value":
            raw = _from_base64(item) if isinstance(item, str) else None
            if raw is None:
                raise _Invalid(f"attribute {key!r}: bytesValue must be base64")
            return raw[: MAX_STRING_CHARS // 2].hex()
    return None


def _values_json(container: Any, key: str) -> list[Any]:
    if not isinstance(container, dict):
        raise _Invalid(f"attribute {key!r}: arrayValue and kvlistValue must be objects")
    values = container.get("values")
    if values is None:
        return []
    if not isinstance(values, list):
        raise _Invalid(f"attribute {key!r}: values must be an array")
    return values


def _logs_json(document: dict[str, Any]) -> Batch:
    batch = Batch()
    for r, resource_logs in enumerate(_array(document, "resourceLogs", "resource_logs", "")):
        where = f"resourceLogs[{r}]"
        _, service, problem = _resource_json(resource_logs, where)
        for s, scope_logs in enumerate(_array(resource_logs, "scopeLogs", "scope_logs", where)):
            scope_where = f"{where}.scopeLogs[{s}]"
            _object(scope_logs, scope_where)
            for i, record in enumerate(
                _array(scope_logs, "logRecords", "log_records", scope_where)
            ):
                record_where = f"{scope_where}.logRecords[{i}]"
                _object(record, record_where)
                try:
                    detail = _log_record_json(record, service, problem)
                except _Invalid as exc:
                    batch.rejected.append(Rejected(record_where, str(exc)))
                    continue
                if detail is None:
                    batch.ignored_records += 1
                else:
                    batch.details.extend(detail)
    return batch


def _log_record_json(record: dict[str, Any], service: str, problem: str) -> list[Any] | None:
    """The details of one log record; None when it is not a GenAI event."""
    get = record.get
    attributes_error = None
    try:
        attributes = _attributes_json(get("attributes"))
    except _Invalid as exc:
        attributes, attributes_error = {}, exc
    name = get("eventName") or get("event_name") or attributes.get("event.name")
    if not isinstance(name, str) or name not in genai.LOG_EVENTS:
        return None
    if problem:
        raise _Invalid(problem)
    if attributes_error is not None:
        raise attributes_error
    trace_id = _id_json(get("traceId") or get("trace_id"), 16, "traceId")
    span_id = _id_json(get("spanId") or get("span_id"), 8, "spanId")
    time_ns = _uint_json(get("timeUnixNano") or get("time_unix_nano"), "timeUnixNano")
    if not time_ns:
        time_ns = _uint_json(
            get("observedTimeUnixNano") or get("observed_time_unix_nano"),
            "observedTimeUnixNano",
        )
    _record_time(time_ns)
    return genai.log_details(
        trace_id=trace_id,
        span_id=span_id,
        service=service,
        time_ns=time_ns,
        event_name=name,
        body=_value_json(get("body"), 1, "body"),
        attributes=attributes,
    )


def _metrics_json(document: dict[str, Any]) -> Batch:
    batch = Batch()
    for r, resource_metrics in enumerate(
        _array(document, "resourceMetrics", "resource_metrics", "")
    ):
        where = f"resourceMetrics[{r}]"
        resource, service, problem = _resource_json(resource_metrics, where)
        origin = _Origin(service, resource.get("service.instance.id"), problem)
        for s, scope_metrics in enumerate(
            _array(resource_metrics, "scopeMetrics", "scope_metrics", where)
        ):
            scope_where = f"{where}.scopeMetrics[{s}]"
            _object(scope_metrics, scope_where)
            for m, metric in enumerate(
                _array(scope_metrics, "metrics", "metrics", scope_where)
            ):
                metric_where = f"{scope_where}.metrics[{m}]"
                _object(metric, metric_where)
                _metric_json(metric, origin, metric_where, batch)
    return batch


_METRIC_SHAPES = (
    ("histogram", "histogram"),
    ("exponentialHistogram", "exponential_histogram"),
    ("sum", "sum"),
    ("gauge", "gauge"),
    ("summary", "summary"),
)


def _metric_json(metric: dict[str, Any], origin: _Origin, where: str, batch: Batch) -> None:
    name = metric.get("name")
    for camel, snake in _METRIC_SHAPES:
        data = metric.get(camel)
        if data is None:
            data = metric.get(snake)
        if data is None:
            continue
        data_where = f"{where}.{camel}"
        _object(data, data_where)
        points = _array(data, "dataPoints", "data_points", data_where)
        if isinstance(name, str) and name in GENAI_METRICS and snake in _HISTOGRAM_SHAPES:
            _histogram_json(name, data, points, origin, data_where, batch)
        else:
            batch.dropped_metrics += len(points)
        return


def _histogram_json(
    name: str,
    data: dict[str, Any],
    points: list[Any],
    origin: _Origin,
    where: str,
    batch: Batch,
) -> None:
    temporality = data.get("aggregationTemporality", data.get("aggregation_temporality"))
    cumulative = _temporality_json(temporality, where) == _CUMULATIVE
    for p, point in enumerate(points):
        point_where = f"{where}.dataPoints[{p}]"
        _object(point, point_where)
        get = point.get
        try:
            if origin.problem:
                raise _Invalid(origin.problem)
            attributes = _attributes_json(get("attributes"))
            total = get("sum")
            total = None if total is None else _double_json(total, "sum")
            count = _uint_json(get("count"), "count")
            time_ns = _uint_json(get("timeUnixNano") or get("time_unix_nano"), "timeUnixNano")
        except _Invalid as exc:
            batch.rejected.append(Rejected(point_where, str(exc)))
            continue
        if total is None:
            batch.dropped_metrics += 1
            continue
        batch.metrics.append(
            _metric_point(name, origin, attributes, total, count, time_ns, cumulative)
        )


def _temporality_json(value: Any, where: str) -> int:
    if value is None:
        return 0
    if type(value) is int:
        return value
    if isinstance(value, str):
        name = value.upper().removeprefix("AGGREGATION_TEMPORALITY_")
        if name in _TEMPORALITIES:
            return _TEMPORALITIES.index(name)
        if len(name) <= 9 and name.isascii() and name.isdigit():
            return int(name)
    raise DecodeError(f"{where}.aggregationTemporality must be an integer or an enum name")


def _array(container: dict[str, Any], camel: str, snake: str, where: str) -> list[Any]:
    """A repeated field of a container; a wrong type fails the whole body."""
    value = container.get(camel)
    if value is None:
        value = container.get(snake)
    if value is None:
        return []
    if not isinstance(value, list):
        place = f"{where}.{camel}" if where else camel
        raise DecodeError(f"{place} must be an array, got {_json_type(value)}")
    return value


def _object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise DecodeError(f"{where} must be an object, got {_json_type(value)}")


def _uint_json(value: Any, field: str) -> int:
    """A uint64 written as a decimal string or a JSON number (absent is 0)."""
    if value is None:
        return 0
    if type(value) is int:
        number = value
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            raise _Invalid(f"{field} must be an unsigned integer, got {value[:40]!r}") from None
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise _Invalid(f"{field} must be an unsigned integer, got {_json_type(value)}")
    if number < 0:
        raise _Invalid(f"{field} must not be negative")
    return number


def _int64_json(value: Any, key: str) -> int:
    if type(value) is int:
        number = value
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            raise _Invalid(f"attribute {key!r}: intValue must be an integer") from None
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise _Invalid(f"attribute {key!r}: intValue must be an integer")
    if not _MIN_INT64 <= number <= _MAX_INT64:
        raise _Invalid(f"attribute {key!r}: intValue does not fit 64 bits")
    return number


def _double_json(value: Any, field: str) -> float:
    """A double as a JSON number or a string ("NaN", "Infinity", "-Infinity", "1.5")."""
    if isinstance(value, bool):
        raise _Invalid(f"{field} must be a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise _Invalid(f"{field} must be a number")


def _string_json(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"{field} must be a string, got {_json_type(value)}")
    return value if len(value) <= MAX_STRING_CHARS else value[:MAX_STRING_CHARS]


def _enum_json(value: Any, names: tuple[str, ...], prefix: str, field: str) -> str:
    """An enum given as its number or its name (with or without prefix); unknown is the zero."""
    if value is None:
        return names[0]
    if type(value) is int:
        return names[value] if 0 <= value < len(names) else names[0]
    if isinstance(value, str):
        name = value.upper()
        if name in names:
            return name
        if prefix + name in names:
            return prefix + name
        if len(name) <= 9 and name.isascii() and name.isdigit():
            return _enum_json(int(name), names, prefix, field)
        return names[0]
    raise _Invalid(f"{field} must be an integer or an enum name, got {_json_type(value)}")


# Shared -----------------------------------------------------------------------------------


def _check_times(start: int, end: int) -> None:
    if end < start:
        raise _Invalid(f"endTimeUnixNano {end} is before startTimeUnixNano {start}")
    if end > _MAX_INT64:
        raise _Invalid("endTimeUnixNano does not fit a signed 64-bit integer")


def _record_time(time_ns: int) -> int:
    """A log record's time, which is stored as a signed 64-bit integer like a span's."""
    if time_ns > _MAX_INT64:
        raise _Invalid("timeUnixNano does not fit a signed 64-bit integer")
    return time_ns


def _service(resource: dict[str, Any]) -> str:
    service = resource.get("service.name")
    return service if isinstance(service, str) and service else UNKNOWN_SERVICE


def _metric_point(
    name: str,
    origin: _Origin,
    attributes: dict[str, Any],
    total: float,
    count: int,
    time_ns: int,
    cumulative: bool,
) -> MetricPoint:
    """A point whose stream id is its metric, service, instance (if any) and sorted labels."""
    labels = {key: _label(value) for key, value in attributes.items()}
    identity: list[Any] = [name, origin.service, sorted(labels.items())]
    if origin.instance is not None:
        identity.append(_label(origin.instance))
    stream_id = json.dumps(identity, ensure_ascii=False, separators=(",", ":"))
    return MetricPoint(
        name, origin.service, labels, total, count, time_ns, cumulative, stream_id
    )


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) or value is None:
        return "" if value is None else str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_STRING_CHARS else text[:MAX_STRING_CHARS]


def _too_deep(key: str) -> _Invalid:
    return _Invalid(f"attribute {key!r} nests deeper than {MAX_VALUE_DEPTH} levels")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
