"""OTLP body decoding: protobuf and JSON spellings, rejections, hostile bodies, responses."""

from __future__ import annotations

import base64
import contextlib
import json
import random

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otlpfix import key_values
from proveai_agent.ingest.otlp import (
    DROPPED_ATTRIBUTES_KEY,
    DROPPED_EVENTS_KEY,
    MAX_ATTRIBUTES,
    MAX_EVENTS,
    MAX_STRING_CHARS,
    MAX_VALUE_DEPTH,
    DecodeError,
    UnsupportedMediaType,
    decode_metrics,
    decode_traces,
    encode_response,
)
from proveai_agent.spans import Span

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# The ids and times of the example span in the OTLP specification's JSON example.
TRACE_HEX = "5b8efff798038103d269b633813fc60c"
SPAN_HEX = "eee19b7ec3c1b174"
PARENT_HEX = "eee19b7ec3c1b173"
TRACE_ID = bytes.fromhex(TRACE_HEX)
SPAN_ID = bytes.fromhex(SPAN_HEX)
PARENT_ID = bytes.fromhex(PARENT_HEX)
START_NS = 1544712660000000000
END_NS = 1544712661000000000
EVENT_NS = 1544712660300000000


def pb_span(**fields: object) -> trace_pb2.Span:
    values = {
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "name": "chat",
        "start_time_unix_nano": START_NS,
        "end_time_unix_nano": END_NS,
    }
    values.update(fields)
    return trace_pb2.Span(**values)


def pb_request(*scopes: list[trace_pb2.Span], service: str | None = "rag-api") -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    if service is not None:
        resource_spans.resource.attributes.extend(key_values({"service.name": service}))
    for spans in scopes:
        resource_spans.scope_spans.add().spans.extend(spans)
    return request.SerializeToString()


def json_body(spans: list[dict[str, object]], service: str = "rag-api") -> bytes:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    return json.dumps(
        {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}
    ).encode()


# The reference span, the same content in every encoding below.

REFERENCE_ATTRIBUTES = {
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.request.temperature": 0.5,
    "stream": True,
    "gen_ai.response.finish_reasons": ["stop"],
    "app.extra": {"tenant": "acme", "tier": 2},
    "payload": b"\x00\xff",
}


def reference_pb() -> bytes:
    span = pb_span(
        parent_span_id=PARENT_ID,
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        status=trace_pb2.Status(
            code=trace_pb2.Status.STATUS_CODE_ERROR, message="rate limited"
        ),
        attributes=key_values(REFERENCE_ATTRIBUTES),
        events=[
            trace_pb2.Span.Event(
                time_unix_nano=EVENT_NS,
                name="retry",
                attributes=key_values({"attempt": 1}),
            )
        ],
    )
    return pb_request([span])


def json_attributes(int_as_string: bool) -> list[dict[str, object]]:
    def integer(value: int) -> object:
        return str(value) if int_as_string else value

    return [
        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": integer(12)}},
        {"key": "gen_ai.request.temperature", "value": {"doubleValue": 0.5}},
        {"key": "stream", "value": {"boolValue": True}},
        {
            "key": "gen_ai.response.finish_reasons",
            "value": {"arrayValue": {"values": [{"stringValue": "stop"}]}},
        },
        {
            "key": "app.extra",
            "value": {
                "kvlistValue": {
                    "values": [
                        {"key": "tenant", "value": {"stringValue": "acme"}},
                        {"key": "tier", "value": {"intValue": integer(2)}},
                    ]
                }
            },
        },
        # base64 of the bytes 00 ff
        {"key": "payload", "value": {"bytesValue": "AP8="}},
    ]


def reference_json(
    trace_id: str, span_id: str, parent_id: str, *, int_as_string: bool, enum_names: bool
) -> bytes:
    def integer(value: int) -> object:
        return str(value) if int_as_string else value

    span = {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent_id,
        "name": "chat",
        "kind": "SPAN_KIND_CLIENT" if enum_names else 3,
        "startTimeUnixNano": integer(START_NS),
        "endTimeUnixNano": integer(END_NS),
        "attributes": json_attributes(int_as_string),
        "events": [
            {
                "timeUnixNano": integer(EVENT_NS),
                "name": "retry",
                "attributes": [{"key": "attempt", "value": {"intValue": integer(1)}}],
            }
        ],
        "status": {"code": "STATUS_CODE_ERROR" if enum_names else 2, "message": "rate limited"},
    }
    return json_body([span])


EXPECTED_REFERENCE = Span(
    trace_id=TRACE_HEX,
    span_id=SPAN_HEX,
    parent_span_id=PARENT_HEX,
    service="rag-api",
    name="chat",
    kind="SPAN_KIND_CLIENT",
    status="STATUS_CODE_ERROR",
    status_message="rate limited",
    start_ns=START_NS,
    end_ns=END_NS,
    model="gpt-4o",
    input_tokens=12,
    finish_reasons=["stop"],
    attributes={
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.request.temperature": 0.5,
        "stream": True,
        "gen_ai.response.finish_reasons": ["stop"],
        "app.extra": {"tenant": "acme", "tier": 2},
        "payload": "00ff",
    },
    resource={"service.name": "rag-api"},
    events=[{"name": "retry", "time_ns": EVENT_NS, "attributes": {"attempt": 1}}],
)


def b64(raw: bytes, *, padded: bool = True, urlsafe: bool = False) -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return text if padded else text.rstrip("=")


def test_protobuf_span_decodes_to_the_normalised_record():
    batch = decode_traces(reference_pb(), PROTOBUF)

    assert batch.rejected == []
    assert batch.spans == [EXPECTED_REFERENCE]


@pytest.mark.parametrize(
    ("trace_id", "span_id", "parent_id"),
    [
        pytest.param(TRACE_HEX, SPAN_HEX, PARENT_HEX, id="lowercase-hex"),
        pytest.param(
            TRACE_HEX.upper(), SPAN_HEX.upper(), PARENT_HEX.upper(), id="uppercase-hex"
        ),
        pytest.param(b64(TRACE_ID), b64(SPAN_ID), b64(PARENT_ID), id="base64-padded"),
        pytest.param(
            b64(TRACE_ID, padded=False),
            b64(SPAN_ID, padded=False),
            b64(PARENT_ID, padded=False),
            id="base64-unpadded",
        ),
        pytest.param(
            b64(TRACE_ID, urlsafe=True),
            b64(SPAN_ID, urlsafe=True),
            b64(PARENT_ID, urlsafe=True),
            id="base64-urlsafe",
        ),
    ],
)
@pytest.mark.parametrize("int_as_string", [True, False], ids=["int64-string", "int64-number"])
@pytest.mark.parametrize("enum_names", [False, True], ids=["enum-int", "enum-name"])
def test_every_json_spelling_decodes_to_the_same_span_as_protobuf(
    trace_id, span_id, parent_id, int_as_string, enum_names
):
    body = reference_json(
        trace_id, span_id, parent_id, int_as_string=int_as_string, enum_names=enum_names
    )

    batch = decode_traces(body, JSON)

    assert batch.rejected == []
    assert batch.spans == [EXPECTED_REFERENCE]
    assert batch.spans == decode_traces(reference_pb(), PROTOBUF).spans


def test_json_snake_case_field_names_are_accepted():
    span = {
        "trace_id": TRACE_HEX,
        "span_id": SPAN_HEX,
        "parent_span_id": PARENT_HEX,
        "name": "chat",
        "kind": 3,
        "start_time_unix_nano": str(START_NS),
        "end_time_unix_nano": str(END_NS),
        "attributes": [{"key": "gen_ai.request.model", "value": {"string_value": "gpt-4o"}}],
    }
    body = json.dumps(
        {
            "resource_spans": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "service.name", "value": {"string_value": "rag-api"}}
                        ]
                    },
                    "scope_spans": [{"spans": [span]}],
                }
            ]
        }
    ).encode()

    (decoded,) = decode_traces(body, JSON).spans

    assert (decoded.trace_id, decoded.span_id, decoded.parent_span_id) == (
        TRACE_HEX,
        SPAN_HEX,
        PARENT_HEX,
    )
    assert (decoded.service, decoded.kind, decoded.start_ns) == (
        "rag-api",
        "SPAN_KIND_CLIENT",
        START_NS,
    )
    assert decoded.model == "gpt-4o"


def test_json_doubles_may_be_strings_as_in_the_proto3_mapping():
    span = {
        "traceId": TRACE_HEX,
        "spanId": SPAN_HEX,
        "attributes": [
            {"key": "a", "value": {"doubleValue": "1.5"}},
            {"key": "b", "value": {"doubleValue": 2}},
        ],
    }

    (decoded,) = decode_traces(json_body([span]), JSON).spans

    assert decoded.attributes == {"a": 1.5, "b": 2.0}
    assert isinstance(decoded.attributes["b"], float)


def test_span_without_service_name_belongs_to_unknown_service():
    (decoded,) = decode_traces(pb_request([pb_span()], service=None), PROTOBUF).spans

    assert decoded.service == "unknown_service"
    assert decoded.resource == {}


def test_unset_kind_and_status_and_a_root_span():
    (decoded,) = decode_traces(pb_request([pb_span()]), PROTOBUF).spans

    assert decoded.kind == "SPAN_KIND_UNSPECIFIED"
    assert decoded.status == "STATUS_CODE_UNSET"
    assert decoded.status_message == ""
    assert decoded.parent_span_id is None


def test_all_zero_parent_span_id_means_a_root_span():
    json_span = {"traceId": TRACE_HEX, "spanId": SPAN_HEX, "parentSpanId": "0" * 16}

    (from_pb,) = decode_traces(pb_request([pb_span(parent_span_id=bytes(8))]), PROTOBUF).spans
    (from_json,) = decode_traces(json_body([json_span]), JSON).spans

    assert from_pb.parent_span_id is None
    assert from_json.parent_span_id is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"trace_id": bytes(range(1, 16))}, "traceId must be 16 bytes, got 15"),
        ({"trace_id": bytes(16)}, "traceId must not be all zero"),
        ({"trace_id": b""}, "traceId must be 16 bytes, got 0"),
        ({"span_id": bytes(range(1, 8))}, "spanId must be 8 bytes, got 7"),
        ({"span_id": bytes(8)}, "spanId must not be all zero"),
        ({"parent_span_id": b"\x01\x02\x03"}, "parentSpanId must be 8 bytes, got 3"),
        (
            {"start_time_unix_nano": END_NS, "end_time_unix_nano": START_NS},
            f"endTimeUnixNano {START_NS} is before startTimeUnixNano {END_NS}",
        ),
    ],
)
def test_invalid_protobuf_span_is_rejected_with_index_and_reason_and_the_rest_kept(
    fields, reason
):
    good = [pb_span(span_id=bytes([i + 1]) * 8) for i in range(5)]
    bad = pb_span(**fields)
    body = pb_request(good[:1], [*good[1:4], bad, *good[4:]])

    batch = decode_traces(body, PROTOBUF)

    assert [(r.index, r.reason) for r in batch.rejected] == [
        ("resourceSpans[0].scopeSpans[1].spans[3]", reason)
    ]
    assert [s.span_id for s in batch.spans] == [f"{i + 1:02x}" * 8 for i in range(5)]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"traceId": "01" * 15}, "traceId must be 16 bytes, got 15"),
        ({"traceId": b64(bytes(range(1, 16)))}, "traceId must be 16 bytes, got 15"),
        ({"traceId": "0" * 32}, "traceId must not be all zero"),
        ({"traceId": "#" * 32}, "traceId is neither hex nor base64"),
        ({"spanId": "01" * 7}, "spanId must be 8 bytes, got 7"),
        ({"spanId": b64(bytes(8))}, "spanId must not be all zero"),
        ({"parentSpanId": "010203"}, "parentSpanId must be 8 bytes, got 3"),
        ({"traceId": 12345}, "traceId must be a string, got number"),
        (
            {"startTimeUnixNano": "soon"},
            "startTimeUnixNano must be an unsigned integer, got 'soon'",
        ),
        ({"name": ["chat"]}, "name must be a string, got array"),
        (
            {"attributes": [{"key": "n", "value": {"intValue": "twelve"}}]},
            "attribute 'n': intValue must be an integer",
        ),
    ],
)
def test_invalid_json_span_is_rejected_with_index_and_reason_and_the_rest_kept(fields, reason):
    good = {"traceId": TRACE_HEX, "spanId": SPAN_HEX}
    body = json_body([good, {**good, **fields}, good])

    batch = decode_traces(body, JSON)

    assert [(r.index, r.reason) for r in batch.rejected] == [
        ("resourceSpans[0].scopeSpans[0].spans[1]", reason)
    ]
    assert len(batch.spans) == 2


def test_timestamp_beyond_signed_64_bits_is_rejected():
    body = pb_request([pb_span(end_time_unix_nano=2**64 - 1)])

    (rejected,) = decode_traces(body, PROTOBUF).rejected

    assert rejected.reason == "endTimeUnixNano does not fit a signed 64-bit integer"


def nested_pb(levels: int) -> AnyValue:
    """An attribute value `levels` deep: arrays around one string."""
    value = AnyValue(string_value="leaf")
    for _ in range(levels - 1):
        value = AnyValue(array_value={"values": [value]})
    return value


def nested_json(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"stringValue": "leaf"}
    for _ in range(levels - 1):
        value = {"arrayValue": {"values": [value]}}
    return value


def test_value_nesting_up_to_the_limit_is_kept():
    pb_value = KeyValue(key="deep", value=nested_pb(MAX_VALUE_DEPTH))
    json_value = {"key": "deep", "value": nested_json(MAX_VALUE_DEPTH)}
    expected: object = "leaf"
    for _ in range(MAX_VALUE_DEPTH - 1):
        expected = [expected]

    (from_pb,) = decode_traces(pb_request([pb_span(attributes=[pb_value])]), PROTOBUF).spans
    json_span = {"traceId": TRACE_HEX, "spanId": SPAN_HEX, "attributes": [json_value]}
    (from_json,) = decode_traces(json_body([json_span]), JSON).spans

    assert from_pb.attributes["deep"] == expected
    assert from_json.attributes["deep"] == expected


def test_value_nested_past_the_limit_rejects_that_span_only():
    too_deep = KeyValue(key="deep", value=nested_pb(MAX_VALUE_DEPTH + 1))
    body = pb_request([pb_span(attributes=[too_deep]), pb_span(span_id=b"\x02" * 8)])
    json_span = {
        "traceId": TRACE_HEX,
        "spanId": SPAN_HEX,
        "attributes": [{"key": "deep", "value": nested_json(MAX_VALUE_DEPTH + 1)}],
    }

    for batch in (
        decode_traces(body, PROTOBUF),
        decode_traces(json_body([json_span, {"traceId": TRACE_HEX, "spanId": "02" * 8}]), JSON),
    ):
        assert [(r.index, r.reason) for r in batch.rejected] == [
            (
                "resourceSpans[0].scopeSpans[0].spans[0]",
                "attribute 'deep' nests deeper than 16 levels",
            )
        ]
        assert [s.span_id for s in batch.spans] == ["02" * 8]


def test_attributes_past_the_limit_are_dropped_and_counted():
    attributes = [KeyValue(key=f"k{i}", value=AnyValue(int_value=i)) for i in range(1100)]

    (decoded,) = decode_traces(pb_request([pb_span(attributes=attributes)]), PROTOBUF).spans

    assert MAX_ATTRIBUTES == 1024
    assert decoded.attributes[DROPPED_ATTRIBUTES_KEY] == 1100 - 1024
    assert decoded.attributes["k1023"] == 1023
    assert "k1024" not in decoded.attributes
    assert len(decoded.attributes) == 1024 + 1


def test_events_past_the_limit_are_dropped_and_counted():
    events = [trace_pb2.Span.Event(name=f"e{i}", time_unix_nano=START_NS) for i in range(1030)]

    (decoded,) = decode_traces(pb_request([pb_span(events=events)]), PROTOBUF).spans

    assert MAX_EVENTS == 1024
    assert len(decoded.events) == 1024
    assert decoded.events[-1]["name"] == "e1023"
    assert decoded.attributes[DROPPED_EVENTS_KEY] == 6


def test_long_strings_are_cut_to_64_kib():
    long_text = "x" * 70_000
    attributes = key_values({"prompt": long_text, "nested": [long_text]})
    json_span = {
        "traceId": TRACE_HEX,
        "spanId": SPAN_HEX,
        "attributes": [{"key": "prompt", "value": {"stringValue": long_text}}],
    }

    (from_pb,) = decode_traces(pb_request([pb_span(attributes=attributes)]), PROTOBUF).spans
    (from_json,) = decode_traces(json_body([json_span]), JSON).spans

    assert MAX_STRING_CHARS == 65_536
    assert from_pb.attributes["prompt"] == "x" * 65_536
    assert from_pb.attributes["nested"] == ["x" * 65_536]
    assert from_json.attributes["prompt"] == "x" * 65_536


def test_truncated_protobuf_raises_decode_error():
    body = reference_pb()

    with pytest.raises(DecodeError, match="not a valid ExportTraceServiceRequest"):
        decode_traces(body[:-5], PROTOBUF)


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        pytest.param(
            b"not a protobuf at all",
            PROTOBUF,
            "not a valid ExportTraceServiceRequest",
            id="garbage",
        ),
        pytest.param(b'{"resourceSpans": [', JSON, "not valid JSON", id="invalid-json"),
        pytest.param(
            b'{"resourceSpans": "\xff\xfe"}', JSON, "not valid UTF-8", id="invalid-utf8"
        ),
        pytest.param(
            b'{"a":' * 10_000 + b"1" + b"}" * 10_000, JSON, "nests too deeply", id="deep-json"
        ),
        pytest.param(
            b'{"resourceSpans": "spans"}',
            JSON,
            "resourceSpans must be an array, got string",
            id="resourceSpans-string",
        ),
        pytest.param(
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [42]}]}]}',
            JSON,
            r"resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[0\] must be an object, got number",
            id="span-number",
        ),
        pytest.param(
            b'{"resourceSpans": [{"resource": []}]}',
            JSON,
            r"resourceSpans\[0\]\.resource must be an object, got array",
            id="resource-array",
        ),
        pytest.param(b"[1, 2]", JSON, "must be an object, got array", id="top-level-array"),
        pytest.param(
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "\\ud800"}]}]}]}',
            JSON,
            "lone UTF-16 surrogate",
            id="lone-surrogate",
        ),
    ],
)
def test_undecodable_body_raises_decode_error(body, content_type, message):
    with pytest.raises(DecodeError, match=message):
        decode_traces(body, content_type)


def test_protobuf_with_invalid_utf8_string_raises_decode_error():
    # Span.name (field 5, length-delimited: tag 2a) holding the byte ff, inside
    # ScopeSpans.spans (tag 12), ResourceSpans.scope_spans (tag 12), resource_spans (tag 0a).
    body = bytes.fromhex("0a07120512032a01ff")

    with pytest.raises(DecodeError):
        decode_traces(body, PROTOBUF)


def test_empty_bodies_are_empty_requests():
    assert decode_traces(b"", PROTOBUF).spans == []
    assert decode_traces(b"{}", JSON).spans == []


@pytest.mark.parametrize(
    "content_type",
    ["application/x-protobuf", "application/protobuf", "Application/X-Protobuf; charset=utf-8"],
)
def test_protobuf_content_types_are_accepted(content_type):
    assert len(decode_traces(reference_pb(), content_type).spans) == 1


def test_json_content_type_with_charset_is_accepted():
    body = reference_json(TRACE_HEX, SPAN_HEX, PARENT_HEX, int_as_string=True, enum_names=False)

    assert len(decode_traces(body, "application/json; charset=utf-8").spans) == 1


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "", "application/jsonx"]
)
def test_other_content_types_are_unsupported(content_type):
    with pytest.raises(UnsupportedMediaType):
        decode_traces(b"{}", content_type)
    with pytest.raises(UnsupportedMediaType):
        encode_response("traces", content_type, 0, "")


@pytest.mark.parametrize(
    ("signal", "response_type", "field"),
    [
        ("traces", ExportTraceServiceResponse, "rejected_spans"),
        ("logs", ExportLogsServiceResponse, "rejected_log_records"),
        ("metrics", ExportMetricsServiceResponse, "rejected_data_points"),
    ],
)
def test_response_reports_partial_success_in_the_request_encoding(signal, response_type, field):
    body, content_type = encode_response(signal, PROTOBUF, 2, "2 rejected")
    from_protobuf = response_type.FromString(body)
    json_body_, json_type = encode_response(signal, JSON, 2, "2 rejected")
    from_json = json_format.Parse(json_body_.decode(), response_type())

    assert content_type == "application/x-protobuf"
    assert json_type == "application/json"
    for response in (from_protobuf, from_json):
        assert getattr(response.partial_success, field) == 2
        assert response.partial_success.error_message == "2 rejected"


def test_response_without_rejections_is_the_empty_message():
    assert encode_response("traces", PROTOBUF, 0, "") == (b"", "application/x-protobuf")
    assert encode_response("traces", "application/protobuf", 0, "") == (
        b"",
        "application/protobuf",
    )
    body, content_type = encode_response("logs", JSON, 0, "")
    assert (json.loads(body), content_type) == ({}, "application/json")


def test_span_exported_by_the_opentelemetry_sdk_decodes():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 42,
        "gen_ai.response.finish_reasons": ("stop",),
    }
    with (
        tracer.start_as_current_span("handle", kind=SpanKind.SERVER) as parent,
        tracer.start_as_current_span(
            "chat gpt-4o", kind=SpanKind.CLIENT, attributes=attributes
        ) as child,
    ):
        child.add_event("gen_ai.first_token", {"index": 0})
        child.set_status(Status(StatusCode.ERROR, "boom"))
    finished = exporter.get_finished_spans()
    body = encode_spans(finished).SerializeToString()

    batch = decode_traces(body, PROTOBUF)

    by_name = {span.name: span for span in batch.spans}
    assert batch.rejected == []
    assert set(by_name) == {"handle", "chat gpt-4o"}
    decoded_parent, decoded_child = by_name["handle"], by_name["chat gpt-4o"]
    sdk_child = next(s for s in finished if s.name == "chat gpt-4o")
    assert decoded_parent.trace_id == f"{parent.get_span_context().trace_id:032x}"
    assert decoded_parent.span_id == f"{parent.get_span_context().span_id:016x}"
    assert decoded_child.parent_span_id == decoded_parent.span_id
    assert decoded_child.trace_id == decoded_parent.trace_id
    assert decoded_parent.kind == "SPAN_KIND_SERVER"
    assert decoded_child.kind == "SPAN_KIND_CLIENT"
    assert (decoded_child.status, decoded_child.status_message) == ("STATUS_CODE_ERROR", "boom")
    assert (decoded_child.start_ns, decoded_child.end_ns) == (
        sdk_child.start_time,
        sdk_child.end_time,
    )
    assert decoded_child.service == "checkout"
    assert decoded_child.resource["telemetry.sdk.language"] == "python"
    assert (decoded_child.operation, decoded_child.model) == ("chat", "gpt-4o")
    assert decoded_child.input_tokens == 42
    assert decoded_child.output_tokens is None
    assert decoded_child.finish_reasons == ["stop"]
    (event,) = sdk_child.events
    assert decoded_child.events == [
        {"name": "gen_ai.first_token", "time_ns": event.timestamp, "attributes": {"index": 0}}
    ]
    assert decoded_child.ttft_s == (event.timestamp - sdk_child.start_time) / 1e9


# Metrics ------------------------------------------------------------------------------------


def metrics_request() -> bytes:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(key_values({"service.name": "rag-api"}))
    metrics = resource_metrics.scope_metrics.add().metrics
    tokens = metrics.add(name="gen_ai.client.token.usage", unit="{token}")
    tokens.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    for token_type, total, count in (("input", 1200.0, 10), ("output", 300.0, 10)):
        tokens.histogram.data_points.add(
            attributes=key_values(
                {"gen_ai.token.type": token_type, "gen_ai.request.model": "gpt-4o"}
            ),
            sum=total,
            count=count,
            time_unix_nano=END_NS,
        )
    duration = metrics.add(name="gen_ai.client.operation.duration", unit="s")
    duration.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    duration.histogram.data_points.add(sum=4.5, count=3, time_unix_nano=END_NS)
    other = metrics.add(name="http.server.request.duration")
    other.histogram.data_points.add(sum=1.0, count=1)
    other.histogram.data_points.add(sum=2.0, count=2)
    gauge = metrics.add(name="process.cpu.utilization")
    gauge.gauge.data_points.add(as_double=0.5)
    return request.SerializeToString()


def metrics_json() -> bytes:
    def histogram(temporality: object, points: list[dict[str, object]]) -> dict[str, object]:
        return {"aggregationTemporality": temporality, "dataPoints": points}

    def point(attributes: dict[str, str], total: float, count: int) -> dict[str, object]:
        return {
            "attributes": [
                {"key": k, "value": {"stringValue": v}} for k, v in attributes.items()
            ],
            "sum": total,
            "count": str(count),
            "timeUnixNano": str(END_NS),
        }

    model = {"gen_ai.request.model": "gpt-4o"}
    metrics = [
        {
            "name": "gen_ai.client.token.usage",
            "histogram": histogram(
                "AGGREGATION_TEMPORALITY_CUMULATIVE",
                [
                    point({"gen_ai.token.type": "input", **model}, 1200.0, 10),
                    point({"gen_ai.token.type": "output", **model}, 300.0, 10),
                ],
            ),
        },
        {
            "name": "gen_ai.client.operation.duration",
            "histogram": histogram(1, [point({}, 4.5, 3)]),
        },
        {
            "name": "http.server.request.duration",
            "histogram": histogram(2, [{"sum": 1.0, "count": 1}, {"sum": 2.0, "count": "2"}]),
        },
        {"name": "process.cpu.utilization", "gauge": {"dataPoints": [{"asDouble": 0.5}]}},
    ]
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "rag-api"}}]}
    return json.dumps(
        {"resourceMetrics": [{"resource": resource, "scopeMetrics": [{"metrics": metrics}]}]}
    ).encode()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(metrics_request(), PROTOBUF), (metrics_json(), JSON)],
    ids=["protobuf", "json"],
)
def test_genai_histograms_become_metric_points_and_the_rest_is_counted_dropped(
    body, content_type
):
    batch = decode_metrics(body, content_type)

    tokens, duration = "gen_ai.client.token.usage", "gen_ai.client.operation.duration"
    input_attributes = {"gen_ai.token.type": "input", "gen_ai.request.model": "gpt-4o"}
    output_attributes = {"gen_ai.token.type": "output", "gen_ai.request.model": "gpt-4o"}
    assert [
        (p.name, p.service, p.attributes, p.sum, p.count, p.time_ns, p.cumulative)
        for p in batch.metrics
    ] == [
        (tokens, "rag-api", input_attributes, 1200.0, 10, END_NS, True),
        (tokens, "rag-api", output_attributes, 300.0, 10, END_NS, True),
        (duration, "rag-api", {}, 4.5, 3, END_NS, False),
    ]
    # two points of the HTTP histogram and one of the CPU gauge
    assert batch.dropped_metrics == 3
    assert batch.rejected == []


def test_stream_id_is_stable_and_tells_streams_apart():
    first = decode_metrics(metrics_request(), PROTOBUF).metrics
    again = decode_metrics(metrics_json(), JSON).metrics

    assert [p.stream_id for p in first] == [p.stream_id for p in again]
    assert len({p.stream_id for p in first}) == 3
    assert all("gen_ai." in p.stream_id and "rag-api" in p.stream_id for p in first)


def test_stream_id_does_not_depend_on_attribute_order():
    def body(order: list[tuple[str, str]]) -> bytes:
        request = ExportMetricsServiceRequest()
        metric = (
            request.resource_metrics.add()
            .scope_metrics.add()
            .metrics.add(name="gen_ai.client.token.usage")
        )
        metric.histogram.data_points.add(attributes=key_values(dict(order)), sum=1.0, count=1)
        return request.SerializeToString()

    pairs = [("gen_ai.token.type", "input"), ("gen_ai.request.model", "gpt-4o")]
    (forward,) = decode_metrics(body(pairs), PROTOBUF).metrics
    (backward,) = decode_metrics(body(pairs[::-1]), PROTOBUF).metrics

    assert forward.stream_id == backward.stream_id
    assert forward.service == "unknown_service"


def test_stream_id_tells_instances_of_one_service_apart():
    request = ExportMetricsServiceRequest()
    for instance in ("pod-a", "pod-b"):
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.attributes.extend(
            key_values({"service.name": "rag-api", "service.instance.id": instance})
        )
        metric = resource_metrics.scope_metrics.add().metrics.add(
            name="gen_ai.client.operation.duration"
        )
        metric.histogram.data_points.add(sum=1.0, count=1)

    first, second = decode_metrics(request.SerializeToString(), PROTOBUF).metrics

    assert first.service == second.service == "rag-api"
    assert first.stream_id != second.stream_id


def test_metrics_body_with_wrong_structure_raises_decode_error():
    with pytest.raises(DecodeError, match="resourceMetrics must be an array"):
        decode_metrics(b'{"resourceMetrics": {}}', JSON)
    with pytest.raises(DecodeError, match="not a valid ExportMetricsServiceRequest"):
        decode_metrics(b"not a protobuf at all", PROTOBUF)


def test_decode_never_raises_anything_but_decode_error_on_corrupted_bodies():
    rng = random.Random(7)
    seeds = [reference_pb(), metrics_request()]
    for _ in range(300):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        for decode in (decode_traces, decode_metrics):
            with contextlib.suppress(DecodeError):
                decode(bytes(body), PROTOBUF)


OTLP_KEYS = [
    "resourceSpans",
    "resource",
    "scopeSpans",
    "spans",
    "traceId",
    "spanId",
    "parentSpanId",
    "name",
    "kind",
    "startTimeUnixNano",
    "endTimeUnixNano",
    "attributes",
    "events",
    "timeUnixNano",
    "status",
    "code",
    "key",
    "value",
    "stringValue",
    "intValue",
    "doubleValue",
    "boolValue",
    "bytesValue",
    "arrayValue",
    "kvlistValue",
    "values",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.just(TRACE_HEX)
    | st.just(SPAN_HEX),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(OTLP_KEYS) | st.text(max_size=6), children, max_size=5
        )
    ),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(document=json_values)
def test_any_json_document_decodes_or_raises_decode_error(document):
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [document]}]}]}).encode()

    try:
        batch = decode_traces(body, JSON)
    except DecodeError:
        return
    assert len(batch.spans) + len(batch.rejected) == 1


def test_genai_point_with_a_bad_field_is_rejected_and_one_without_sum_dropped():
    metric = {
        "name": "gen_ai.client.token.usage",
        "histogram": {
            "aggregationTemporality": 2,
            "dataPoints": [{"sum": 1.0, "count": 1}, {"sum": 1.0, "count": -1}, {"count": 4}],
        },
    }
    body = json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]})

    batch = decode_metrics(body.encode(), JSON)

    assert [(r.index, r.reason) for r in batch.rejected] == [
        (
            "resourceMetrics[0].scopeMetrics[0].metrics[0].histogram.dataPoints[1]",
            "count must not be negative",
        )
    ]
    assert len(batch.metrics) == 1
    assert batch.dropped_metrics == 1
