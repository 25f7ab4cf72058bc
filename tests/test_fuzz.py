"""Hostile input, fuzzed: OTLP bodies and JSON API bodies against one real agent.

One agent runs for the whole module in a thread with its own event loop, and hypothesis
sends it many requests over real HTTP. Whatever arrives, the agent answers as the OTLP
spec and the API contracts say (OTLP: 200, 400, 413 or 415; the API: 2xx, 400, 404, 409,
413), never with a 5xx, keeps answering `/healthz`, stores nothing for a refused request
and loses nothing it accepted, and its memory stays flat. `bench/fuzz.py` runs the same
fuzzing for minutes.

The check functions return a list of problems (`"kind: detail"`) rather than asserting, so
that the benchmark can count them; the tests assert the list is empty.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import logging
import socket
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from agentfix import OPERATOR_KEY, agent_config
from proveai_agent.agent import Agent

BODY_LIMIT = 16 * 1024 * 1024
"""The agent's default body limit, before and after decompression (DESIGN: OTLP in)."""
OTLP_STATUSES = frozenset({200, 400, 413, 415})
"""What OTLP/HTTP answers a request with a valid key and no overload."""
PROTOBUF = "application/x-protobuf"
CONTENT_TYPES = (
    PROTOBUF,
    "application/protobuf",
    "application/x-protobuf; charset=binary",
    "application/json",
    "Application/JSON; charset=utf-8",
)
WRONG_CONTENT_TYPES = ("text/plain", "", "application/grpc", "multipart/form-data; x=y")
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SEED_SPAN = bytes.fromhex("00f067aa0ba902b7")
SETTINGS = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}


# The agent under fuzzing ------------------------------------------------------------------


@dataclass
class Target:
    """An agent seen from outside: its URL, its database and whether it is still alive."""

    url: str
    db_path: Path
    alive: Callable[[], bool]
    key: str = OPERATOR_KEY
    errors: list[str] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)


class AgentThread:
    """A real agent serving from its own event loop in a background thread."""

    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._loop_error)
        self.agent = Agent(agent_config(data_dir))
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.errors.append(f"event loop: {context.get('message')} {context.get('exception')!r}")

    def start(self) -> None:
        self._thread.start()
        self.call(self.agent.start())

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.agent.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
            self.loop.close()

    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()


class _ErrorLog(logging.Handler):
    """Collects the agent's and aiohttp's error logs: an unhandled exception shows there."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("aiohttp", "proveai_agent", "asyncio")):
            self.errors.append(f"{record.name}: {record.getMessage()[:300]}")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    running = AgentThread(tmp_path_factory.mktemp("fuzz") / "agent")
    handler = _ErrorLog(running.errors)
    logging.getLogger().addHandler(handler)
    running.start()
    try:
        assert running.agent.url is not None
        yield Target(
            running.agent.url,
            running.agent.config.db_path,
            running.alive,
            errors=running.errors,
        )
    finally:
        logging.getLogger().removeHandler(handler)
        running.stop()


# HTTP and what is stored ------------------------------------------------------------------


def send(
    target: Target, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers, body)."""
    connection = http.client.HTTPConnection(*target.address, timeout=60)
    try:
        connection.request(
            method, path, body=body, headers={"X-API-Key": target.key, **headers}
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def healthy(target: Target) -> bool:
    try:
        return target.alive() and send(target, "GET", "/healthz")[0] == 200
    except OSError:
        return False


def span_fingerprint(target: Target) -> tuple[int, ...]:
    """Counts and highest row ids of spans and span details: any write moves one of them
    (a span written again is deleted and inserted under a new row id)."""
    with sqlite3.connect(f"file:{target.db_path}?mode=ro", uri=True) as conn:
        spans = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM spans").fetchone()
        details = conn.execute(
            "SELECT count(*), coalesce(max(id), 0) FROM span_details"
        ).fetchone()
    return (*spans, *details)


def stored_ids(target: Target, ids: set[tuple[str, str]]) -> set[tuple[str, str]]:
    with sqlite3.connect(f"file:{target.db_path}?mode=ro", uri=True) as conn:
        return {
            pair
            for pair in ids
            if conn.execute(
                "SELECT 1 FROM spans WHERE trace_id = ? AND span_id = ?", pair
            ).fetchone()
        }


def vm_rss_mb() -> float:
    """This process' resident memory now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# The checks -------------------------------------------------------------------------------


@dataclass
class OtlpRequest:
    """A request to send to /v1/traces, with what is known about it in advance."""

    body: bytes
    content_type: str = PROTOBUF
    gzip: bool = False
    encoding: str | None = None
    span_ids: set[tuple[str, str]] | None = None
    """The (trace, span) ids of a well-formed request: all stored unless some are rejected."""

    def __repr__(self) -> str:
        head = self.body[:120]
        return (
            f"OtlpRequest({len(self.body)} bytes {head!r}..., content_type="
            f"{self.content_type!r}, gzip={self.gzip}, encoding={self.encoding!r})"
        )


def check_otlp(target: Target, request: OtlpRequest) -> list[str]:
    """Send one OTLP request; the problems with how the agent answered and what it stored."""
    body = request.body
    headers = {"Content-Type": request.content_type}
    if request.gzip:
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    if request.encoding is not None:
        headers["Content-Encoding"] = request.encoding
    before = span_fingerprint(target)
    try:
        status, answer_headers, answer = send(target, "POST", "/v1/traces", body, **headers)
    except OSError as exc:
        return [f"crash: no answer ({exc!r}) to {request!r}"]
    problems = []
    if status >= 500:
        problems.append(f"server_error: {status} {answer[:300]!r} for {request!r}")
    elif status not in OTLP_STATUSES:
        problems.append(f"wrong_status: {status} for {request!r}")
    wrong_type = request.content_type.split(";")[0].strip().lower() not in {
        t.split(";")[0].lower() for t in CONTENT_TYPES
    }
    if wrong_type and status != 415:
        problems.append(f"wrong_status: {status} for content type {request.content_type!r}")
    if status != 200:
        if span_fingerprint(target) != before:
            problems.append(f"stored_changed: a {status} answer stored spans for {request!r}")
        if 400 <= status < 500 and not _readable_status(answer, answer_headers):
            problems.append(f"unreadable: {status} answer {answer[:200]!r}")
    elif request.span_ids and PROTOBUF in answer_headers.get("Content-Type", ""):
        result = ExportTraceServiceResponse.FromString(answer)
        if not result.partial_success.rejected_spans:
            missing = request.span_ids - stored_ids(target, request.span_ids)
            if missing:
                problems.append(f"lost: {len(missing)} accepted spans not stored")
    if not healthy(target):
        problems.append(f"crash: /healthz does not answer after {request!r}")
    return problems


def _readable_status(answer: bytes, headers: dict[str, str]) -> bool:
    """An OTLP error carries a google.rpc.Status with a message, in the request's encoding."""
    if "json" in headers.get("Content-Type", ""):
        try:
            return bool(json.loads(answer).get("message"))
        except ValueError:
            return False
    # google.rpc.Status: field 2 (message) is a length-delimited UTF-8 string.
    return b"\x12" in answer and len(answer) > 4


@dataclass
class ApiRequest:
    """A JSON body for one of the API's POST routes."""

    path: str
    body: bytes

    def __repr__(self) -> str:
        return f"ApiRequest({self.path!r}, {len(self.body)} bytes {self.body[:200]!r}...)"


def api_state(target: Target, case_id: str) -> tuple[Any, ...]:
    """What a refused API request must not change: the case, the cases and the changes."""
    _, _, case = send(target, "GET", f"/api/cases/{case_id}")
    _, _, cases = send(target, "GET", "/api/cases?limit=1")
    _, _, changes = send(target, "GET", "/api/changes")
    return json.loads(case), json.loads(cases)["total"], len(json.loads(changes)["items"])


def check_api(
    target: Target, request: ApiRequest, case_id: str, accepted: set[int]
) -> list[str]:
    """Send one API body; the problems with the answer and with what changed."""
    before = api_state(target, case_id)
    try:
        status, _, answer = send(
            target, "POST", request.path, request.body, **{"Content-Type": "application/json"}
        )
    except OSError as exc:
        return [f"crash: no answer ({exc!r}) to {request!r}"]
    problems = []
    if status >= 500 and not (status == 502 and request.path.endswith("/ticket")):
        problems.append(f"server_error: {status} {answer[:300]!r} for {request!r}")
    elif status not in accepted | {400, 404, 409, 413}:
        problems.append(f"wrong_status: {status} for {request!r}")
    if status >= 400 and status != 502:
        try:
            message = json.loads(answer).get("error")
        except (ValueError, AttributeError):
            message = None
        if not isinstance(message, str) or not message:
            problems.append(f"unreadable: {status} answer {answer[:200]!r} for {request!r}")
        if api_state(target, case_id) != before:
            problems.append(f"stored_changed: a {status} answer changed data for {request!r}")
    if not healthy(target):
        problems.append(f"crash: /healthz does not answer after {request!r}")
    return problems


# Protobuf strategies ----------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_any_value(depth: int, kvlist: bool) -> bytes:
    """An AnyValue nested `depth` levels deep, encoded by hand: protobuf's own classes cannot
    build or serialise what its parser refuses. Lengths are worked out inside out first, so
    the encoding costs O(depth)."""
    inner = _field(1, b"leaf")  # AnyValue.string_value
    # kvlist: AnyValue.kvlist_value(6) → KeyValueList.values(1) → KeyValue{key(1), value(2)}
    # array:  AnyValue.array_value(5) → ArrayValue.values(1) → AnyValue
    key = _field(1, b"k") if kvlist else b""
    outer_tag = _varint((6 if kvlist else 5) << 3 | 2)
    item_tag = _varint(1 << 3 | 2)
    value_tag = _varint(2 << 3 | 2)
    heads = []
    size = len(inner)
    for _ in range(depth):
        if kvlist:
            pair = len(key) + len(value_tag) + len(_varint(size)) + size
            head = item_tag + _varint(pair) + key + value_tag + _varint(size)
            list_size = len(item_tag) + len(_varint(pair)) + pair
        else:
            head = item_tag + _varint(size)
            list_size = len(head) + size
        head = outer_tag + _varint(list_size) + head
        heads.append(head)
        size += len(head)
    return b"".join(reversed(heads)) + inner


def request_of(spans: list[bytes], resource: bytes = b"") -> bytes:
    """ExportTraceServiceRequest bytes from serialised spans (possibly hand-made ones)."""
    scope = b"".join(_field(2, span) for span in spans)  # ScopeSpans.spans
    resource_spans = _field(1, resource) + _field(2, scope)  # resource, scope_spans
    return _field(1, resource_spans)  # ExportTraceServiceRequest.resource_spans


RESOURCE = _field(1, _field(1, b"service.name") + _field(2, _field(1, b"fuzz")))
"""Resource{attributes: [service.name = "fuzz"]}."""

int64s = st.integers(-(2**63), 2**63 - 1)
uint64s = st.one_of(
    st.integers(0, 2**64 - 1), st.integers(1_700_000_000_000_000_000, 1_800_000_000_000_000_000)
)
edge_numbers = st.one_of(
    st.sampled_from([1e300, -1e300, 2.0**63, 2.0**64, 1.5, -1.0, 0.0]).map(
        lambda v: AnyValue(double_value=v)
    ),
    st.sampled_from([float("inf"), float("-inf"), float("nan")]).map(
        lambda v: AnyValue(double_value=v)
    ),
    st.sampled_from([2**63 - 1, -(2**63), -1, 0]).map(lambda v: AnyValue(int_value=v)),
    st.sampled_from(["1e300", "NaN", "-1", "9" * 30]).map(lambda v: AnyValue(string_value=v)),
)
"""Numbers at the edges of what a count, a score or a duration can be."""
scalar_values = st.one_of(
    edge_numbers,
    st.text(max_size=30).map(lambda v: AnyValue(string_value=v)),
    st.booleans().map(lambda v: AnyValue(bool_value=v)),
    int64s.map(lambda v: AnyValue(int_value=v)),
    st.floats().map(lambda v: AnyValue(double_value=v)),
    st.binary(max_size=30).map(lambda v: AnyValue(bytes_value=v)),
    st.just(AnyValue()),
)


def _array(items: list[AnyValue]) -> AnyValue:
    value = AnyValue()
    value.array_value.values.extend(items)
    return value


def _kvlist(items: dict[str, AnyValue]) -> AnyValue:
    value = AnyValue()
    value.kvlist_value.values.extend(KeyValue(key=k, value=v) for k, v in items.items())
    return value


any_values = st.recursive(
    scalar_values,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_array),
        st.dictionaries(st.text(max_size=8), inner, max_size=4).map(_kvlist),
    ),
    max_leaves=12,
)
attribute_keys = st.one_of(
    st.sampled_from(
        [
            "gen_ai.request.model",
            "gen_ai.system",
            "gen_ai.provider.name",
            "gen_ai.operation.name",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.prompt_tokens",
            "gen_ai.usage.output_tokens",
            "gen_ai.prompt",
            "gen_ai.completion",
            "gen_ai.evaluation.score",
            "gen_ai.response.time_to_first_token",
            "service.name",
            "llm.input_messages",
        ]
    ),
    st.text(max_size=20),
)
attributes = st.lists(st.builds(KeyValue, key=attribute_keys, value=any_values), max_size=6)
ids16 = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20))
ids8 = st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10))
events = st.builds(
    PbSpan.Event,
    time_unix_nano=uint64s,
    name=st.sampled_from(["gen_ai.evaluation.result", "gen_ai.content.prompt", "x"]),
    attributes=attributes,
)


@st.composite
def pb_spans(draw: st.DrawFn) -> PbSpan:
    start = draw(uint64s)
    return PbSpan(
        trace_id=draw(ids16),
        span_id=draw(ids8),
        parent_span_id=draw(st.one_of(st.just(b""), ids8)),
        name=draw(st.text(max_size=40)),
        kind=draw(st.one_of(st.integers(0, 5), st.integers(-(2**31), 2**31 - 1))),
        start_time_unix_nano=start,
        end_time_unix_nano=draw(st.one_of(st.just(start), uint64s)),
        attributes=draw(attributes),
        events=draw(st.lists(events, max_size=3)),
        status=Status(code=draw(st.integers(0, 4)), message=draw(st.text(max_size=20))),
    )


def span_ids_of(spans: list[PbSpan]) -> set[tuple[str, str]]:
    return {(s.trace_id.hex(), s.span_id.hex()) for s in spans}


def valid_request(spans: list[PbSpan]) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="fuzz"))
    )
    resource_spans.scope_spans.add().spans.extend(spans)
    return request.SerializeToString()


content_types = st.sampled_from(CONTENT_TYPES[:3])


@st.composite
def random_protobuf(draw: st.DrawFn) -> OtlpRequest:
    return OtlpRequest(
        draw(st.binary(max_size=2048)), draw(content_types), gzip=draw(st.booleans())
    )


@st.composite
def mutated_protobuf(draw: st.DrawFn) -> OtlpRequest:
    """A valid request with bytes flipped, inserted, deleted or cut off."""
    body = bytearray(valid_request(draw(st.lists(pb_spans(), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, max(len(body) - 1, 0)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut", "varint"]))
        if action == "flip" and body:
            body[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            body[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del body[where : where + draw(st.integers(1, 8))]
        elif action == "cut":
            del body[where:]
        else:  # a length that claims far more than there is
            body[where:where] = b"\x0a\xff\xff\xff\xff\x07"
    return OtlpRequest(bytes(body), draw(content_types), gzip=draw(st.booleans()))


@st.composite
def well_formed_protobuf(draw: st.DrawFn) -> OtlpRequest:
    spans = draw(st.lists(pb_spans(), min_size=1, max_size=4))
    return OtlpRequest(
        valid_request(spans), draw(content_types), draw(st.booleans()), None, span_ids_of(spans)
    )


def _good_span(draw: st.DrawFn, **fields: Any) -> PbSpan:
    return PbSpan(
        trace_id=draw(st.binary(min_size=16, max_size=16).filter(any)),
        span_id=draw(st.binary(min_size=8, max_size=8).filter(any)),
        name="hostile",
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_001_000_000_000,
        **fields,
    )


INVALID_UTF8 = (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80")


@st.composite
def hostile_protobuf(draw: st.DrawFn) -> OtlpRequest:
    """Valid messages with hostile content: huge values, very many attributes or events,
    deeply nested values, invalid UTF-8 in strings."""
    kind = draw(
        st.sampled_from(["huge", "many_attributes", "many_events", "deep", "utf8", "ids"])
    )
    if kind == "huge":
        size = draw(st.sampled_from([64 * 1024 + 1, 1 << 20, 5 << 20]))
        letter = draw(st.characters(codec="utf-8", exclude_categories=["Cs"]))
        key = draw(attribute_keys)
        where = draw(st.sampled_from(["attribute", "name", "status", "bytes", "event"]))
        text = letter * (size // len(letter.encode()))
        if where == "attribute":
            span = _good_span(
                draw, attributes=[KeyValue(key=key, value=AnyValue(string_value=text))]
            )
        elif where == "name":
            span = _good_span(draw)
            span.name = text
        elif where == "status":
            span = _good_span(draw, status=Status(code=2, message=text))
        elif where == "bytes":
            span = _good_span(
                draw, attributes=[KeyValue(key=key, value=AnyValue(bytes_value=b"\x01" * size))]
            )
        else:
            event = PbSpan.Event(
                name="gen_ai.content.prompt",
                attributes=[KeyValue(key="gen_ai.prompt", value=AnyValue(string_value=text))],
            )
            span = _good_span(draw, events=[event])
        return OtlpRequest(
            valid_request([span]), gzip=draw(st.booleans()), span_ids=span_ids_of([span])
        )
    if kind == "many_attributes":
        count = draw(st.integers(1000, 20_000))
        pairs = [KeyValue(key=f"k{i}", value=AnyValue(int_value=i)) for i in range(count)]
        span = _good_span(draw, attributes=pairs)
        return OtlpRequest(
            valid_request([span]), gzip=draw(st.booleans()), span_ids=span_ids_of([span])
        )
    if kind == "many_events":
        count = draw(st.integers(1000, 20_000))
        span = _good_span(draw, events=[PbSpan.Event(name=f"e{i}") for i in range(count)])
        return OtlpRequest(
            valid_request([span]), gzip=draw(st.booleans()), span_ids=span_ids_of([span])
        )
    if kind == "deep":
        depth = draw(st.one_of(st.integers(1, 40), st.integers(90, 110), st.just(100_000)))
        value = deep_any_value(depth, draw(st.booleans()))
        attribute = _field(1, b"deep") + _field(2, value)
        span = _good_span(draw).SerializeToString() + _field(9, attribute)  # Span.attributes
        return OtlpRequest(request_of([span], RESOURCE), gzip=draw(st.booleans()))
    if kind == "utf8":
        bad = draw(st.binary(max_size=4)) + draw(st.sampled_from(INVALID_UTF8))
        where = draw(st.sampled_from(["name", "key", "value", "status", "resource"]))
        span = _good_span(draw).SerializeToString()
        resource = RESOURCE
        if where == "name":
            span += _field(5, bad)  # Span.name; the last value of a field wins
        elif where == "key":
            span += _field(9, _field(1, bad) + _field(2, _field(1, b"v")))
        elif where == "value":
            span += _field(9, _field(1, b"k") + _field(2, _field(1, bad)))
        elif where == "status":
            span += _field(15, _field(2, bad))  # Span.status.message
        else:
            resource = _field(1, _field(1, b"service.name") + _field(2, _field(1, bad)))
        return OtlpRequest(request_of([span], resource), gzip=draw(st.booleans()))
    spans = [
        PbSpan(
            trace_id=draw(st.sampled_from([b"", b"\x00" * 16, b"\x01" * 15, b"\x01" * 17])),
            span_id=draw(st.sampled_from([b"", b"\x00" * 8, b"\x01" * 7, b"\x01" * 8])),
            parent_span_id=draw(st.sampled_from([b"", b"\x00" * 8, b"\x02" * 3])),
            start_time_unix_nano=draw(uint64s),
            end_time_unix_nano=draw(uint64s),
        )
    ]
    return OtlpRequest(valid_request(spans), gzip=draw(st.booleans()))


# JSON strategies --------------------------------------------------------------------------

big_numbers = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([10**400, -(10**400), 2**63, 2**64])
)
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
"""Lone UTF-16 surrogates: json.dumps writes them as \\udxxx escapes, valid JSON that is
not valid Unicode."""
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    big_numbers,
    st.floats(),
    st.text(max_size=30),
    surrogates,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's valid value, or anything at all in its place."""
    return st.one_of(valid, valid, json_values)


hex_ids16 = st.one_of(st.just(TRACE.hex()), st.binary(min_size=16, max_size=16).map(bytes.hex))
hex_ids8 = st.binary(min_size=8, max_size=8).map(bytes.hex)
json_any_values = st.recursive(
    st.one_of(
        st.builds(lambda v: {"stringValue": v}, maybe(st.text(max_size=20))),
        st.builds(lambda v: {"intValue": v}, maybe(st.one_of(int64s.map(str), big_numbers))),
        st.builds(
            lambda v: {"doubleValue": v},
            maybe(st.one_of(st.floats(), st.sampled_from(["Infinity", "NaN", "1e300", 1e300]))),
        ),
        st.builds(lambda v: {"boolValue": v}, maybe(st.booleans())),
        st.builds(lambda v: {"bytesValue": v}, maybe(st.sampled_from(["AAEC", "!!", ""]))),
        st.just({}),
    ),
    lambda inner: st.one_of(
        st.builds(lambda v: {"arrayValue": {"values": v}}, st.lists(inner, max_size=3)),
        st.builds(
            lambda v: {"kvlistValue": {"values": [{"key": k, "value": x} for k, x in v]}},
            st.lists(st.tuples(maybe(st.text(max_size=6)), inner), max_size=3),
        ),
    ),
    max_leaves=10,
)
json_attributes = st.lists(
    st.fixed_dictionaries({"key": maybe(attribute_keys), "value": maybe(json_any_values)}),
    max_size=5,
)


@st.composite
def json_spans(draw: st.DrawFn) -> dict[str, Any]:
    """A span in OTLP JSON where any field may hold a value of the wrong type."""
    span: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {
                "traceId": maybe(hex_ids16),
                "spanId": maybe(hex_ids8),
                "name": maybe(st.text(max_size=20)),
                "startTimeUnixNano": maybe(uint64s.map(str)),
                "endTimeUnixNano": maybe(uint64s.map(str)),
            },
            optional={
                "parentSpanId": maybe(hex_ids8),
                "kind": maybe(st.sampled_from([1, 2, "SPAN_KIND_CLIENT", "SERVER", 99])),
                "attributes": maybe(json_attributes),
                "events": maybe(
                    st.lists(
                        st.fixed_dictionaries(
                            {
                                "name": maybe(st.text(max_size=10)),
                                "timeUnixNano": maybe(uint64s.map(str)),
                                "attributes": maybe(json_attributes),
                            }
                        ),
                        max_size=2,
                    )
                ),
                "status": maybe(
                    st.fixed_dictionaries(
                        {"code": maybe(st.sampled_from([0, 1, 2, "STATUS_CODE_ERROR"]))},
                        optional={"message": maybe(st.text(max_size=10))},
                    )
                ),
            },
        )
    )
    return span


@st.composite
def json_documents(draw: st.DrawFn) -> Any:
    """ExportTraceServiceRequest documents, mostly well formed, with junk in any place."""
    resource = maybe(st.fixed_dictionaries({"attributes": maybe(json_attributes)}))
    scope = st.fixed_dictionaries({"spans": maybe(st.lists(json_spans(), max_size=3))})
    resource_spans = st.fixed_dictionaries(
        {"resource": resource, "scopeSpans": maybe(st.lists(maybe(scope), max_size=2))}
    )
    return draw(
        st.one_of(
            st.fixed_dictionaries(
                {"resourceSpans": maybe(st.lists(maybe(resource_spans), max_size=2))}
            ),
            json_values,
        )
    )


def dumps(value: Any) -> bytes:
    """JSON text as Python writes it: NaN and Infinity included, as many senders do."""
    return json.dumps(value).encode()


@st.composite
def json_bodies(draw: st.DrawFn) -> OtlpRequest:
    body = dumps(draw(json_documents()))
    mangle = draw(st.sampled_from(["none", "none", "bad_utf8", "surrogate", "cut", "bom"]))
    if mangle == "bad_utf8":
        where = draw(st.integers(0, len(body)))
        body = body[:where] + draw(st.sampled_from(INVALID_UTF8)) + body[where:]
    elif mangle == "surrogate":
        body = body.replace(b'"', b'"\\ud800', 1)
    elif mangle == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif mangle == "bom":
        body = "\ufeff".encode() + body
    content_type = draw(st.sampled_from(CONTENT_TYPES[3:]))
    return OtlpRequest(body, content_type, gzip=draw(st.booleans()))


def deep_json(depth: int, kind: str) -> bytes:
    """JSON nested `depth` levels deep, as an array, an object or an AnyValue inside a span."""
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    head = (
        b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"'
        + TRACE.hex().encode()
        + b'","spanId":"00f067aa0ba902b8","attributes":[{"key":"deep","value":'
    )
    level = b'{"kvlistValue":{"values":[{"key":"k","value":'
    return head + level * depth + b"{}" + b"}]}}" * depth + b"}]}]}]}]}"


# OTLP tests -------------------------------------------------------------------------------


def assert_no_problems(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def seed(target: Target) -> None:
    """One stored span, so that 'nothing changed' is checked against real data."""
    body = valid_request([_fixed_span()])
    assert send(target, "POST", "/v1/traces", body, **{"Content-Type": PROTOBUF})[0] == 200


@pytest.fixture(scope="module", autouse=True)
def seeded(target: Target) -> None:
    seed(target)


def _fixed_span() -> PbSpan:
    return PbSpan(
        trace_id=TRACE,
        span_id=SEED_SPAN,
        name="seed",
        kind=PbSpan.SPAN_KIND_SERVER,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_500_000_000,
    )


@pytest.fixture(autouse=True)
def no_logged_errors(target: Target) -> Iterator[None]:
    """An unhandled exception anywhere in the agent is a failure, even if answered well."""
    target.errors.clear()
    yield
    assert not target.errors, "\n".join(target.errors[:10])


@settings(max_examples=120, **SETTINGS)
@given(request=st.one_of(random_protobuf(), mutated_protobuf(), well_formed_protobuf()))
def test_any_protobuf_body_is_answered_by_the_spec_and_nothing_refused_is_stored(
    target, request
):
    assert_no_problems(check_otlp(target, request))


@settings(max_examples=60, **SETTINGS)
@given(request=hostile_protobuf())
def test_hostile_protobuf_content_is_bounded_or_refused_never_a_server_error(target, request):
    assert_no_problems(check_otlp(target, request))


@settings(max_examples=120, **SETTINGS)
@given(request=json_bodies())
def test_any_json_body_is_answered_by_the_spec_and_nothing_refused_is_stored(target, request):
    assert_no_problems(check_otlp(target, request))


@settings(max_examples=30, **SETTINGS)
@given(
    request=st.one_of(
        st.builds(
            OtlpRequest,
            st.binary(max_size=512),
            st.sampled_from(WRONG_CONTENT_TYPES),
            st.booleans(),
        ),
        st.builds(
            OtlpRequest,
            st.binary(max_size=512),
            content_types,
            st.just(False),
            st.sampled_from(["br", "deflate", "gzip, br", "x-gzip", "GZIP"]),
        ),
        st.builds(
            OtlpRequest,
            st.binary(max_size=512).map(lambda b: b"\x1f\x8b\x08\x00" + b),
            content_types,
            st.just(False),
            st.just("gzip"),
        ),
    )
)
def test_unknown_content_types_and_encodings_and_broken_gzip_are_refused(target, request):
    assert_no_problems(check_otlp(target, request))


@pytest.mark.parametrize(
    ("depth", "kind"),
    [(100_000, "array"), (100_000, "object"), (100_000, "anyvalue"), (17, "anyvalue")],
)
def test_json_nested_a_hundred_thousand_levels_is_400(target, depth, kind):
    problems = check_otlp(target, OtlpRequest(deep_json(depth, kind), "application/json"))
    assert_no_problems(problems)
    status, _, answer = send(
        target,
        "POST",
        "/v1/traces",
        deep_json(depth, kind),
        **{"Content-Type": "application/json"},
    )
    if depth < 1000:  # the request decodes; its one span is rejected for its depth
        assert status == 200
        assert json.loads(answer)["partialSuccess"]["rejectedSpans"] in ("1", 1)
    else:
        assert status == 400
        assert "deep" in json.loads(answer)["message"]


def gzip_bomb(inflated: int) -> bytes:
    """A gzip member of `inflated` zero bytes, built from one compressed block repeated:
    after a full flush a deflate stream keeps no state, so each further 1 MiB of zeros
    compresses to the same bytes. Deflate inflates at most about 1032:1."""
    chunk = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = inflated // len(chunk)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    tail = compressor.flush(zlib.Z_FINISH)[:-8]  # the final empty block, without its trailer
    trailer = crc.to_bytes(4, "little") + (count * len(chunk) % 2**32).to_bytes(4, "little")
    return first + block * (count - 1) + tail + trailer


def test_gzip_bomb_builder_makes_valid_gzip():
    bomb = gzip_bomb(4 << 20)
    assert gzip.decompress(bomb) == bytes(4 << 20)


def test_gzip_bomb_of_a_gibibyte_is_413_without_inflating_it(target):
    bomb = gzip_bomb(1 << 30)
    assert len(bomb) < 1.1 * 1024 * 1024  # 1 MiB on the wire, well under the 16 MiB limit
    before = span_fingerprint(target)
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM)
    rss = vm_rss_mb()
    status, _, answer = send(
        target,
        "POST",
        "/v1/traces",
        bomb,
        **{"Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
    )
    peak = _hwm_mb()
    assert status == 413
    assert b"exceeds" in answer
    assert span_fingerprint(target) == before
    # Inflating it all would take 1024 MiB; the agent stops at its 16 MiB limit, and holds
    # the compressed body, the inflated part and a copy of each at most: < 100 MiB.
    assert peak - rss < 100
    assert healthy(target)


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


# JSON API tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def case(target: Target) -> dict[str, Any]:
    return open_case(target)


def open_case(target: Target) -> dict[str, Any]:
    """A manual case on the seeded trace, as the fuzzed case routes' subject, once the
    engine has analysed it."""
    status, _, answer = send(
        target,
        "POST",
        "/api/cases",
        dumps({"trace_id": TRACE.hex(), "title": "fuzzed"}),
        **{"Content-Type": "application/json"},
    )
    assert status == 201, answer
    doc = json.loads(answer)
    for _ in range(200):  # the engine's analysis changes the case once, soon after it opens
        _, _, answer = send(target, "GET", f"/api/cases/{doc['id']}")
        if any(event["type"] == "analysis" for event in json.loads(answer)["timeline"]):
            return doc
        time.sleep(0.05)
    raise AssertionError(f"the engine did not analyse {doc['id']}")


STATES = [
    "DETECTED",
    "TRIAGED",
    "INVESTIGATING",
    "REMEDIATION_SUGGESTED",
    "FIX_APPLIED",
    "VERIFYING",
    "RESOLVED",
    "CLOSED",
]
short_texts = st.one_of(st.text(max_size=40), st.just(""), st.just("   "), surrogates)
huge_texts = st.sampled_from([2001, 10_001, 70_000, 1 << 20]).map(lambda n: "x" * n)
texts = maybe(st.one_of(short_texts, huge_texts))


def api_bodies(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[bytes]:
    """A route's body: its fields (each maybe of a wrong type, or missing), or any JSON at
    all, or deep nesting, or bytes that are not JSON."""
    shaped = st.fixed_dictionaries({}, optional=fields).map(dumps)
    return st.one_of(
        shaped,
        shaped,
        shaped,
        json_values.map(dumps),
        st.sampled_from([100, 100_000]).map(lambda d: deep_json(d, "object")),
        st.sampled_from([100_000]).map(lambda d: deep_json(d, "array")),
        st.binary(max_size=64),
        st.just(b'{"actor": "\xff\xfe"}'),
        st.just(b'{"actor": "\\ud800", "text": "\\udfff", "summary": "\\ud800"}'),
        st.sampled_from([(64 << 10) + 1, (1 << 20) + 1]).map(lambda n: b'"' + b"x" * n + b'"'),
    )


CHANGE_FIELDS = {
    "service": texts,
    "summary": texts,
    "kind": maybe(st.sampled_from(["deploy", "file", "attribute", "other"])),
    "time": maybe(
        st.one_of(
            st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "yesterday"]),
            big_numbers,
            st.floats(),
        )
    ),
    "before": texts,
    "after": texts,
    "version": texts,
}
CASE_FIELDS = {
    "trace_id": maybe(st.one_of(st.just(TRACE.hex()), hex_ids16, st.text(max_size=40))),
    "title": texts,
}
TRANSITION_FIELDS = {
    "to": maybe(st.sampled_from(STATES)),
    "actor": texts,
    "note": texts,
    "suggestion_id": texts,
    "root_cause": texts,
    "fix": texts,
    "reason": maybe(st.sampled_from(["false_positive", "duplicate", "wont_fix", "nope"])),
    "duplicate_of": maybe(st.sampled_from(["CASE-1", "CASE-999999", "CASE-x"])),
    "severity": maybe(st.sampled_from(["critical", "high", "medium", "low", "urgent"])),
    "owner": texts,
}
NOTE_FIELDS = {"actor": texts, "text": texts}
FEEDBACK_FIELDS = {
    "suggestion_id": texts,
    "helpful": maybe(st.booleans()),
    "actor": texts,
    "note": texts,
}
TICKET_FIELDS = {"system": maybe(st.sampled_from(["github", "jira", "gitlab"])), "actor": texts}


ROUTES = {
    "changes": ("/api/changes", CHANGE_FIELDS, {201}),
    "case": ("/api/cases", CASE_FIELDS, {201}),
    "transition": ("/api/cases/{case}/transition", TRANSITION_FIELDS, {200}),
    "notes": ("/api/cases/{case}/notes", NOTE_FIELDS, {201}),
    "feedback": ("/api/cases/{case}/feedback", FEEDBACK_FIELDS, {200}),
    "ticket": ("/api/cases/{case}/ticket", TICKET_FIELDS, {201}),
}
"""Every JSON body route: its path, its body's fields and the success statuses it answers."""


@pytest.mark.parametrize("route", ROUTES)
@settings(max_examples=40, **SETTINGS)
@given(
    body=st.data(),
    which=st.sampled_from(["the case", "the case", "CASE-999999", "nonsense"]),
)
def test_any_api_body_is_a_readable_400_or_is_applied_never_a_server_error(
    target, case, route, body, which
):
    path, fields, ok = ROUTES[route]
    path = path.format(case=case["id"] if which == "the case" else which)
    request = ApiRequest(path, body.draw(api_bodies(fields)))
    assert_no_problems(check_api(target, request, case["id"], ok))


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("changes", b'{"service": "a", "summary": "b", "time": 1' + b"0" * 400 + b"}"),
        ("changes", b'{"service": "a", "summary": "\\ud800"}'),
        ("case", b'{"trace_id": "' + TRACE.hex().encode() + b'", "title": "\\udfff"}'),
        ("notes", b'{"actor": "a", "text": "x\\ud800"}'),
        ("transition", b'{"to": "TRIAGED", "actor": "\\udc00"}'),
        ("ticket", b'{"system": "github", "actor": "\\ud800"}'),
    ],
)
def test_bodies_that_once_were_server_errors_are_400(target, case, route, body):
    """A time past a float's range, and lone surrogates, which JSON allows but no UTF-8
    store holds: each was a 500 before."""
    path = ROUTES[route][0].format(case=case["id"])
    assert_no_problems(check_api(target, ApiRequest(path, body), case["id"], set()))
    status, _, answer = send(target, "POST", path, body, **{"Content-Type": "application/json"})
    assert status == 400
    assert json.loads(answer)["error"]


def test_api_body_arriving_in_pieces_is_read_whole(target, case):
    """A body that reaches the agent in several reads is one body, not its first piece."""
    body = dumps({"actor": "a", "text": "n" * 5000})
    raw = socket.create_connection(target.address, timeout=30)
    try:
        raw.sendall(
            f"POST /api/cases/{case['id']}/notes HTTP/1.1\r\nHost: agent\r\n"
            f"X-API-Key: {target.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        raw.sendall(body[:100])
        time.sleep(0.2)  # the first piece is read before the rest arrives
        raw.sendall(body[100:])
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    finally:
        raw.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]


def test_api_body_over_its_limit_is_413_in_the_error_shape(target, case):
    body = dumps({"actor": "a", "text": "x" * (64 * 1024)})
    status, _, answer = send(
        target,
        "POST",
        f"/api/cases/{case['id']}/notes",
        body,
        **{"Content-Type": "application/json"},
    )
    assert status == 413
    assert "65536" in json.loads(answer)["error"]


def test_log_record_with_a_time_past_int64_is_rejected_not_a_store_failure(target):
    """A GenAI log record's time is stored as a signed 64-bit integer: a later one was a 503
    (the store refusing the whole write), which a sender retries for ever."""
    before = span_fingerprint(target)
    record = {
        "eventName": "gen_ai.user.message",
        "traceId": TRACE.hex(),
        "spanId": SEED_SPAN.hex(),
        "timeUnixNano": str(2**63),
        "body": {"stringValue": "hello"},
    }
    document = {"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}
    status, _, answer = send(
        target, "POST", "/v1/logs", dumps(document), **{"Content-Type": "application/json"}
    )
    assert status == 200
    partial = json.loads(answer)["partialSuccess"]
    assert partial["rejectedLogRecords"] in ("1", 1)
    assert "64-bit" in partial["errorMessage"]
    assert span_fingerprint(target) == before


@pytest.mark.parametrize(
    "tokens",
    [AnyValue(double_value=1e300), AnyValue(double_value=2.0**63), AnyValue(int_value=-1)],
)
def test_span_with_an_impossible_token_count_is_stored_without_it(target, tokens):
    """A count past a signed 64-bit integer was a 503 (the store refusing the write)."""
    span = _fixed_span()
    span.span_id = bytes.fromhex("00f067aa0ba902c1")
    span.attributes.append(KeyValue(key="gen_ai.usage.input_tokens", value=tokens))
    status, _, _ = send(
        target, "POST", "/v1/traces", valid_request([span]), **{"Content-Type": PROTOBUF}
    )
    assert status == 200
    _, _, answer = send(target, "GET", f"/api/traces/{TRACE.hex()}")
    stored = [s for s in json.loads(answer)["spans"] if s["span_id"] == span.span_id.hex()]
    assert [s["input_tokens"] for s in stored] == [None]


# Memory -----------------------------------------------------------------------------------


@st.composite
def heavy_requests(draw: st.DrawFn) -> OtlpRequest:
    """Requests of 1 MiB or more, each unlike any other, accepted or refused."""
    nonce = draw(st.binary(min_size=16, max_size=16)).hex()
    text = (nonce * ((1 << 20) // len(nonce) + 1))[: 1 << 20]
    kind = draw(st.sampled_from(["protobuf", "bad_utf8", "json", "json_junk"]))
    value = AnyValue(string_value=text)
    span = _good_span(draw, attributes=[KeyValue(key="gen_ai.prompt", value=value)])
    if kind == "protobuf":
        return OtlpRequest(valid_request([span]), gzip=draw(st.booleans()))
    if kind == "bad_utf8":  # refused: the attribute's last bytes are not UTF-8
        return OtlpRequest(valid_request([span])[:-8] + b"\xff" * 8)
    if kind == "json":
        attribute = {"key": "gen_ai.prompt", "value": {"stringValue": text}}
        document = {
            "resourceSpans": [
                {"scopeSpans": [{"spans": [{**_json_span(draw), "attributes": [attribute]}]}]}
            ]
        }
        return OtlpRequest(dumps(document), "application/json", gzip=draw(st.booleans()))
    return OtlpRequest(dumps({"resourceSpans": [{"x": text}]}), "application/json")


def _json_span(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "traceId": draw(st.binary(min_size=16, max_size=16).filter(any)).hex(),
        "spanId": draw(st.binary(min_size=8, max_size=8).filter(any)).hex(),
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000001000000000",
    }


def test_memory_stays_flat_under_heavy_hostile_requests(target):
    """160 requests of at least 1 MiB each, unlike one another. If the agent kept any part
    of the last 120 (their bodies, their decoded spans), its memory would grow by 120 MiB or
    more; the allocator's and SQLite's caches, filled by the first 40, account for far less
    than the 50 MiB allowed."""
    readings: list[float] = []

    @settings(max_examples=160, **SETTINGS)
    @given(request=heavy_requests())
    def fuzz(request: OtlpRequest) -> None:
        assert_no_problems(check_otlp(target, request))
        readings.append(vm_rss_mb())

    fuzz()
    assert len(readings) >= 150
    growth = readings[-1] - readings[39]
    assert growth < 50, (
        f"resident memory grew {growth:.1f} MiB over {len(readings) - 40} requests"
    )
