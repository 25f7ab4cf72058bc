"""OTLP/HTTP ingest as the spec says: status codes, partial_success, limits, gzip, auth.

Every refused request must leave the stored data exactly as it was.
"""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from agentfix import OPERATOR_KEY, READ_KEY

TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
PROTOBUF = {"Content-Type": "application/x-protobuf", "X-API-Key": OPERATOR_KEY}


def kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def request(*span_ids: bytes, trace_id: bytes = TRACE, service: str = "shop") -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", service))
    ss = rs.scope_spans.add()
    for i, span_id in enumerate(span_ids):
        ss.spans.append(
            PbSpan(
                trace_id=trace_id,
                span_id=span_id,
                name=f"step-{i}",
                kind=PbSpan.SPAN_KIND_SERVER,
                start_time_unix_nano=1_700_000_000_000_000_000,
                end_time_unix_nano=1_700_000_000_500_000_000,
                attributes=[kv("gen_ai.request.model", "m1")],
            )
        )
    return req.SerializeToString()


def stored(agent) -> list[tuple]:
    with sqlite3.connect(agent.config.db_path) as conn:
        return conn.execute("SELECT trace_id, span_id, name FROM spans ORDER BY id").fetchall()


@pytest.fixture
async def seeded(agent, http):
    """An agent that already holds one span, so that 'nothing changed' is meaningful."""
    body = request(bytes.fromhex("00000000000000a1"))
    async with http.post(f"{agent.url}/v1/traces", data=body, headers=PROTOBUF) as r:
        assert r.status == 200
    return agent, stored(agent)


async def test_protobuf_request_is_committed_before_200(agent, http):
    body = request(bytes.fromhex("00000000000000a1"), bytes.fromhex("00000000000000a2"))
    async with http.post(f"{agent.url}/v1/traces", data=body, headers=PROTOBUF) as r:
        assert r.status == 200
        assert r.content_type == "application/x-protobuf"
        answer = ExportTraceServiceResponse.FromString(await r.read())
    assert not answer.HasField("partial_success")
    assert stored(agent) == [
        (TRACE.hex(), "00000000000000a1", "step-0"),
        (TRACE.hex(), "00000000000000a2", "step-1"),
    ]


async def test_partial_success_names_the_rejected_span_and_keeps_the_rest(agent, http):
    body = request(
        bytes.fromhex("00000000000000b1"), b"\x01" * 7, bytes.fromhex("00000000000000b3")
    )
    async with http.post(f"{agent.url}/v1/traces", data=body, headers=PROTOBUF) as r:
        assert r.status == 200
        answer = ExportTraceServiceResponse.FromString(await r.read())
    assert answer.partial_success.rejected_spans == 1
    assert "spans[1]" in answer.partial_success.error_message
    assert "8 bytes" in answer.partial_success.error_message
    assert [row[1] for row in stored(agent)] == ["00000000000000b1", "00000000000000b3"]


async def test_json_request_gets_a_json_answer_with_partial_success(agent, http):
    document = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "j"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE.hex(),
                                "spanId": "00000000000000c1",
                                "name": "ok",
                                "kind": 2,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000000100000000",
                            },
                            {
                                "traceId": "abc",
                                "spanId": "00000000000000c2",
                                "name": "bad",
                                "startTimeUnixNano": "1",
                                "endTimeUnixNano": "2",
                            },
                        ]
                    }
                ],
            }
        ]
    }
    headers = {"Content-Type": "application/json", "X-API-Key": OPERATOR_KEY}
    async with http.post(f"{agent.url}/v1/traces", json=document, headers=headers) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        answer = await r.json()
    assert answer["partialSuccess"]["rejectedSpans"] in (1, "1")
    assert [row[2] for row in stored(agent)] == ["ok"]


async def test_gzip_body_is_accepted(agent, http):
    body = gzip.compress(request(bytes.fromhex("00000000000000d1")))
    headers = {**PROTOBUF, "Content-Encoding": "gzip"}
    async with http.post(f"{agent.url}/v1/traces", data=body, headers=headers) as r:
        assert r.status == 200
    assert len(stored(agent)) == 1


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b"\x0a\xff\xff\xff\xff\x0f garbage", None),
        (b"not gzip at all", "gzip"),
        (gzip.compress(b"x" * 100)[:-10], "gzip"),
    ],
    ids=["garbage-protobuf", "not-gzip", "truncated-gzip"],
)
async def test_undecodable_body_is_400_with_a_readable_message(seeded, http, body, encoding):
    agent, before = seeded
    headers = dict(PROTOBUF)
    if encoding:
        headers["Content-Encoding"] = encoding
    async with http.post(f"{agent.url}/v1/traces", data=body, headers=headers) as r:
        assert r.status == 400
        raw = await r.read()
    # google.rpc.Status: field 1 (code) then field 2 (message), a readable text.
    assert raw[0] == 0x08
    assert b"decode" in raw or b"gzip" in raw
    assert stored(agent) == before


async def test_invalid_json_is_400_in_json(seeded, http):
    agent, before = seeded
    headers = {"Content-Type": "application/json", "X-API-Key": OPERATOR_KEY}
    async with http.post(
        f"{agent.url}/v1/traces", data=b'{"resourceSpans": [', headers=headers
    ) as r:
        assert r.status == 400
        assert "cannot decode" in (await r.json())["message"]
    assert stored(agent) == before


async def test_unknown_content_type_is_415(seeded, http):
    agent, before = seeded
    headers = {"Content-Type": "text/plain", "X-API-Key": OPERATOR_KEY}
    async with http.post(f"{agent.url}/v1/traces", data=b"hello", headers=headers) as r:
        assert r.status == 415
    assert stored(agent) == before


async def test_body_over_the_limit_is_413_before_decompression(agent_factory, http):
    agent = await agent_factory(body_limit_bytes=1000)
    body = request(*(i.to_bytes(8, "big") for i in range(1, 40)))
    assert len(body) > 1000
    async with http.post(f"{agent.url}/v1/traces", data=body, headers=PROTOBUF) as r:
        assert r.status == 413
    assert stored(agent) == []


async def test_gzip_bomb_is_413_after_decompression(agent_factory, http):
    agent = await agent_factory(body_limit_bytes=64 * 1024)
    bomb = gzip.compress(b"\x00" * (50 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    headers = {**PROTOBUF, "Content-Encoding": "gzip"}
    async with http.post(f"{agent.url}/v1/traces", data=bomb, headers=headers) as r:
        assert r.status == 413
    assert stored(agent) == []


async def test_chunked_body_without_length_is_still_limited(agent_factory, http):
    agent = await agent_factory(body_limit_bytes=1000)

    async def chunks():
        for _ in range(10):
            yield b"\x00" * 500

    async with http.post(f"{agent.url}/v1/traces", data=chunks(), headers=PROTOBUF) as r:
        assert r.status == 413


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"X-Api-Token": OPERATOR_KEY},
    ],
    ids=["none", "wrong-key", "wrong-bearer", "key-in-another-header"],
)
async def test_without_a_valid_key_ingest_is_401_and_stores_nothing(seeded, http, headers):
    agent, before = seeded
    headers = {"Content-Type": "application/x-protobuf", **headers}
    body = request(bytes.fromhex("00000000000000e1"))
    async with http.post(f"{agent.url}/v1/traces", data=body, headers=headers) as r:
        assert r.status == 401
    assert stored(agent) == before


@pytest.mark.parametrize(
    "auth",
    [
        {"Authorization": f"Bearer {OPERATOR_KEY}"},
        {
            "Authorization": "Basic "
            + base64.b64encode(f"anyone:{OPERATOR_KEY}".encode()).decode()
        },
    ],
    ids=["bearer", "basic"],
)
async def test_key_is_accepted_as_bearer_token_and_basic_password(agent, http, auth):
    body = request(bytes.fromhex("00000000000000f1"))
    headers = {"Content-Type": "application/x-protobuf", **auth}
    async with http.post(f"{agent.url}/v1/traces", data=body, headers=headers) as r:
        assert r.status == 200


async def test_a_read_key_cannot_ingest_but_can_read(seeded, http):
    agent, before = seeded
    headers = {"Content-Type": "application/x-protobuf", "X-API-Key": READ_KEY}
    async with http.post(
        f"{agent.url}/v1/traces", data=request(b"\x09" * 8), headers=headers
    ) as r:
        assert r.status == 403
    assert stored(agent) == before
    async with http.get(f"{agent.url}/api/traces/{TRACE.hex()}", headers=headers) as r:
        assert r.status == 200
        assert [s["span_id"] for s in (await r.json())["spans"]] == ["00000000000000a1"]


async def test_healthz_is_open_and_metrics_needs_a_key(agent, http):
    async with http.get(f"{agent.url}/healthz") as r:
        assert r.status == 200
    async with http.get(f"{agent.url}/metrics") as r:
        assert r.status == 401
    async with http.get(f"{agent.url}/metrics", headers={"X-API-Key": READ_KEY}) as r:
        assert r.status == 200


async def test_log_records_attach_messages_to_their_span(agent, http):
    span_id = bytes.fromhex("00000000000000a7")
    logs = ExportLogsServiceRequest()
    rl = logs.resource_logs.add()
    rl.resource.attributes.append(kv("service.name", "shop"))
    record = rl.scope_logs.add().log_records.add()
    record.trace_id = TRACE
    record.span_id = span_id
    record.time_unix_nano = 1_700_000_000_100_000_000
    record.event_name = "gen_ai.user.message"
    record.body.kvlist_value.values.append(kv("content", "Where is my parcel?"))
    async with http.post(
        f"{agent.url}/v1/logs", data=logs.SerializeToString(), headers=PROTOBUF
    ) as r:
        assert r.status == 200
    async with http.post(
        f"{agent.url}/v1/traces", data=request(span_id), headers=PROTOBUF
    ) as r:
        assert r.status == 200
    async with http.get(f"{agent.url}/api/traces/{TRACE.hex()}", headers=PROTOBUF) as r:
        (span,) = (await r.json())["spans"]
    texts = [p.get("content") for m in span["messages"] for p in m["parts"]]
    assert "Where is my parcel?" in texts
    assert span["messages"][0]["role"] == "user"


async def test_genai_client_metrics_are_used_and_others_dropped(agent, http):
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "shop"))
    sm = rm.scope_metrics.add()
    usage = sm.metrics.add(name="gen_ai.client.token.usage")
    usage.histogram.aggregation_temporality = 1  # delta
    point = usage.histogram.data_points.add(count=3, sum=420.0)
    point.attributes.extend(
        [kv("gen_ai.token.type", "input"), kv("gen_ai.request.model", "m1")]
    )
    other = sm.metrics.add(name="http.server.duration")
    other.histogram.data_points.add(count=1, sum=0.2)
    async with http.post(
        f"{agent.url}/v1/metrics", data=req.SerializeToString(), headers=PROTOBUF
    ) as r:
        assert r.status == 200
    # New series show zero on their first scrape, so read the second one, as Prometheus.
    scraper = {"X-API-Key": OPERATOR_KEY, "User-Agent": "Prometheus/2.42.0"}
    for _ in range(2):
        async with http.get(f"{agent.url}/metrics", headers=scraper) as r:
            text = await r.text()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    sums = [line for line in lines if line.startswith("llm_gen_ai_client_metric_sum_total")]
    assert len(sums) == 1
    assert 'metric="llm_gen_ai_client_token_usage"' in sums[0]
    assert sums[0].endswith(" 420.0")
    dropped = [
        line for line in lines if line.startswith("proveai_ingest_metric_points_dropped")
    ]
    assert dropped == ["proveai_ingest_metric_points_dropped_total 1.0"]


async def test_request_to_a_trace_that_does_not_exist_is_404_and_bad_id_400(agent, http):
    headers = {"X-API-Key": READ_KEY}
    async with http.get(f"{agent.url}/api/traces/{'0' * 31}1", headers=headers) as r:
        assert r.status == 404
        assert "error" in await r.json()
    async with http.get(f"{agent.url}/api/traces/not-hex", headers=headers) as r:
        assert r.status == 400


async def test_json_ids_in_base64_and_hex_store_the_same_span(agent, http):
    headers = {"Content-Type": "application/json", "X-API-Key": OPERATOR_KEY}

    def doc(trace: str, span: str) -> dict:
        return {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": trace,
                                    "spanId": span,
                                    "name": "n",
                                    "kind": "SPAN_KIND_CLIENT",
                                    "startTimeUnixNano": 1700000000000000000,
                                    "endTimeUnixNano": 1700000000000000001,
                                }
                            ]
                        }
                    ]
                }
            ]
        }

    b64_trace = base64.b64encode(TRACE).decode()
    b64_span = base64.b64encode(bytes.fromhex("00000000000000aa")).decode()
    for body in (doc(TRACE.hex().upper(), "00000000000000AA"), doc(b64_trace, b64_span)):
        async with http.post(
            f"{agent.url}/v1/traces", data=json.dumps(body), headers=headers
        ) as r:
            assert r.status == 200
    assert stored(agent) == [(TRACE.hex(), "00000000000000aa", "n")]


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_content_sent_as_attributes_is_read_back_with_the_trace(agent, http, encoding):
    messages = '[{"role":"user","parts":[{"type":"text","content":"Is it waterproof?"}]}]'
    documents = '[{"id":"doc-7","content":"IP68 rated.","score":0.91}]'
    if encoding == "protobuf":
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.extend([kv("service.name", "shop"), kv("host.name", "h1")])
        rs.scope_spans.add().spans.append(
            PbSpan(
                trace_id=TRACE,
                span_id=bytes.fromhex("00000000000000c7"),
                name="chat",
                start_time_unix_nano=1_700_000_000_000_000_000,
                end_time_unix_nano=1_700_000_001_000_000_000,
                attributes=[
                    kv("gen_ai.input.messages", messages),
                    kv("gen_ai.retrieval.documents", documents),
                    kv("gen_ai.response.model", "m1-2024"),
                ],
            )
        )
        body, headers = req.SerializeToString(), PROTOBUF
    else:
        document = {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": "shop"}},
                            {"key": "host.name", "value": {"stringValue": "h1"}},
                        ]
                    },
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "traceId": TRACE.hex(),
                                    "spanId": "00000000000000c7",
                                    "name": "chat",
                                    "startTimeUnixNano": "1700000000000000000",
                                    "endTimeUnixNano": "1700000001000000000",
                                    "attributes": [
                                        {
                                            "key": "gen_ai.input.messages",
                                            "value": {"stringValue": messages},
                                        },
                                        {
                                            "key": "gen_ai.retrieval.documents",
                                            "value": {"stringValue": documents},
                                        },
                                        {
                                            "key": "gen_ai.response.model",
                                            "value": {"stringValue": "m1-2024"},
                                        },
                                    ],
                                }
                            ]
                        }
                    ],
                }
            ]
        }
        body = json.dumps(document).encode()
        headers = {"Content-Type": "application/json", "X-API-Key": OPERATOR_KEY}
    async with http.post(f"{agent.url}/v1/traces", data=body, headers=headers) as r:
        assert r.status == 200
    async with http.get(f"{agent.url}/api/traces/{TRACE.hex()}", headers=PROTOBUF) as r:
        (span,) = (await r.json())["spans"]
    assert span["messages"] == [
        {
            "direction": "input",
            "role": "user",
            "source": "attribute",
            "parts": [{"type": "text", "content": "Is it waterproof?"}],
        }
    ]
    assert [(c["id"], c["content"], c["score"]) for c in span["chunks"]] == [
        ("doc-7", "IP68 rated.", 0.91)
    ]
    assert span["response_model"] == "m1-2024"
    assert span["resource"] == {"service.name": "shop", "host.name": "h1"}
    assert span["duration_s"] == 1.0
