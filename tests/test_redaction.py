"""Redaction before write: secrets sent in OTLP reach neither the database file nor the API.

Each test sends real OTLP (the OpenTelemetry SDK's exporter, or hand-built protobuf and JSON)
to a real agent and then reads the SQLite files themselves, database and write-ahead log, so
that a secret kept anywhere on disk is found. The secrets are hand-picked: the card numbers
are the networks' published test numbers (they pass the Luhn check), the order number is one
of them with its last digit changed (it fails it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from agentfix import OPERATOR_KEY
from otlpfix import key_values
from proveai_agent.config import RedactionConfig, load
from proveai_agent.ingest import otlp, redact

EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 0132"
CARD = "4111 1111 1111 1111"
CARD_PLAIN = "5555555555554444"
ORDER = "4111111111111112"
NOTE = "customer says XYZZY-42 opens the safe"
TOKEN = "tok-PLUGH-987"
SECRETS = (EMAIL, PHONE, CARD, CARD_PLAIN, NOTE, TOKEN)

RULES = RedactionConfig(
    keys=["app.customer_note", "secret.*"],
    builtins=["card", "email", "phone"],
)
HEADERS = {"X-API-Key": OPERATOR_KEY}
PROTOBUF = {**HEADERS, "Content-Type": "application/x-protobuf"}
JSON_TYPE = {**HEADERS, "Content-Type": "application/json"}
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN = bytes.fromhex("b7ad6b7169203331")
START_NS = 1_700_000_000_000_000_000


def disk_bytes(agent: Any) -> bytes:
    """Everything SQLite holds on disk for the agent: the database file and its WAL."""
    path = Path(agent.config.db_path)
    files = (path, path.with_name(path.name + "-wal"))
    return b"".join(f.read_bytes() for f in files if f.exists())


def absent(agent: Any, *texts: str | bytes) -> list[str | bytes]:
    """Those of `texts` that are stored somewhere on disk (hoped: none)."""
    data = disk_bytes(agent)
    return [t for t in texts if (t.encode() if isinstance(t, str) else t) in data]


async def trace(agent: Any, http: Any, trace_id: str) -> list[dict[str, Any]]:
    async with http.get(f"{agent.url}/api/traces/{trace_id}", headers=HEADERS) as r:
        assert r.status == 200
        return (await r.json())["spans"]


def send_with_sdk(url: str) -> str:
    """One GenAI call recorded by the OpenTelemetry SDK and exported to `url`; its trace id."""
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers=HEADERS)
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop", "user.contact": EMAIL})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("redaction-test")
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.provider.name": "openai",
        "gen_ai.prompt": f"I am {EMAIL}, call me on {PHONE}",
        "app.customer_note": NOTE,
        "secret.token": TOKEN,
        "order.summary": f"paid with {CARD}, order {ORDER}",
    }
    try:
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=[Link(SpanContext(1, 2, is_remote=True), {"reason": f"retry for {PHONE}"})],
        ) as span:
            span.add_event(
                "gen_ai.content.completion",
                {"gen_ai.completion": f"Refunded to card {CARD_PLAIN}."},
            )
            span.set_status(Status(StatusCode.ERROR, f"refund mail to {EMAIL} bounced"))
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        provider.shutdown()
    return trace_id


async def test_sdk_spans_are_redacted_on_disk_in_the_api_and_in_a_case(agent_factory, http):
    # Without the hold a new series is counted at once, not first shown at zero.
    agent = await agent_factory(redaction=RULES, new_series_hold_s=0)
    trace_id = await asyncio.to_thread(send_with_sdk, agent.url)

    assert absent(agent, *SECRETS) == []
    assert absent(agent, "[REDACTED:email]", "[REDACTED:phone]", "[REDACTED:card]") == [
        "[REDACTED:email]",
        "[REDACTED:phone]",
        "[REDACTED:card]",
    ]
    # The Luhn-invalid number is an order number, not a card: it is kept.
    assert absent(agent, ORDER) == [ORDER]

    [span] = await trace(agent, http, trace_id)
    attributes = span["attributes"]
    assert attributes["gen_ai.prompt"] == "I am [REDACTED:email], call me on [REDACTED:phone]"
    assert attributes["app.customer_note"] == "[REDACTED:key]"
    assert attributes["secret.token"] == "[REDACTED:key]"
    assert attributes["order.summary"] == f"paid with [REDACTED:card], order {ORDER}"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert span["status_message"] == "refund mail to [REDACTED:email] bounced"
    assert span["resource"]["user.contact"] == "[REDACTED:email]"
    assert span["events"][0]["attributes"] == {
        "gen_ai.completion": "Refunded to card [REDACTED:card]."
    }

    body = {"trace_id": trace_id, "title": "customer complaint"}
    async with http.post(f"{agent.url}/api/cases", json=body, headers=HEADERS) as r:
        assert r.status == 201
        case = await r.json()
    snapshot = case["context_snapshot"]
    prompts = json.dumps(snapshot["prompts"])
    outputs = json.dumps(snapshot["model_outputs"])
    assert "I am [REDACTED:email], call me on [REDACTED:phone]" in prompts
    assert "Refunded to card [REDACTED:card]." in outputs
    assert not [s for s in SECRETS if s in json.dumps(case)]

    async with http.get(f"{agent.url}/metrics", headers=HEADERS) as r:
        text = await r.text()
    calls = [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llm_traces_span_metrics_calls_total"
    ]
    assert calls == [
        (
            {
                "service_name": "shop",
                "span_name": "chat gpt-4o-mini",
                "span_kind": "SPAN_KIND_CLIENT",
                "status_code": "STATUS_CODE_ERROR",
                "gen_ai_request_model": "gpt-4o-mini",
                "gen_ai_operation_name": "chat",
                "gen_ai_provider_name": "openai",
            },
            1.0,
        )
    ]


async def test_without_rules_the_same_spans_keep_their_secrets(agent_factory):
    """The control: the file search above finds secrets where nothing redacts them."""
    agent = await agent_factory()
    assert agent.redactor is None
    await asyncio.to_thread(send_with_sdk, agent.url)
    assert absent(agent, *SECRETS) == list(SECRETS)


def string(text: str) -> dict[str, Any]:
    return {"stringValue": text}


def json_spans() -> dict[str, Any]:
    """An OTLP JSON request whose secrets sit in nested values, events and the status."""
    attributes = [
        {"key": "gen_ai.request.model", "value": string("llama-3")},
        {
            "key": "payload",
            "value": {
                "kvlistValue": {
                    "values": [
                        {"key": "contact", "value": string(EMAIL)},
                        {
                            "key": "cards",
                            "value": {"arrayValue": {"values": [string(CARD), string(ORDER)]}},
                        },
                        {"key": "secret.pin", "value": {"intValue": "4242"}},
                    ]
                }
            },
        },
        {
            "key": "app.customer_note",
            "value": {"kvlistValue": {"values": [{"key": "text", "value": string(NOTE)}]}},
        },
    ]
    span = {
        "traceId": TRACE.hex(),
        "spanId": SPAN.hex(),
        "name": "chat llama-3",
        "kind": "SPAN_KIND_CLIENT",
        "startTimeUnixNano": str(START_NS),
        "endTimeUnixNano": str(START_NS + 10**9),
        "attributes": attributes,
        "events": [
            {
                "name": "gen_ai.content.prompt",
                "timeUnixNano": str(START_NS),
                "attributes": [{"key": "gen_ai.prompt", "value": string(f"call {PHONE}")}],
            },
            {"name": f"mail sent to {EMAIL}", "timeUnixNano": str(START_NS + 5)},
        ],
        "links": [
            {
                "traceId": "1" * 32,
                "spanId": "2" * 16,
                "attributes": [{"key": "why", "value": string(f"follows {EMAIL}")}],
            }
        ],
        "status": {"code": 2, "message": f"card {CARD_PLAIN} declined"},
    }
    resource = {
        "attributes": [
            {"key": "service.name", "value": string("rag-api")},
            {"key": "user.contact", "value": string(EMAIL)},
        ]
    }
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}


def json_log() -> dict[str, Any]:
    """A GenAI user message sent apart from its span, as an OTLP JSON log record."""
    record = {
        "timeUnixNano": str(START_NS + 1),
        "eventName": "gen_ai.user.message",
        "traceId": TRACE.hex(),
        "spanId": SPAN.hex(),
        "body": {
            "kvlistValue": {
                "values": [{"key": "content", "value": string(f"my mail is {EMAIL}")}]
            }
        },
        "attributes": [{"key": "secret.session", "value": string(TOKEN)}],
    }
    return {"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}


async def test_json_spans_and_log_records_are_redacted_at_every_depth(agent_factory, http):
    agent = await agent_factory(redaction=RULES)
    for path, document in (("/v1/traces", json_spans()), ("/v1/logs", json_log())):
        async with http.post(f"{agent.url}{path}", json=document, headers=JSON_TYPE) as r:
            assert r.status == 200, await r.text()
            assert await r.json() == {}

    assert absent(agent, *SECRETS) == []
    assert absent(agent, ORDER) == [ORDER]

    [span] = await trace(agent, http, TRACE.hex())
    assert span["attributes"]["payload"] == {
        "contact": "[REDACTED:email]",
        "cards": ["[REDACTED:card]", ORDER],
        "secret.pin": "[REDACTED:key]",
    }
    assert span["attributes"]["app.customer_note"] == "[REDACTED:key]"
    assert span["events"][0]["attributes"] == {"gen_ai.prompt": "call [REDACTED:phone]"}
    assert span["status_message"] == "card [REDACTED:card] declined"
    assert span["events"][1]["name"] == "mail sent to [REDACTED:email]"
    assert span["resource"]["user.contact"] == "[REDACTED:email]"
    texts = [part["content"] for message in span["messages"] for part in message["parts"]]
    assert "call [REDACTED:phone]" in texts
    assert "my mail is [REDACTED:email]" in texts


def pb_request(attributes: dict[str, Any], span_id: bytes = SPAN) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(key_values({"service.name": "shop"}))
    resource_spans.scope_spans.add().spans.append(
        PbSpan(
            trace_id=TRACE,
            span_id=span_id,
            name="chat",
            start_time_unix_nano=START_NS,
            end_time_unix_nano=START_NS + 10**9,
            attributes=key_values(attributes),
        )
    )
    return request.SerializeToString()


async def post(agent: Any, http: Any, body: bytes) -> tuple[int, bytes]:
    async with http.post(f"{agent.url}/v1/traces", data=body, headers=PROTOBUF) as r:
        return r.status, await r.read()


def stored_body_bytes(agent: Any) -> int:
    with sqlite3.connect(agent.config.db_path) as conn:
        return int(conn.execute("SELECT sum(length(body)) FROM spans").fetchone()[0])


# A hang guard, not a measure: linear redaction takes well under a second here.
@pytest.mark.timeout(60)
async def test_a_huge_value_full_of_matches_is_cut_and_redacted_in_linear_time(
    agent_factory, http
):
    agent = await agent_factory(redaction=RULES)
    cut = otlp.MAX_STRING_CHARS
    many = "a@b.co " * 150_000  # about 1 MiB, 150 000 addresses
    digits = "1 " * 500_000  # a match attempt of the card pattern at every digit
    # Without the look-behind of the e-mail pattern every start inside a run of local-part
    # characters scans to its end: a hundred runs of 64 Ki characters cost minutes, not ms.
    traps = {f"trap{i}": "x" * cut for i in range(100)}
    status, _ = await post(agent, http, pb_request({"many": many, "d": digits, **traps}))
    assert status == 200

    assert absent(agent, "a@b.co") == []
    [span] = await trace(agent, http, TRACE.hex())
    stored = span["attributes"]
    assert len(stored["many"]) == otlp.MAX_STRING_CHARS
    assert stored["many"].startswith("[REDACTED:email] [REDACTED:email] ")
    assert stored["trap0"] == "x" * cut
    assert stored["d"] == digits[:cut]
    # The stored span holds 102 values of at most 64 Ki characters each and a few bytes of
    # framing: the tails past the cut are gone from disk, and replacements longer than what
    # they replaced did not grow a value past the cut.
    assert stored_body_bytes(agent) <= 102 * cut + 4096


async def test_invalid_utf8_is_refused_or_redacted_byte_for_byte(agent_factory, http):
    agent = await agent_factory(redaction=RULES)
    body = pb_request({"gen_ai.prompt": f"write to {EMAIL}"})
    # The same request with one byte of the prompt made invalid UTF-8: protobuf refuses it.
    broken = body.replace(b"write", b"wr\xffte")
    status, _ = await post(agent, http, broken)
    assert status == 400
    assert absent(agent, EMAIL) == []

    raw = b"\xff\xfe " + EMAIL.encode() + b" \x80"
    status, answer = await post(agent, http, pb_request({"blob": raw}))
    assert status == 200
    assert not ExportTraceServiceResponse.FromString(answer).HasField("partial_success")
    assert absent(agent, EMAIL) == []
    [span] = await trace(agent, http, TRACE.hex())
    assert span["attributes"]["blob"] == (b"\xff\xfe [REDACTED:email] \x80").hex()

    document = json_spans()
    span_doc = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span_doc["spanId"] = "00000000000000b2"
    span_doc["attributes"] = [
        {"key": "blob", "value": {"bytesValue": base64.b64encode(raw).decode()}}
    ]
    async with http.post(f"{agent.url}/v1/traces", json=document, headers=JSON_TYPE) as r:
        assert r.status == 200
    assert absent(agent, EMAIL) == []
    spans = {s["span_id"]: s for s in await trace(agent, http, TRACE.hex())}
    assert spans["00000000000000b2"]["attributes"]["blob"] == span["attributes"]["blob"]


def nested(value: Any, levels: int) -> Any:
    """`value` wrapped in `levels` containers, kvlists and arrays in turn."""
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


async def test_deeply_nested_values_are_redacted_to_the_depth_limit_and_refused_past_it(
    agent_factory, http
):
    agent = await agent_factory(redaction=RULES)
    limit = otlp.MAX_VALUE_DEPTH
    # The attribute's value is depth 1: inside limit - 1 containers the secrets sit at the
    # deepest depth that is still kept.
    deep = nested({"mail": EMAIL, "secret.x": TOKEN}, limit - 2)
    status, _ = await post(agent, http, pb_request({"deep": deep}))
    assert status == 200
    [span] = await trace(agent, http, TRACE.hex())
    assert span["attributes"]["deep"] == nested(
        {"mail": "[REDACTED:email]", "secret.x": "[REDACTED:key]"}, limit - 2
    )

    too_deep = nested(PHONE, limit)
    status, answer = await post(
        agent, http, pb_request({"deep": too_deep}, b"\x00" * 7 + b"\x02")
    )
    assert status == 200
    assert ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans == 1
    # Far deeper in JSON, which nests as deep as the parser allows: refused, not a crash.
    document = json_spans()
    value = string(PHONE)
    for _ in range(150):
        value = {"arrayValue": {"values": [value]}}
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"] = [
        {"key": "deep", "value": value}
    ]
    async with http.post(f"{agent.url}/v1/traces", json=document, headers=JSON_TYPE) as r:
        assert r.status == 200
        assert (await r.json())["partialSuccess"]["rejectedSpans"] == "1"
    assert absent(agent, EMAIL, TOKEN, PHONE) == []
    async with http.get(f"{agent.url}/healthz") as r:
        assert r.status == 200


def test_metric_point_labels_are_redacted_in_both_encodings():
    redactor = redact.build(RULES)
    request = ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "gen_ai.client.token.usage"
    point = metric.histogram.data_points.add(sum=12.0, count=1, time_unix_nano=START_NS)
    point.attributes.extend(key_values({"gen_ai.request.model": "m1", "user": EMAIL}))
    batch = otlp.decode_metrics(
        request.SerializeToString(), "application/x-protobuf", redactor=redactor
    )
    assert batch.metrics[0].attributes == {
        "gen_ai.request.model": "m1",
        "user": "[REDACTED:email]",
    }

    document = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "gen_ai.client.token.usage",
                                "histogram": {
                                    "dataPoints": [
                                        {
                                            "sum": 12.0,
                                            "count": "1",
                                            "attributes": [
                                                {"key": "user", "value": string(EMAIL)},
                                                {"key": "secret.a", "value": string("b")},
                                            ],
                                        }
                                    ]
                                },
                            }
                        ]
                    }
                ]
            }
        ]
    }
    batch = otlp.decode_metrics(json.dumps(document).encode(), "application/json", redactor)
    assert batch.metrics[0].attributes == {
        "user": "[REDACTED:email]",
        "secret.a": "[REDACTED:key]",
    }


def test_operator_patterns_run_first_and_the_replacement_names_them():
    redactor = redact.build(
        RedactionConfig(
            builtins=["card"],
            patterns={"employee": r"EMP-\d{6}"},
            replacement="<{name} removed>",
        )
    )
    assert redactor is not None
    assert redactor.text("EMP-123456 paid 4111111111111111") == (
        "<employee removed> paid <card removed>"
    )
    assert redactor.key_text == "<key removed>"


def test_no_rules_means_no_redactor_and_no_work_on_the_ingest_path():
    assert redact.build(RedactionConfig()) is None
    assert redact.build(RedactionConfig(replacement="[gone]")) is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[redaction.patterns]\nticket = "TCK-(\\\\d+"', "redaction.patterns.ticket"),
        ('[redaction.patterns]\nanything = "x*"', "matches the empty string"),
        ('[redaction]\nbuiltins = ["email", "ssn"]', "unknown built-in 'ssn'"),
        ('[redaction]\nbuiltins = "email"', "redaction.builtins must be a list"),
        ("[redaction]\nkeys = [1]", "redaction.keys must be a list"),
        ('[redaction]\nkeys = ["a*b"]', "only at the end"),
        ('[redaction]\npatterns = ["x"]', "redaction.patterns must be a table"),
        ("[redaction.patterns]\nx = 3", "redaction.patterns.x must be a regular expression"),
        ('[redaction.patterns]\ncard = "\\\\d"', "redaction.patterns.card"),
        ("[redaction]\nreplacement = 5", "redaction.replacement must be a string"),
        ('[redaction]\nreplacement = "{rule}"', "only the placeholder {name}"),
        ("[redaction]\nkey = []", "unknown setting 'key'"),
    ],
)
def test_malformed_redaction_settings_are_refused_naming_the_setting(tmp_path, toml, message):
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    with pytest.raises(ValueError) as raised:
        load(path)
    assert message in str(raised.value)


def test_serve_stops_at_start_with_the_setting_named(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('[redaction.patterns]\nticket = "TCK-(\\\\d+"\n')
    done = subprocess.run(
        [
            *(sys.executable, "-m", "proveai_agent", "serve", "--config", str(path)),
            *("--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "redaction.patterns.ticket: not a valid regular expression" in done.stderr
    assert not (tmp_path / "data" / "proveai.db").exists()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet="ab@.1 +-=/_", max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=10,
)


def odd(shape: Any) -> Any:
    """Mostly `shape`, sometimes any other JSON value: deep paths are reached often enough."""
    return st.one_of(shape, shape, shape, shape, json_values)


def obj(**fields: Any) -> Any:
    return st.fixed_dictionaries({name: odd(shape) for name, shape in fields.items()})


def many(shape: Any) -> Any:
    return st.lists(odd(shape), min_size=1, max_size=2)


any_values = st.recursive(
    obj(stringValue=st.text(alphabet="ab@.1 +-", max_size=30), bytesValue=st.text(max_size=8)),
    lambda inner: obj(
        arrayValue=obj(values=many(inner)),
        kvlistValue=obj(values=many(obj(key=st.sampled_from(["k", "secret.k"]), value=inner))),
        stringValue=st.text(max_size=5),
    ),
    max_leaves=8,
)
attributes = many(obj(key=st.sampled_from(["a", "secret.x"]), value=any_values))
resource = obj(attributes=attributes)
otlp_documents = obj(
    resourceSpans=many(
        obj(
            resource=resource,
            scopeSpans=many(
                obj(
                    spans=many(
                        obj(
                            name=st.text(max_size=5),
                            attributes=attributes,
                            events=many(obj(name=st.text(max_size=5), attributes=attributes)),
                            status=obj(message=st.text(max_size=5)),
                        )
                    )
                )
            ),
        )
    ),
    resourceLogs=many(
        obj(
            resource=resource,
            scopeLogs=many(obj(logRecords=many(obj(attributes=attributes, body=any_values)))),
        )
    ),
    resourceMetrics=many(
        obj(
            resource=resource,
            scopeMetrics=many(
                obj(
                    metrics=many(
                        obj(histogram=obj(dataPoints=many(obj(attributes=attributes))))
                    )
                )
            ),
        )
    ),
)


@settings(max_examples=150, deadline=None)
@given(otlp_documents)
def test_any_json_document_is_redacted_or_left_for_the_decoder_to_refuse(document):
    """The walker itself never raises (the decoder would turn that into a 400 and hide it);
    whatever it leaves, the decoders either take or refuse as a readable DecodeError."""
    redactor = redact.build(RULES)
    redactor.json(document)
    body = json.dumps(document).encode()
    for decode in (otlp.decode_traces, otlp.decode_logs, otlp.decode_metrics):
        with contextlib.suppress(otlp.DecodeError):
            decode(body, "application/json", redactor=redactor)
