"""Attribute drift: a version-naming attribute taking a value it never had is a change."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from agentfix import OPERATOR_KEY, READ_KEY
from proveai_agent.changes.drift import MAX_VALUES_PER_KEY, AttributeDrift
from proveai_agent.spans import Span


def span(i: int, service: str = "rag-api", **attributes) -> Span:
    return Span(
        trace_id=f"{i:032x}",
        span_id=f"{i:016x}",
        parent_span_id=None,
        service=service,
        name="chat",
        kind="SPAN_KIND_CLIENT",
        status="STATUS_CODE_OK",
        status_message="",
        start_ns=i * 1_000_000_000,
        end_ns=i * 1_000_000_000 + 1,
        attributes=attributes,
    )


def test_the_first_value_is_a_baseline_and_a_new_one_is_a_change():
    drift = AttributeDrift(["gen_ai.request.model"])
    assert drift.observe([span(1, **{"gen_ai.request.model": "m-1"})]) == []
    (change,) = drift.observe([span(2, **{"gen_ai.request.model": "m-2"})])
    assert (change.kind, change.service, change.before, change.after, change.at) == (
        "attribute",
        "rag-api",
        "m-1",
        "m-2",
        2.0,
    )
    assert change.source == "gen_ai.request.model"
    assert change.summary == "gen_ai.request.model of chat changed from m-1 to m-2"


def test_values_that_alternate_are_recorded_once_each():
    drift = AttributeDrift(["gen_ai.request.model"])
    models = ["a", "b", "a", "b", "a", "c", "b"]
    changes = drift.observe(
        [span(i, **{"gen_ai.request.model": m}) for i, m in enumerate(models)]
    )
    assert [(c.before, c.after) for c in changes] == [("a", "b"), ("b", "c")]


def test_services_drift_apart_and_resource_attributes_count():
    drift = AttributeDrift(["service.version"])
    first = span(1, service="a")
    first.resource = {"service.version": "1.0"}
    other = span(2, service="b")
    other.resource = {"service.version": "9.9"}
    upgraded = span(3, service="a")
    upgraded.resource = {"service.version": "1.1"}
    changes = drift.observe([first, other, upgraded])
    assert [(c.service, c.before, c.after) for c in changes] == [("a", "1.0", "1.1")]


def test_spans_sharing_a_resource_read_its_value_where_they_lack_their_own():
    # Spans decoded from one resource share its dict. The first span names the model itself;
    # the resource's model is a change for the second, which does not, and is scoped to the
    # service (""), not to the span's kind.
    drift = AttributeDrift(["gen_ai.request.model"])
    resource = {"gen_ai.request.model": "m-2"}
    drift.observe([span(1, **{"gen_ai.request.model": "m-1"})])
    drift.observe([span(2, service="rag-api")])  # no value anywhere: nothing learnt
    baseline = span(3)
    baseline.resource = {"gen_ai.request.model": "m-1"}
    drift.observe([baseline])
    own, lacking, again = span(4, **{"gen_ai.request.model": "m-1"}), span(5), span(6)
    for s in (own, lacking, again):
        s.resource = resource
    changes = drift.observe([own, lacking, again])
    assert [(c.before, c.after, c.at, c.summary) for c in changes] == [
        ("m-1", "m-2", 5.0, "gen_ai.request.model changed from m-1 to m-2")
    ]


def test_unlisted_attributes_and_odd_values_are_ignored():
    drift = AttributeDrift(["gen_ai.request.model"])
    drift.observe([span(1, **{"gen_ai.request.model": "m"})])
    assert drift.observe([span(2, **{"gen_ai.request.model": ["x"]}, other="y")]) == []
    assert drift.observe([span(3, **{"gen_ai.request.model": True})]) == []


def test_memory_stays_bounded_under_a_flood_of_values():
    drift = AttributeDrift(["gen_ai.request.model"], max_services=2)
    for i in range(10 * MAX_VALUES_PER_KEY):
        drift.observe([span(i, **{"gen_ai.request.model": f"m{i}"})])
    for i in range(100):
        drift.observe([span(i, service=f"s{i}", **{"gen_ai.request.model": "m"})])
    assert len(drift._seen) <= 2
    assert all(len(values) <= MAX_VALUES_PER_KEY for values in drift._seen.values())


def otlp(span_id: int, model: str) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="shop"))
    )
    rs.scope_spans.add().spans.append(
        PbSpan(
            trace_id=(1).to_bytes(16, "big"),
            span_id=span_id.to_bytes(8, "big"),
            name="chat",
            start_time_unix_nano=1_800_000_000_000_000_000 + span_id,
            end_time_unix_nano=1_800_000_000_500_000_000,
            attributes=[
                KeyValue(key="gen_ai.request.model", value=AnyValue(string_value=model))
            ],
        )
    )
    return req.SerializeToString()


async def test_a_model_change_in_ingested_spans_appears_in_the_change_log(agent, http):
    headers = {"Content-Type": "application/x-protobuf", "X-API-Key": OPERATOR_KEY}
    for span_id, model in ((1, "gpt-4o-mini"), (2, "gpt-4o-mini"), (3, "gpt-4.1-mini")):
        async with http.post(
            f"{agent.url}/v1/traces", data=otlp(span_id, model), headers=headers
        ) as r:
            assert r.status == 200
    async with http.get(
        f"{agent.url}/api/changes?service=shop", headers={"X-API-Key": READ_KEY}
    ) as r:
        items = (await r.json())["items"]
    assert [(c["kind"], c["before"], c["after"], c["source"]) for c in items] == [
        ("attribute", "gpt-4o-mini", "gpt-4.1-mini", "gen_ai.request.model")
    ]


def test_each_kind_of_span_drifts_on_its_own():
    # The embedding call and the chat call of one service name different models: both
    # values are baselines, and only the embedding model's move is a change, from its own
    # previous value.
    drift = AttributeDrift(["gen_ai.request.model"])
    embed = span(1, **{"gen_ai.request.model": "minilm", "gen_ai.operation.name": "embeddings"})
    embed.operation = "embeddings"
    chat = span(2, **{"gen_ai.request.model": "gpt-4o-mini", "gen_ai.operation.name": "chat"})
    chat.operation = "chat"
    assert drift.observe([embed, chat]) == []
    moved = span(
        3, **{"gen_ai.request.model": "bge-small", "gen_ai.operation.name": "embeddings"}
    )
    moved.operation = "embeddings"
    (change,) = drift.observe([moved, chat])
    assert (change.before, change.after) == ("minilm", "bge-small")
    assert (
        change.summary == "gen_ai.request.model of embeddings changed from minilm to bge-small"
    )


def test_values_in_use_side_by_side_are_learnt_during_the_warmup():
    # Warm-up of 300 s from the first span (t = 1 s): a second model at t = 100 s is learnt;
    # a third at t = 400 s, after the warm-up, is a change from the last one learnt.
    drift = AttributeDrift(["gen_ai.request.model"], warmup_s=300)
    assert drift.observe([span(1, **{"gen_ai.request.model": "gpt-4o"})]) == []
    assert drift.observe([span(100, **{"gen_ai.request.model": "gpt-4o-mini"})]) == []
    assert drift.observe([span(399, **{"gen_ai.request.model": "gpt-4o"})]) == []
    (change,) = drift.observe([span(400, **{"gen_ai.request.model": "o3-mini"})])
    assert (change.before, change.after, change.at) == ("gpt-4o-mini", "o3-mini", 400.0)


def test_agents_of_one_service_drift_apart():
    # Two agents of one service run different models: each is a baseline of its own.
    drift = AttributeDrift(["gen_ai.request.model"])
    planner = span(1, **{"gen_ai.request.model": "gpt-4o", "gen_ai.agent.name": "planner"})
    writer = span(2, **{"gen_ai.request.model": "gpt-4o-mini", "gen_ai.agent.name": "writer"})
    assert drift.observe([planner, writer]) == []
