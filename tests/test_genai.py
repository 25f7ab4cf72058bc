"""GenAI normalisation: current and deprecated names, messages, chunks, scores, log records."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2

from otlpfix import any_value
from proveai_agent.ingest.genai import annotate, log_details
from proveai_agent.ingest.otlp import decode_logs, decode_traces
from proveai_agent.spans import Span, SpanDetail

START_NS = 1_700_000_000_000_000_000
TRACE_HEX = "0af7651916cd43dd8448eb211c80319c"
SPAN_HEX = "b7ad6b7169203331"


def normalised(attributes: dict | None = None, events: list | None = None) -> Span:
    """A decoded span with these attributes and events, after GenAI normalisation."""
    span = Span(
        trace_id=TRACE_HEX,
        span_id=SPAN_HEX,
        parent_span_id=None,
        service="rag-api",
        name="chat",
        kind="SPAN_KIND_CLIENT",
        status="STATUS_CODE_UNSET",
        status_message="",
        start_ns=START_NS,
        end_ns=START_NS + 2_000_000_000,
        attributes=dict(attributes or {}),
        events=list(events or []),
    )
    annotate(span)
    return span


def event(name: str, attributes: dict | None = None, offset_ns: int = 0) -> dict:
    return {"name": name, "time_ns": START_NS + offset_ns, "attributes": attributes or {}}


def text(direction: str, role: str, content: str, source: str) -> dict:
    return {
        "direction": direction,
        "role": role,
        "parts": [{"type": "text", "content": content}],
        "source": source,
    }


# Model, provider, operation, tokens ---------------------------------------------------------


def test_current_names_fill_the_span_fields():
    span = normalised(
        {
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.usage.input_tokens": 120,
            "gen_ai.usage.output_tokens": 40,
        }
    )

    assert (span.model, span.response_model, span.operation, span.provider) == (
        "gpt-4o",
        "gpt-4o-2024-08-06",
        "chat",
        "openai",
    )
    assert (span.input_tokens, span.output_tokens) == (120, 40)


def test_deprecated_names_fill_the_same_fields():
    span = normalised(
        {
            "gen_ai.system": "openai",
            "gen_ai.usage.prompt_tokens": 120,
            "gen_ai.usage.completion_tokens": 40,
        }
    )

    assert span.provider == "openai"
    assert (span.input_tokens, span.output_tokens) == (120, 40)


def test_span_with_current_and_deprecated_names_is_counted_once_with_the_current_value():
    span = normalised(
        {
            "gen_ai.provider.name": "azure.ai.openai",
            "gen_ai.system": "openai",
            "gen_ai.usage.input_tokens": 120,
            "gen_ai.usage.prompt_tokens": 999,
            "gen_ai.usage.output_tokens": 40,
            "gen_ai.usage.completion_tokens": 999,
        }
    )

    assert span.provider == "azure.ai.openai"
    assert (span.input_tokens, span.output_tokens) == (120, 40)


def test_missing_usage_is_unknown_not_zero():
    span = normalised({"gen_ai.request.model": "gpt-4o"})

    assert span.input_tokens is None
    assert span.output_tokens is None


def test_span_without_attributes_has_no_genai_fields():
    span = normalised()

    assert (span.model, span.provider, span.input_tokens, span.ttft_s) == (
        None,
        None,
        None,
        None,
    )
    assert (span.messages, span.chunks, span.scores, span.finish_reasons) == ([], [], {}, [])


@pytest.mark.parametrize("value", [-1, 1.5, "12", True, None, [3]])
def test_token_counts_that_are_not_non_negative_integers_are_unknown(value):
    span = normalised({"gen_ai.usage.input_tokens": value})

    assert span.input_tokens is None


def test_integral_double_token_count_is_an_integer():
    assert normalised({"gen_ai.usage.input_tokens": 12.0}).input_tokens == 12


def test_unusable_current_token_count_falls_back_to_the_deprecated_one():
    span = normalised({"gen_ai.usage.input_tokens": "n/a", "gen_ai.usage.prompt_tokens": 7})

    assert span.input_tokens == 7


# Finish reasons and time to first token -----------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        ["stop", "length"],
        "stop,length",
        "stop; length",
        " stop , length ,",
        '["stop", "length"]',
    ],
)
def test_finish_reasons_from_an_array_or_a_delimited_string(value):
    span = normalised({"gen_ai.response.finish_reasons": value})

    assert span.finish_reasons == ["stop", "length"]


def test_ttft_from_the_time_to_first_chunk_attribute():
    assert normalised({"gen_ai.response.time_to_first_chunk": 0.25}).ttft_s == 0.25


def test_ttft_from_the_server_time_to_first_token_attribute():
    assert normalised({"gen_ai.server.time_to_first_token": 0.5}).ttft_s == 0.5


@pytest.mark.parametrize(
    "name", ["gen_ai.first_token", "First Token", "first-chunk", "llm.firstToken"]
)
def test_ttft_from_a_first_token_event_relative_to_the_span_start(name):
    span = normalised(events=[event("other", offset_ns=10), event(name, offset_ns=350_000_000)])

    assert span.ttft_s == 0.35


def test_ttft_attribute_wins_over_an_event():
    span = normalised(
        {"gen_ai.response.time_to_first_chunk": 0.25},
        [event("gen_ai.first_token", offset_ns=900_000_000)],
    )

    assert span.ttft_s == 0.25


def test_event_before_the_span_start_gives_no_ttft():
    assert normalised(events=[event("gen_ai.first_token", offset_ns=-5)]).ttft_s is None


# Messages -----------------------------------------------------------------------------------

INPUT_MESSAGES = [
    {"role": "system", "parts": [{"type": "text", "content": "Answer from the context."}]},
    {"role": "user", "parts": [{"type": "text", "content": "What is the refund window?"}]},
]
OUTPUT_MESSAGES = [
    {
        "role": "assistant",
        "parts": [{"type": "text", "content": "30 days."}],
        "finish_reason": "stop",
    }
]
EXPECTED_CONVERSATION = [
    text("system", "system", "Answer from the context.", "attribute"),
    text("input", "user", "What is the refund window?", "attribute"),
    text("output", "assistant", "30 days.", "attribute"),
]


def test_messages_from_json_string_attributes():
    span = normalised(
        {
            "gen_ai.input.messages": json.dumps(INPUT_MESSAGES),
            "gen_ai.output.messages": json.dumps(OUTPUT_MESSAGES),
        }
    )

    assert span.messages == EXPECTED_CONVERSATION
    assert span.finish_reasons == ["stop"]


def test_messages_from_structured_attributes():
    span = normalised(
        {"gen_ai.input.messages": INPUT_MESSAGES, "gen_ai.output.messages": OUTPUT_MESSAGES}
    )

    assert span.messages == EXPECTED_CONVERSATION


def test_system_instructions_attribute_is_a_system_message():
    span = normalised(
        {
            "gen_ai.system_instructions": json.dumps(
                [{"type": "text", "content": "Be brief."}]
            ),
            "gen_ai.input.messages": json.dumps(INPUT_MESSAGES[1:]),
        }
    )

    assert span.messages == [
        text("system", "system", "Be brief.", "attribute"),
        text("input", "user", "What is the refund window?", "attribute"),
    ]


def test_tool_call_parts_are_kept_as_sent():
    call = {"type": "tool_call", "id": "call_1", "name": "search", "arguments": {"q": "refund"}}
    response = {"type": "tool_call_response", "id": "call_1", "response": "30 days"}
    span = normalised(
        {
            "gen_ai.input.messages": [
                {"role": "assistant", "parts": [call]},
                {"role": "tool", "parts": [response]},
            ]
        }
    )

    assert [m["parts"] for m in span.messages] == [[call], [response]]
    assert [m["role"] for m in span.messages] == ["assistant", "tool"]


def test_messages_from_span_events():
    span = normalised(
        events=[
            event("gen_ai.system.message", {"content": "Answer from the context."}),
            event("gen_ai.user.message", {"content": "What is the refund window?"}),
            event(
                "gen_ai.choice",
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "30 days."},
                },
            ),
        ]
    )

    assert span.messages == [
        text("system", "system", "Answer from the context.", "event"),
        text("input", "user", "What is the refund window?", "event"),
        text("output", "assistant", "30 days.", "event"),
    ]
    assert span.finish_reasons == ["stop"]


def test_assistant_and_tool_message_events_carry_tool_calls_and_responses():
    span = normalised(
        events=[
            event(
                "gen_ai.assistant.message",
                {
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"q": "refund"}'},
                        }
                    ]
                },
            ),
            event("gen_ai.tool.message", {"id": "call_1", "content": "30 days"}),
        ]
    )

    assert span.messages == [
        {
            "direction": "input",
            "role": "assistant",
            "parts": [
                {
                    "type": "tool_call",
                    "id": "call_1",
                    "name": "search",
                    "arguments": '{"q": "refund"}',
                }
            ],
            "source": "event",
        },
        {
            "direction": "input",
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": "call_1", "response": "30 days"}],
            "source": "event",
        },
    ]


def test_message_event_with_its_content_in_a_json_attribute():
    span = normalised(
        events=[
            event(
                "gen_ai.user.message",
                {"gen_ai.event.content": json.dumps({"content": "What is the refund window?"})},
            )
        ]
    )

    assert span.messages == [text("input", "user", "What is the refund window?", "event")]


def test_message_event_without_content_keeps_the_turn_with_no_parts():
    span = normalised(events=[event("gen_ai.user.message", {"gen_ai.system": "openai"})])

    assert span.messages == [
        {"direction": "input", "role": "user", "parts": [], "source": "event"}
    ]


def test_messages_from_an_inference_details_event():
    span = normalised(
        events=[
            event(
                "gen_ai.client.inference.operation.details",
                {
                    "gen_ai.input.messages": json.dumps(INPUT_MESSAGES),
                    "gen_ai.output.messages": json.dumps(OUTPUT_MESSAGES),
                },
            )
        ]
    )

    assert span.messages == [dict(m, source="event") for m in EXPECTED_CONVERSATION]


def test_messages_from_deprecated_prompt_and_completion_strings():
    span = normalised(
        {"gen_ai.prompt": "What is the refund window?", "gen_ai.completion": "30 days."}
    )

    assert span.messages == [
        text("input", "user", "What is the refund window?", "attribute"),
        text("output", "assistant", "30 days.", "attribute"),
    ]


def test_messages_from_deprecated_content_events():
    span = normalised(
        events=[
            event(
                "gen_ai.content.prompt",
                {"gen_ai.prompt": json.dumps([{"role": "user", "content": "Hi"}])},
            ),
            event("gen_ai.content.completion", {"gen_ai.completion": "Hello."}),
        ]
    )

    assert span.messages == [
        text("input", "user", "Hi", "event"),
        text("output", "assistant", "Hello.", "event"),
    ]


def test_messages_from_indexed_attributes_in_index_order():
    span = normalised(
        {
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": "What is the refund window?",
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "Answer from the context.",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "30 days.",
            "gen_ai.completion.0.finish_reason": "stop",
        }
    )

    assert span.messages == EXPECTED_CONVERSATION
    assert span.finish_reasons == ["stop"]


def test_indexed_attributes_sort_numerically():
    attributes = {f"gen_ai.prompt.{i}.content": f"m{i}" for i in (10, 2, 1)}

    span = normalised(attributes)

    assert [m["parts"][0]["content"] for m in span.messages] == ["m1", "m2", "m10"]


def test_indexed_tool_calls_become_tool_call_parts():
    span = normalised(
        {
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.tool_calls.0.id": "call_1",
            "gen_ai.completion.0.tool_calls.0.name": "search",
            "gen_ai.completion.0.tool_calls.0.arguments": '{"q": "refund"}',
        }
    )

    assert span.messages[0]["parts"] == [
        {"type": "tool_call", "id": "call_1", "name": "search", "arguments": '{"q": "refund"}'}
    ]


def test_current_message_attributes_win_over_deprecated_ones():
    span = normalised(
        {
            "gen_ai.input.messages": json.dumps(INPUT_MESSAGES),
            "gen_ai.output.messages": json.dumps(OUTPUT_MESSAGES),
            "gen_ai.prompt.0.content": "old prompt",
            "gen_ai.completion.0.content": "old completion",
        },
        [event("gen_ai.user.message", {"content": "event prompt"})],
    )

    assert span.messages == EXPECTED_CONVERSATION


def test_each_side_takes_its_own_best_source():
    span = normalised(
        {"gen_ai.prompt.0.content": "old prompt"},
        [event("gen_ai.choice", {"message": {"content": "30 days."}})],
    )

    assert span.messages == [
        text("input", "user", "old prompt", "attribute"),
        text("output", "assistant", "30 days.", "event"),
    ]


def test_message_attribute_that_is_not_json_is_one_text_message():
    span = normalised({"gen_ai.input.messages": "What is the refund window?"})

    assert span.messages == [text("input", "user", "What is the refund window?", "attribute")]


def test_part_nested_too_deeply_is_dropped():
    deep: object = "leaf"
    for _ in range(40):
        deep = [deep]
    span = normalised(
        {
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "blob", "data": deep}, "kept"]}]
            )
        }
    )

    assert span.messages[0]["parts"] == [{"type": "text", "content": "kept"}]


# Retrieved chunks ---------------------------------------------------------------------------

EXPECTED_CHUNKS = [
    {"id": "doc-1", "content": "Refunds within 30 days.", "score": 0.91, "source": "policy.md"},
    {"id": "doc-2", "content": "Shipping takes 5 days.", "score": 0.42, "source": None},
]


def test_chunks_from_a_documents_attribute():
    documents = [
        {
            "id": "doc-1",
            "content": "Refunds within 30 days.",
            "score": 0.91,
            "source": "policy.md",
        },
        {"id": "doc-2", "text": "Shipping takes 5 days.", "score": 0.42},
    ]

    for value in (json.dumps(documents), documents):
        assert normalised({"gen_ai.retrieval.documents": value}).chunks == EXPECTED_CHUNKS


def test_chunks_from_openinference_indexed_attributes():
    span = normalised(
        {
            "retrieval.documents.0.document.id": "doc-1",
            "retrieval.documents.0.document.content": "Refunds within 30 days.",
            "retrieval.documents.0.document.score": 0.91,
            "retrieval.documents.0.document.metadata": json.dumps({"source": "policy.md"}),
            "retrieval.documents.1.document.id": "doc-2",
            "retrieval.documents.1.document.content": "Shipping takes 5 days.",
            "retrieval.documents.1.document.score": 0.42,
        }
    )

    assert span.chunks == EXPECTED_CHUNKS


def test_chunks_from_retrieval_events():
    span = normalised(
        events=[
            event(
                "gen_ai.retrieval.document",
                {
                    "gen_ai.retrieval.document.id": "doc-1",
                    "gen_ai.retrieval.document.content": "Refunds within 30 days.",
                    "gen_ai.retrieval.document.score": 0.91,
                    "gen_ai.retrieval.document.source": "policy.md",
                },
            ),
            event(
                "retrieval.document",
                {"id": "doc-2", "content": "Shipping takes 5 days.", "score": 0.42},
            ),
        ]
    )

    assert span.chunks == EXPECTED_CHUNKS


def test_chunk_score_that_is_not_finite_is_none():
    span = normalised({"gen_ai.retrieval.documents": [{"id": 7, "score": float("nan")}]})

    assert span.chunks == [{"id": "7", "content": None, "score": None, "source": None}]


# Scores -------------------------------------------------------------------------------------


def test_scores_from_evaluation_events():
    span = normalised(
        events=[
            event(
                "gen_ai.evaluation.result",
                {
                    "gen_ai.evaluation.name": "faithfulness",
                    "gen_ai.evaluation.score.value": 0.82,
                    "gen_ai.evaluation.score.label": "pass",
                },
            ),
            event(
                "gen_ai.evaluation.result",
                {"gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 1},
            ),
        ]
    )

    assert span.scores == {"faithfulness": 0.82, "relevance": 1.0}


def test_scores_from_plain_attributes():
    span = normalised(
        {
            "gen_ai.evaluation.faithfulness.score": 0.82,
            "eval.relevance.score": 0.7,
            "eval.coherence": "0.9",
            "eval.coherence.label": "good",
            "eval.relevance.threshold.value": 0.5,
        }
    )

    assert span.scores == {"faithfulness": 0.82, "relevance": 0.7, "coherence": 0.9}


def test_non_finite_and_boolean_scores_are_ignored():
    span = normalised(
        {
            "eval.a": float("nan"),
            "eval.b": float("inf"),
            "eval.c": "Infinity",
            "eval.d": True,
        },
        [
            event(
                "gen_ai.evaluation.result",
                {"gen_ai.evaluation.name": "e", "gen_ai.evaluation.score.value": float("nan")},
            )
        ],
    )

    assert span.scores == {}


def test_evaluation_event_overrides_an_attribute_of_the_same_name():
    span = normalised(
        {"eval.faithfulness": 0.1},
        [
            event(
                "gen_ai.evaluation.result",
                {
                    "gen_ai.evaluation.name": "faithfulness",
                    "gen_ai.evaluation.score.value": 0.8,
                },
            )
        ],
    )

    assert span.scores == {"faithfulness": 0.8}


# Through the decoder ------------------------------------------------------------------------


def test_json_span_with_deprecated_names_is_normalised_on_decode():
    attributes = [
        {"key": "gen_ai.system", "value": {"stringValue": "openai"}},
        {"key": "gen_ai.usage.prompt_tokens", "value": {"intValue": "120"}},
        {"key": "gen_ai.prompt.0.content", "value": {"stringValue": "Hi"}},
    ]
    body = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {"traceId": TRACE_HEX, "spanId": SPAN_HEX, "attributes": attributes}
                        ]
                    }
                ]
            }
        ]
    }

    (span,) = decode_traces(json.dumps(body).encode(), "application/json").spans

    assert (span.provider, span.input_tokens, span.output_tokens) == ("openai", 120, None)
    assert span.messages == [text("input", "user", "Hi", "attribute")]


# Log records --------------------------------------------------------------------------------


def log_record(
    event_name: str = "",
    body: object = None,
    attributes: dict | None = None,
    trace_id: bytes = bytes.fromhex(TRACE_HEX),
    span_id: bytes = bytes.fromhex(SPAN_HEX),
) -> logs_pb2.LogRecord:
    record = logs_pb2.LogRecord(
        time_unix_nano=START_NS,
        event_name=event_name,
        trace_id=trace_id,
        span_id=span_id,
        attributes=[KeyValue(key=k, value=any_value(v)) for k, v in (attributes or {}).items()],
    )
    if body is not None:
        record.body.CopyFrom(any_value(body))
    return record


def logs_body(*records: logs_pb2.LogRecord) -> bytes:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.add(key="service.name").value.string_value = "rag-api"
    resource_logs.scope_logs.add().log_records.extend(records)
    return request.SerializeToString()


def message_detail(data: dict) -> SpanDetail:
    return SpanDetail(TRACE_HEX, SPAN_HEX, "rag-api", START_NS, "message", data)


def test_log_records_with_kvlist_bodies_become_message_details():
    body = logs_body(
        log_record("gen_ai.system.message", {"content": "Answer from the context."}),
        log_record("gen_ai.user.message", {"content": "What is the refund window?"}),
        log_record(
            "gen_ai.choice",
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "30 days."},
            },
        ),
    )

    batch = decode_logs(body, "application/x-protobuf")

    assert batch.rejected == []
    assert batch.details == [
        message_detail(text("system", "system", "Answer from the context.", "log")),
        message_detail(text("input", "user", "What is the refund window?", "log")),
        message_detail(text("output", "assistant", "30 days.", "log")),
    ]


def test_log_record_named_by_the_event_name_attribute():
    body = logs_body(log_record(attributes={"event.name": "gen_ai.user.message"}, body="Hi"))

    batch = decode_logs(body, "application/x-protobuf")

    assert batch.details == [message_detail(text("input", "user", "Hi", "log"))]


def test_inference_details_log_record_carries_its_messages_in_attributes():
    body = logs_body(
        log_record(
            "gen_ai.client.inference.operation.details",
            attributes={
                "gen_ai.input.messages": json.dumps(INPUT_MESSAGES),
                "gen_ai.output.messages": json.dumps(OUTPUT_MESSAGES),
            },
        )
    )

    batch = decode_logs(body, "application/x-protobuf")

    assert batch.details == [
        message_detail(dict(m, source="log")) for m in EXPECTED_CONVERSATION
    ]


def test_evaluation_log_record_becomes_a_score_detail():
    body = logs_body(
        log_record(
            "gen_ai.evaluation.result",
            attributes={
                "gen_ai.evaluation.name": "faithfulness",
                "gen_ai.evaluation.score.value": 0.82,
                "gen_ai.evaluation.score.label": "pass",
            },
        )
    )

    batch = decode_logs(body, "application/x-protobuf")

    assert batch.details == [
        SpanDetail(
            TRACE_HEX,
            SPAN_HEX,
            "rag-api",
            START_NS,
            "score",
            {"name": "faithfulness", "value": 0.82, "label": "pass"},
        )
    ]


def test_genai_log_record_without_valid_ids_is_rejected_and_others_kept():
    body = logs_body(
        log_record("gen_ai.user.message", "Hi"),
        log_record("gen_ai.user.message", "Hi", trace_id=b""),
        log_record("gen_ai.user.message", "Hi", span_id=bytes(8)),
    )

    batch = decode_logs(body, "application/x-protobuf")

    assert [(r.index, r.reason) for r in batch.rejected] == [
        ("resourceLogs[0].scopeLogs[0].logRecords[1]", "traceId must be 16 bytes, got 0"),
        ("resourceLogs[0].scopeLogs[0].logRecords[2]", "spanId must not be all zero"),
    ]
    assert len(batch.details) == 1


def test_log_records_without_a_genai_event_are_counted_not_stored():
    body = logs_body(
        log_record(body="GET /health 200"),
        log_record("app.started", trace_id=b"", span_id=b""),
        log_record("gen_ai.user.message", "Hi"),
    )

    batch = decode_logs(body, "application/x-protobuf")

    assert batch.ignored_records == 2
    assert batch.rejected == []
    assert len(batch.details) == 1


def test_json_log_records_decode_like_protobuf():
    def record(name: str, body: dict) -> dict:
        return {
            "timeUnixNano": str(START_NS),
            "eventName": name,
            "traceId": TRACE_HEX,
            "spanId": SPAN_HEX,
            "body": body,
        }

    content = {"kvlistValue": {"values": [{"key": "content", "value": {"stringValue": "Hi"}}]}}
    document = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "rag-api"}}]
                },
                "scopeLogs": [
                    {
                        "logRecords": [
                            record("gen_ai.user.message", content),
                            {"body": {"stringValue": "plain log line"}},
                            record("gen_ai.user.message", content) | {"traceId": "abc"},
                        ]
                    }
                ],
            }
        ]
    }

    batch = decode_logs(json.dumps(document).encode(), "application/json")

    assert batch.details == [message_detail(text("input", "user", "Hi", "log"))]
    assert batch.ignored_records == 1
    assert [r.index for r in batch.rejected] == ["resourceLogs[0].scopeLogs[0].logRecords[2]"]


GENAI_KEYS = [
    "gen_ai.request.model",
    "gen_ai.provider.name",
    "gen_ai.usage.input_tokens",
    "gen_ai.response.finish_reasons",
    "gen_ai.response.time_to_first_chunk",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.prompt",
    "gen_ai.prompt.0.content",
    "gen_ai.completion.0.tool_calls.0.name",
    "gen_ai.retrieval.documents",
    "retrieval.documents.0.document.score",
    "gen_ai.evaluation.name",
    "gen_ai.evaluation.score.value",
    "eval.relevance",
    "content",
    "role",
    "message",
    "tool_calls",
    "parts",
    "type",
    "body",
    "gen_ai.event.content",
]
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(['[{"role": "user", "parts": [{"type": "text"}]}]', "[1, [2]]", "{"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(GENAI_KEYS) | st.text(max_size=6), children, max_size=5
        )
    ),
    max_leaves=30,
)
event_names = st.sampled_from(
    [
        "gen_ai.user.message",
        "gen_ai.tool.message",
        "gen_ai.choice",
        "gen_ai.client.inference.operation.details",
        "gen_ai.evaluation.result",
        "gen_ai.retrieval.document",
        "gen_ai.content.prompt",
        "first_token",
        "other",
    ]
)
attribute_maps = st.dictionaries(st.sampled_from(GENAI_KEYS), values, max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    attributes=attribute_maps,
    events=st.lists(st.tuples(event_names, attribute_maps), max_size=4),
    body=values,
)
def test_normalisation_never_fails_on_odd_values(attributes, events, body):
    span = normalised(attributes, [event(name, attrs) for name, attrs in events])

    assert span.input_tokens is None or span.input_tokens >= 0
    assert all(isinstance(reason, str) for reason in span.finish_reasons)
    assert all(set(m) == {"direction", "role", "parts", "source"} for m in span.messages)
    for name, _ in events:
        log_details(
            trace_id=TRACE_HEX,
            span_id=SPAN_HEX,
            service="rag-api",
            time_ns=START_NS,
            event_name=name,
            body=body,
            attributes=attributes,
        )
