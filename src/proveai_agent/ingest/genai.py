"""GenAI semantic-convention normalisation: one record however the instrumentation spells it.

`annotate` fills the GenAI fields of a decoded `Span` from its attributes and events;
`log_details` turns one GenAI OTLP log record into `SpanDetail` records. Both take plain Python
values (the decoder has already turned AnyValues into str, int, float, bool, list, dict, and
bytes into lowercase hex) and never raise on odd input: a value of the wrong type is ignored.

Where several spellings exist the current one wins and the others are ignored, so a span that
carries both is counted once.

Span fields (first usable value wins):

- model: `gen_ai.request.model`; response_model: `gen_ai.response.model`;
  operation: `gen_ai.operation.name`; provider: `gen_ai.provider.name`, `gen_ai.system`.
- input_tokens: `gen_ai.usage.input_tokens`, `gen_ai.usage.prompt_tokens`;
  output_tokens: `gen_ai.usage.output_tokens`, `gen_ai.usage.completion_tokens`. A count is a
  non-negative integer (an integral double is accepted); anything else is unknown (None).
- finish_reasons: `gen_ai.response.finish_reasons` as an array, a JSON array string or a string
  delimited by "," or ";"; else the `finish_reason` of the output messages chosen below.
- ttft_s: `gen_ai.response.time_to_first_chunk`, `gen_ai.server.time_to_first_token`
  (seconds); else the first span event whose name, lowercased and stripped of "_", "-", "."
  and spaces, contains "firsttoken" or "firstchunk", measured from the span start.

Messages, `{"direction": "system"|"input"|"output", "role", "parts", "source"}`; parts are
`{"type": "text", "content": str}` or the current convention's other part types as sent
(`tool_call`, `tool_call_response`, ...). The input side (system and input) and the output side
each come from the first of these sources that has any:

1. attributes `gen_ai.system_instructions` (parts), `gen_ai.input.messages`,
   `gen_ai.output.messages` (messages with `role` and `parts`, or `content`); JSON strings or
   already structured arrays;
2. span events `gen_ai.system.message`, `gen_ai.user.message`, `gen_ai.assistant.message`,
   `gen_ai.tool.message`, `gen_ai.choice` (the body-like content in the event attributes
   `content`, `role`, `tool_calls`, `id`, `message`, `finish_reason`, or a kvlist attribute
   `body`, or a JSON attribute `gen_ai.event.content`) and
   `gen_ai.client.inference.operation.details` (its attributes as in 1);
3. deprecated: indexed `gen_ai.prompt.N.{role,content,tool_call_id}` and
   `gen_ai.completion.N.{role,content,finish_reason,tool_calls.M.{id,name,arguments}}`; else
   `gen_ai.prompt` / `gen_ai.completion` (a JSON array of messages or plain text), as span
   attributes or in events `gen_ai.content.prompt` / `gen_ai.content.completion`.

A message with role "system" on the input side has direction "system".

Retrieved chunks, `{"id", "content", "score", "source"}` (None where absent), from the first of:
attribute `gen_ai.retrieval.documents` (JSON string or array of objects); span events
`gen_ai.retrieval.document` / `retrieval.document`; OpenInference-style
`retrieval.documents.N.document.{id,content,score,metadata}`. A document object may spell its
fields `id`; `content`, `text` or `page_content`; `score` or `relevance_score`; `source`, `uri`,
`url` or `metadata.source`, each optionally prefixed by `document.` or
`gen_ai.retrieval.document.`.

Scores, name → float: attributes `gen_ai.evaluation.<name>.score`, `eval.<name>.score`,
`eval.<name>` (name without dots), the pair `gen_ai.evaluation.name` +
`gen_ai.evaluation.score.value` on the span itself, then span events `gen_ai.evaluation.result`
(same pair; an event overrides an attribute of the same name). Numeric strings are accepted;
booleans and non-finite values are ignored.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from proveai_agent.spans import Span, SpanDetail

ROLE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
CHOICE_EVENT = "gen_ai.choice"
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
EVALUATION_EVENT = "gen_ai.evaluation.result"
RETRIEVAL_EVENTS = frozenset({"gen_ai.retrieval.document", "retrieval.document"})
LEGACY_CONTENT_EVENTS = {
    "gen_ai.content.prompt": "gen_ai.prompt",
    "gen_ai.content.completion": "gen_ai.completion",
}
LOG_EVENTS = frozenset({*ROLE_EVENTS, CHOICE_EVENT, DETAILS_EVENT, EVALUATION_EVENT})
"""Log record event names that carry GenAI content; other records are not stored."""

MAX_CONTENT_DEPTH = 16
"""Deepest nesting kept in a message part, tool-call arguments or a tool response sent as
structure; a deeper one is dropped (a JSON string attribute is not bounded by the decoder)."""

_MAX_COUNT = 2**63 - 1
_DEFAULT_ROLE = {"system": "system", "input": "user", "output": "assistant"}
_SCAN_PREFIXES = (
    "gen_ai.prompt.",
    "gen_ai.completion.",
    "retrieval.documents.",
    "eval.",
    "gen_ai.evaluation.",
)
_DECODE_JSON = json.JSONDecoder().raw_decode
_DELIMITERS = re.compile(r"[,;]")
_EVENT_NAME_NOISE = str.maketrans("", "", "_-. ")
_DOCUMENT_PREFIXES = ("gen_ai.retrieval.document.", "document.")
_CONTENT_KEYS = ("content", "text", "page_content")
_SCORE_KEYS = ("score", "relevance_score")
_SOURCE_KEYS = ("source", "uri", "url")


def annotate(span: Span, content: bool = True) -> None:
    """Fill the GenAI fields of `span` from its attributes and events, in place.

    With `content=False` (the ingest hot path) messages and chunks are left empty: they are
    read from the stored attributes and events when a trace is read. Scores, tokens and
    finish reasons are always filled; the finish reasons of output messages are parsed only
    when the span has no finish-reasons attribute.
    """
    attrs = span.attributes
    found = None
    if attrs:
        _fill_fields(span, attrs.get)
        keys = "\n" + "\n".join(attrs)
        if "gen_ai." in keys or "\neval." in keys or "\nretrieval." in keys:
            found = _Found()
            if content or not span.finish_reasons:
                _collect_attributes(attrs, keys, found)
            elif "\neval." in keys or "\ngen_ai.evaluation." in keys:
                _collect_scores(attrs, found)
    if span.events:
        if found is None:
            found = _Found()
        _collect_events(span, found, content)
    if found is None:
        return

    if not span.finish_reasons:
        for tier, reasons in enumerate(found.finish):
            if found.output[tier]:
                span.finish_reasons = reasons
                break
    if content:
        span.messages = (found.input[0] or found.input[1] or found.input[2]) + (
            found.output[0] or found.output[1] or found.output[2]
        )
        span.chunks = found.chunks[0] or found.chunks[1] or found.chunks[2]
    if found.scores:
        span.scores = found.scores


def _collect_scores(attrs: dict[str, Any], found: _Found) -> None:
    """Only the score attributes, for when content is not wanted."""
    for key, value in attrs.items():
        if key.startswith(("eval.", "gen_ai.evaluation.")):
            _score_attribute(found.scores, key, value)
    if "gen_ai.evaluation.name" in attrs:
        score = _evaluation(attrs)
        if score is not None and score[1] is not None:
            found.scores[score[0]] = score[1]


def log_details(
    *,
    trace_id: str,
    span_id: str,
    service: str,
    time_ns: int,
    event_name: str,
    body: Any,
    attributes: dict[str, Any],
) -> list[SpanDetail]:
    """The span details one GenAI log record carries (event_name is one of LOG_EVENTS)."""

    def detail(kind: str, data: dict[str, Any]) -> SpanDetail:
        return SpanDetail(trace_id, span_id, service, time_ns, kind, data)

    if event_name == EVALUATION_EVENT:
        source = attributes if "gen_ai.evaluation.name" in attributes else body
        score = _evaluation(source) if isinstance(source, dict) else None
        if score is None:
            return []
        name, value, label = score
        return [detail("score", {"name": name, "value": value, "label": label})]

    if event_name == DETAILS_EVENT:
        source = attributes
        if not _has_message_attributes(attributes) and isinstance(body, dict):
            source = body
        found = _Found()
        _details_messages(source, "log", found, 0)
        return [detail("message", m) for m in found.input[0] + found.output[0]]

    if isinstance(body, str):
        body = {"content": body}
    elif not isinstance(body, dict):
        body = attributes
    message, _ = _event_message(event_name, body, "log")
    return [detail("message", message)]


def _fill_fields(span: Span, get: Any) -> None:
    """The single-valued fields; `get` is the attribute dict's get."""
    span.model = _text(get("gen_ai.request.model"))
    span.response_model = _text(get("gen_ai.response.model"))
    span.operation = _text(get("gen_ai.operation.name"))
    span.provider = _text(get("gen_ai.provider.name")) or _text(get("gen_ai.system"))

    tokens = get("gen_ai.usage.input_tokens")
    if type(tokens) is not int or tokens < 0:
        tokens = _first_count(tokens, get("gen_ai.usage.prompt_tokens"))
    span.input_tokens = tokens
    tokens = get("gen_ai.usage.output_tokens")
    if type(tokens) is not int or tokens < 0:
        tokens = _first_count(tokens, get("gen_ai.usage.completion_tokens"))
    span.output_tokens = tokens

    reasons = get("gen_ai.response.finish_reasons")
    if reasons is not None:
        span.finish_reasons = _finish_reasons(reasons)
    ttft = get("gen_ai.response.time_to_first_chunk")
    if ttft is not None:
        ttft = _seconds(ttft)
    if ttft is None and (ttft := get("gen_ai.server.time_to_first_token")) is not None:
        ttft = _seconds(ttft)
    span.ttft_s = ttft


class _Found:
    """What the attribute and event passes found, by tier (current, event, deprecated)."""

    __slots__ = ("chunks", "finish", "input", "output", "scores")

    def __init__(self) -> None:
        self.input: list[list[dict[str, Any]]] = [[], [], []]
        self.output: list[list[dict[str, Any]]] = [[], [], []]
        self.finish: list[list[str]] = [[], [], []]
        self.chunks: list[list[dict[str, Any]]] = [[], [], []]
        self.scores: dict[str, float] = {}


def _collect_attributes(attrs: dict[str, Any], keys: str, found: _Found) -> None:
    """Content from span attributes; `keys` is every key, each after a newline."""
    get = attrs.get
    if _has_message_attributes(attrs):
        _details_messages(attrs, "attribute", found, 0)

    if (
        "\ngen_ai.prompt." in keys
        or "\ngen_ai.completion." in keys
        or "\nretrieval.documents." in keys
        or "\neval." in keys
        or "\ngen_ai.evaluation." in keys
    ):
        _collect_families(attrs, found)
    if not found.input[2] and "gen_ai.prompt" in attrs:
        found.input[2] = _legacy_messages(get("gen_ai.prompt"), "input", "attribute")
    if not found.output[2] and "gen_ai.completion" in attrs:
        found.output[2] = _legacy_messages(get("gen_ai.completion"), "output", "attribute")

    listed = get("gen_ai.retrieval.documents")
    if listed is not None:
        found.chunks[0] = _document_list(listed)


def _collect_families(attrs: dict[str, Any], found: _Found) -> None:
    """The attribute families spread over many keys: indexed messages, documents, scores."""
    prompts: dict[int, dict[str, Any]] = {}
    completions: dict[int, dict[str, Any]] = {}
    documents: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if not key.startswith(_SCAN_PREFIXES):
            continue
        if key.startswith("gen_ai.prompt."):
            _index(prompts, key[14:], value)
        elif key.startswith("gen_ai.completion."):
            _index(completions, key[18:], value)
        elif key.startswith("retrieval.documents."):
            _index(documents, key[20:], value)
        else:
            _score_attribute(found.scores, key, value)

    if prompts:
        found.input[2] = _indexed_messages(prompts, "input", None)
    if completions:
        found.output[2] = _indexed_messages(completions, "output", found.finish[2])
    if documents:
        found.chunks[2] = [
            _chunk({k.removeprefix("document."): v for k, v in documents[i].items()})
            for i in sorted(documents)
        ]
    if "gen_ai.evaluation.name" in attrs:
        score = _evaluation(attrs)
        if score is not None and score[1] is not None:
            found.scores[score[0]] = score[1]


def _collect_events(span: Span, found: _Found, content: bool = True) -> None:
    event_scores: dict[str, float] = {}
    for event in span.events:
        name = event["name"]
        attributes = event["attributes"]
        wanted = name == EVALUATION_EVENT or (name == CHOICE_EVENT and not span.finish_reasons)
        if not content and not wanted:
            if span.ttft_s is None and _is_first_token_event(name):
                offset = event["time_ns"] - span.start_ns
                if offset >= 0:
                    span.ttft_s = offset / 1e9
            continue
        if name in ROLE_EVENTS or name == CHOICE_EVENT:
            message, finish = _event_message(name, _event_body(attributes), "event")
            if message["direction"] == "output":
                found.output[1].append(message)
                if finish:
                    found.finish[1].append(finish)
            else:
                found.input[1].append(message)
        elif name == DETAILS_EVENT:
            _details_messages(attributes, "event", found, 1)
        elif name == EVALUATION_EVENT:
            score = _evaluation(attributes)
            if score is not None and score[1] is not None:
                event_scores[score[0]] = score[1]
        elif name in RETRIEVAL_EVENTS:
            found.chunks[1].append(_chunk(attributes))
        elif name in LEGACY_CONTENT_EVENTS:
            key = LEGACY_CONTENT_EVENTS[name]
            direction = "input" if key == "gen_ai.prompt" else "output"
            side = found.input if direction == "input" else found.output
            if not side[2]:
                side[2] = _legacy_messages(attributes.get(key), direction, "event")
        elif span.ttft_s is None and _is_first_token_event(name):
            offset = event["time_ns"] - span.start_ns
            if offset >= 0:
                span.ttft_s = offset / 1e9
    found.scores.update(event_scores)


def _is_first_token_event(name: str) -> bool:
    squashed = name.lower().translate(_EVENT_NAME_NOISE)
    return "firsttoken" in squashed or "firstchunk" in squashed


def _has_message_attributes(attrs: dict[str, Any]) -> bool:
    return (
        "gen_ai.input.messages" in attrs
        or "gen_ai.output.messages" in attrs
        or "gen_ai.system_instructions" in attrs
    )


def _details_messages(attrs: dict[str, Any], source: str, found: _Found, tier: int) -> None:
    """Messages from the current convention's three attributes into `found` at `tier`."""
    instructions = _structured(attrs.get("gen_ai.system_instructions"))
    if instructions is not None:
        parts = _parts(instructions)
        if parts:
            found.input[tier].append(_message("system", "system", parts, source))
    for item in _as_list(_structured(attrs.get("gen_ai.input.messages"))):
        message, _ = _message_object(item, "input", source)
        if message is not None:
            found.input[tier].append(message)
    for item in _as_list(_structured(attrs.get("gen_ai.output.messages"))):
        message, finish = _message_object(item, "output", source)
        if message is not None:
            found.output[tier].append(message)
            if finish:
                found.finish[tier].append(finish)


def _event_body(attributes: dict[str, Any]) -> dict[str, Any]:
    """The body-like part of a span event: span events have attributes but no body."""
    body = attributes.get("body")
    if isinstance(body, dict):
        return body
    encoded = attributes.get("gen_ai.event.content")
    if isinstance(encoded, str):
        decoded = _structured(encoded)
        if isinstance(decoded, dict):
            return decoded
    if isinstance(body, str) and "content" not in attributes:
        return {**attributes, "content": body}
    return attributes


def _event_message(name: str, body: dict[str, Any], source: str) -> tuple[dict[str, Any], str]:
    """One message from a role or choice event body, with the choice's finish reason."""
    if name == CHOICE_EVENT:
        message = body.get("message")
        if not isinstance(message, dict):
            message = {
                "role": body.get("message.role", body.get("role")),
                "content": body.get("message.content", body.get("content")),
                "tool_calls": body.get("message.tool_calls", body.get("tool_calls")),
            }
        role = _text(message.get("role")) or "assistant"
        finish = body.get("finish_reason")
        finish_reason = finish.strip() if isinstance(finish, str) else ""
        return _message("output", role, _content_parts(message, role), source), finish_reason

    role = _text(body.get("role")) or ROLE_EVENTS.get(name, "user")
    direction = "system" if role == "system" else "input"
    return _message(direction, role, _content_parts(body, role), source), ""


def _message_object(
    item: Any, direction: str, source: str
) -> tuple[dict[str, Any] | None, str]:
    """A message of the current convention (`role`, `parts`) or the older `content` form."""
    if isinstance(item, str):
        return _message(direction, _DEFAULT_ROLE[direction], _parts(item), source), ""
    if not isinstance(item, dict):
        return None, ""
    role = _text(item.get("role")) or _DEFAULT_ROLE[direction]
    parts = _parts(item["parts"]) if "parts" in item else _content_parts(item, role)
    if direction == "input" and role == "system":
        direction = "system"
    finish = item.get("finish_reason")
    finish_reason = finish.strip() if isinstance(finish, str) else ""
    return _message(direction, role, parts, source), finish_reason


def _message(
    direction: str, role: str, parts: list[dict[str, Any]], source: str
) -> dict[str, Any]:
    return {"direction": direction, "role": role, "parts": parts, "source": source}


def _content_parts(obj: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """Parts from `content` and `tool_calls`; a tool message's content is its response."""
    content = obj.get("content")
    if role == "tool":
        call_id = obj.get("id", obj.get("tool_call_id"))
        if content is None and call_id is None:
            return []
        response = content if _within_depth(content, MAX_CONTENT_DEPTH) else None
        return [{"type": "tool_call_response", "id": _scalar(call_id), "response": response}]
    return _parts(content) + _tool_calls(obj.get("tool_calls"))


def _parts(content: Any) -> list[dict[str, Any]]:
    """Message parts from a string, one part, or a list of parts and strings."""
    if isinstance(content, str):
        return [{"type": "text", "content": content}] if content else []
    if isinstance(content, list):
        parts = []
        for item in content:
            part = _part(item)
            if part is not None:
                parts.append(part)
        return parts
    part = _part(content)
    return [] if part is None else [part]


def _part(item: Any) -> dict[str, Any] | None:
    """One part: text as `{"type": "text", "content"}`, other typed parts as sent."""
    if isinstance(item, dict):
        kind = item.get("type")
        if kind == "text" or kind is None:
            text = item.get("content")
            if text is None:
                text = item.get("text")
            if isinstance(text, str):
                return {"type": "text", "content": text}
        if not _within_depth(item, MAX_CONTENT_DEPTH):
            return None
        return item if isinstance(kind, str) else {**item, "type": "unknown"}
    if isinstance(item, str):
        return {"type": "text", "content": item} if item else None
    if item is None or isinstance(item, list):
        return None
    return {"type": "text", "content": str(item)}


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    """Tool calls in the OpenAI-style form (`function.name`) or flat (`name`), as parts."""
    calls = _structured(calls)
    if not isinstance(calls, list):
        return []
    parts = []
    for call in calls:
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        if not isinstance(function, dict):
            function = call
        arguments = function.get("arguments")
        parts.append(
            {
                "type": "tool_call",
                "id": _scalar(call.get("id")),
                "name": _scalar(function.get("name")),
                "arguments": arguments if _within_depth(arguments, MAX_CONTENT_DEPTH) else None,
            }
        )
    return parts


def _index(table: dict[int, dict[str, Any]], rest: str, value: Any) -> None:
    """Record `N.field` = value of an indexed attribute family."""
    number, _, name = rest.partition(".")
    if name and len(number) <= 9 and number.isascii() and number.isdigit():
        table.setdefault(int(number), {})[name] = value


def _indexed_messages(
    table: dict[int, dict[str, Any]], direction: str, finish: list[str] | None
) -> list[dict[str, Any]]:
    messages = []
    for number in sorted(table):
        fields = table[number]
        role = _text(fields.get("role")) or _DEFAULT_ROLE[direction]
        calls: dict[int, dict[str, Any]] = {}
        for name, value in fields.items():
            if name.startswith("tool_calls."):
                _index(calls, name[11:], value)
        body = {
            "content": fields.get("content"),
            "tool_call_id": fields.get("tool_call_id"),
            "tool_calls": [calls[i] for i in sorted(calls)],
        }
        side = "system" if direction == "input" and role == "system" else direction
        messages.append(_message(side, role, _content_parts(body, role), "attribute"))
        reason = fields.get("finish_reason")
        if finish is not None and isinstance(reason, str) and reason.strip():
            finish.append(reason.strip())
    return messages


def _legacy_messages(value: Any, direction: str, source: str) -> list[dict[str, Any]]:
    """`gen_ai.prompt` / `gen_ai.completion`: a JSON array of messages, or plain text."""
    if value is None:
        return []
    items = _structured(value)
    if isinstance(items, list) and all(isinstance(item, dict) for item in items):
        messages = []
        for item in items:
            message, _ = _message_object(item, direction, source)
            if message is not None:
                messages.append(message)
        return messages
    parts = _parts(value if isinstance(value, str) else str(value))
    return [_message(direction, _DEFAULT_ROLE[direction], parts, source)] if parts else []


def _document_list(value: Any) -> list[dict[str, Any]]:
    documents = _as_list(_structured(value))
    return [_chunk(document) for document in documents if isinstance(document, dict)]


def _chunk(document: dict[str, Any]) -> dict[str, Any]:
    """A retrieved chunk from a document object or a retrieval event's attributes."""
    fields = document
    if any(key.startswith(_DOCUMENT_PREFIXES) for key in document):
        fields = dict(document)
        for key, value in document.items():
            for prefix in _DOCUMENT_PREFIXES:
                if key.startswith(prefix):
                    fields.setdefault(key[len(prefix) :], value)
    chunk_id = fields.get("id")
    content = _first(fields, _CONTENT_KEYS)
    source = _first(fields, _SOURCE_KEYS)
    if source is None:
        metadata = _structured(fields.get("metadata"))
        if isinstance(metadata, dict):
            source = _first(metadata, _SOURCE_KEYS)
    return {
        "id": None if chunk_id is None else str(chunk_id),
        "content": None
        if content is None
        else content
        if isinstance(content, str)
        else str(content),
        "score": _number(_first(fields, _SCORE_KEYS)),
        "source": None if source is None else str(source),
    }


def _first(fields: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = fields.get(key)
        if value is not None:
            return value
    return None


def _score_attribute(scores: dict[str, float], key: str, value: Any) -> None:
    if key.startswith("eval."):
        name = key[5:]
        if name.endswith(".score"):
            name = name[:-6]
        elif "." in name:
            return
    elif key.startswith("gen_ai.evaluation.") and key.endswith(".score") and len(key) > 24:
        name = key[18:-6]
    else:
        return
    number = _number(value)
    if name and number is not None:
        scores[name] = number


def _evaluation(attrs: dict[str, Any]) -> tuple[str, float | None, str | None] | None:
    """(name, value, label) of a `gen_ai.evaluation.result`, or None without name or result."""
    name = _text(attrs.get("gen_ai.evaluation.name"))
    value = _number(attrs.get("gen_ai.evaluation.score.value"))
    label = _text(attrs.get("gen_ai.evaluation.score.label"))
    if name is None or (value is None and label is None):
        return None
    return name, value, label


_NUMBERS = (int, float)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: Any) -> int | None:
    """A token count; None unless it is a whole number that a signed 64-bit column holds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= _MAX_COUNT else None
    if isinstance(value, float) and value.is_integer() and 0 <= value <= _MAX_COUNT:
        return int(value)
    return None


def _first_count(current: Any, deprecated: Any) -> int | None:
    count = _count(current)
    return count if count is not None else _count(deprecated)


def _number(value: Any) -> float | None:
    """A finite float from a number or a numeric string; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, _NUMBERS):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _finish_reasons(value: Any) -> list[str]:
    if value is None:
        return []
    if type(value) is str and "," not in value and ";" not in value and value[:1] != "[":
        reason = value.strip()
        return [reason] if reason else []
    if isinstance(value, str):
        decoded = _structured(value) if value.startswith("[") else None
        items = decoded if isinstance(decoded, list) else _DELIMITERS.split(value)
    elif isinstance(value, list):
        items = value
    else:
        return []
    reasons = []
    for item in items:
        if isinstance(item, str | int | float) and not isinstance(item, bool):
            reason = str(item).strip()
            if reason:
                reasons.append(reason)
    return reasons


def _structured(value: Any) -> Any:
    """A JSON string decoded when it holds an array or object; anything else as it is."""
    if not isinstance(value, str) or not value.startswith(("[", "{")):
        return value
    try:
        decoded, end = _DECODE_JSON(value)
    except (ValueError, RecursionError):
        return value
    return decoded if end == len(value) or not value[end:].strip() else value


def _scalar(value: Any) -> Any:
    """A str, number, bool or None as it is; anything else as its text."""
    if value is None or isinstance(value, str | int | float):
        return value
    return str(value)


def _within_depth(value: Any, limit: int) -> bool:
    """Whether `value` has at most `limit` levels of nested lists and dicts."""
    if not isinstance(value, dict | list):
        return True
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
