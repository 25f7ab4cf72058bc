"""Redaction of secrets from OTLP requests before anything in them is decoded or stored.

A `Redactor` rewrites a parsed request in place, protobuf message or JSON document, before the
decoder turns it into spans, details and metric points: so the span store (which keeps a
protobuf span as its serialised bytes), the derived metrics, the detectors and a case's
context snapshot only ever see the redacted text. What it touches:

- attributes of resources, spans, span events, log records and metric data points, at any
  depth of arrays and kvlists, and of span links in protobuf (the stored span keeps them;
  a JSON span is stored without its links);
- span names, event names, span status messages and log record bodies.

Two kinds of rule apply. A key rule (`keys`, an exact attribute key or a prefix ending in
`*`) replaces the whole value of that attribute, whatever its type, with the replacement
text. A pattern rule (the operator's named `patterns`, then the chosen `builtins`: `card`,
`email`, `phone`) replaces each match inside a string (bytes are read as UTF-8, invalid
bytes kept as they are). A card number counts only when it passes the Luhn check, so that
order numbers and other long digit runs survive; a phone number needs a leading `+` or
separators between its digit groups, so that bare ids survive.

Cost stays linear in the body: every string is cut to the decoder's MAX_STRING_CHARS (what
the decoder keeps anyway) before any pattern runs, and cut again after, so a replacement
longer than what it replaces cannot grow a value; values nested past MAX_VALUE_DEPTH are
not walked (the decoder rejects their span). The built-in patterns do not backtrack
without bound; an operator's pattern is run as written.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proveai_agent.ingest.otlp import MAX_STRING_CHARS, MAX_VALUE_DEPTH

KEY_RULE_NAME = "key"
"""The `{name}` of the replacement text when a key rule replaced a whole value."""
MAX_REPLACEMENT_CHARS = 200

# The card and phone patterns begin with a plain character class and look behind only after
# it: the regular expression engine then skips in C the positions where no match can begin.
_CARD = (
    # 13 to 19 digits, single spaces or dashes allowed between them, standing alone.
    r"[0-9](?<!\w[0-9])(?:[ -]?[0-9]){12,18}(?!\w)"
)
_EMAIL = (
    # The look-behind starts a match only at the start of a run of local-part characters:
    # without it every position of a long run would scan to its end.
    r"(?<![\w.%+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)
_PHONE = (
    # +CC then digit groups with separators (or 7 to 15 digits in one run), or a national
    # number "(415) 555-0132", "415-555-0132", "020 7946 0958"; never inside a longer run
    # of digit groups (an IP address, a card number that failed Luhn).
    r"[+(0-9](?<![\w+][+(0-9])(?<![0-9][ .-][+(0-9])"
    r"(?:(?<=\+)(?:[0-9]{7,15}|[0-9]{1,3}(?:[ .-]\(?[0-9]{1,4}\)?|\([0-9]{1,4}\)){2,5})"
    r"|(?<=\()[0-9]{2,5}\)[ .-]?[0-9]{3,4}[ .-][0-9]{3,4}"
    r"|(?<=[0-9])[0-9]{1,4}[ .-][0-9]{3,4}[ .-][0-9]{3,4})"
    r"(?![ .-]?[0-9])(?!\w)"
)
_NOT_DIGIT = re.compile(r"[^0-9]")


def _luhn(text: str) -> bool:
    """Whether the digits of `text` pass the Luhn check of payment card numbers."""
    digits = _NOT_DIGIT.sub("", text)
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _phone_digits(text: str) -> bool:
    return 7 <= len(_NOT_DIGIT.sub("", text)) <= 15


def _has_digit(text: str) -> bool:
    """Whether `text` holds an ASCII digit: ten substring searches beat one regex scan."""
    return any(digit in text for digit in "0123456789")


def _has_at(text: str) -> bool:
    return "@" in text


def _always(text: str) -> bool:
    return True


_Check = Callable[[str], bool]
BUILTINS: dict[str, tuple[str, _Check | None, _Check]] = {
    "card": (_CARD, _luhn, _has_digit),
    "email": (_EMAIL, None, _has_at),
    "phone": (_PHONE, _phone_digits, _has_digit),
}
"""Built-in patterns by name: the pattern, the check a match must also pass, and a cheap
test a string must pass for the pattern to be run on it at all. Applied in this order."""


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    pattern: re.Pattern[str]
    replacement: str
    check: _Check | None
    gate: _Check = _always

    def sub(self, text: str) -> str:
        if not self.gate(text):
            return text
        return self.pattern.sub(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        found = match.group()
        if not found or (self.check is not None and not self.check(found)):
            return found
        return self.replacement


class Redactor:
    """The compiled rules of a `[redaction]` section; see `build`."""

    def __init__(self, keys: list[str], rules: list[_Rule], key_text: str) -> None:
        self._exact = frozenset(key for key in keys if not key.endswith("*"))
        self._prefixes = tuple(key[:-1] for key in keys if key.endswith("*"))
        self._rules = rules
        self.key_text = key_text

    def hides_key(self, key: str) -> bool:
        """Whether a key rule replaces the whole value of attribute `key`."""
        return key in self._exact or key.startswith(self._prefixes)

    def text(self, value: str) -> str:
        """`value` cut to MAX_STRING_CHARS with every pattern match replaced."""
        if len(value) > MAX_STRING_CHARS:
            value = value[:MAX_STRING_CHARS]
        for rule in self._rules:
            value = rule.sub(value)
        return value if len(value) <= MAX_STRING_CHARS else value[:MAX_STRING_CHARS]

    def data(self, value: bytes) -> bytes:
        """Bytes cut to what the decoder keeps, with matches in their UTF-8 text replaced."""
        limit = MAX_STRING_CHARS // 2
        if len(value) > limit:
            value = value[:limit]
        text = value.decode("utf-8", "surrogateescape")
        redacted = self.text(text)
        if redacted == text:
            return value
        return redacted.encode("utf-8", "surrogateescape")[:limit]

    # Protobuf ---------------------------------------------------------------------------

    def protobuf(self, request: Any) -> None:
        """Redact an Export{Trace,Logs,Metrics}ServiceRequest in place."""
        if isinstance(request, ExportTraceServiceRequest):
            for resource_spans in request.resource_spans:
                self._pb_pairs(resource_spans.resource.attributes, 1)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self._pb_span(span)
        elif isinstance(request, ExportLogsServiceRequest):
            for resource_logs in request.resource_logs:
                self._pb_pairs(resource_logs.resource.attributes, 1)
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        self._pb_pairs(record.attributes, 1)
                        if record.HasField("body"):
                            self._pb_value(record.body, 1)
        elif isinstance(request, ExportMetricsServiceRequest):
            for resource_metrics in request.resource_metrics:
                self._pb_pairs(resource_metrics.resource.attributes, 1)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        shape = metric.WhichOneof("data")
                        if shape is not None:
                            for point in getattr(metric, shape).data_points:
                                self._pb_pairs(point.attributes, 1)

    def _pb_span(self, span: Any) -> None:
        self._pb_text(span, "name")
        self._pb_pairs(span.attributes, 1)
        for event in span.events:
            self._pb_text(event, "name")
            self._pb_pairs(event.attributes, 1)
        for link in span.links:
            self._pb_pairs(link.attributes, 1)
        if span.HasField("status"):
            self._pb_text(span.status, "message")

    def _pb_text(self, message: Any, field: str) -> None:
        value = getattr(message, field)
        if value:
            redacted = self.text(value)
            if redacted != value:
                setattr(message, field, redacted)

    def _pb_pairs(self, pairs: Any, depth: int) -> None:
        for pair in pairs:
            if self.hides_key(pair.key):
                pair.value.string_value = self.key_text
            else:
                self._pb_value(pair.value, depth)

    def _pb_value(self, value: Any, depth: int) -> None:
        which = value.WhichOneof("value")
        if which == "string_value":
            self._pb_text(value, "string_value")
        elif which == "array_value":
            if depth < MAX_VALUE_DEPTH:
                for item in value.array_value.values:
                    self._pb_value(item, depth + 1)
        elif which == "kvlist_value":
            if depth < MAX_VALUE_DEPTH:
                self._pb_pairs(value.kvlist_value.values, depth + 1)
        elif which == "bytes_value":
            data = value.bytes_value
            redacted = self.data(data)
            if redacted != data:
                value.bytes_value = redacted

    # JSON -------------------------------------------------------------------------------

    def json(self, document: dict[str, Any]) -> None:
        """Redact an OTLP JSON request document in place.

        Anything of the wrong shape is left for the decoder to refuse as it would without
        redaction; field names are accepted in lowerCamelCase and snake_case, as there.
        """
        for resource_spans in _items(document, "resourceSpans", "resource_spans"):
            self._json_resource(resource_spans)
            for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
                for span in _items(scope_spans, "spans", "spans"):
                    self._json_span(span)
        for resource_logs in _items(document, "resourceLogs", "resource_logs"):
            self._json_resource(resource_logs)
            for scope_logs in _items(resource_logs, "scopeLogs", "scope_logs"):
                for record in _items(scope_logs, "logRecords", "log_records"):
                    self._json_pairs(record.get("attributes"), 1)
                    self._json_value(record.get("body"), 1)
        for resource_metrics in _items(document, "resourceMetrics", "resource_metrics"):
            self._json_resource(resource_metrics)
            for scope_metrics in _items(resource_metrics, "scopeMetrics", "scope_metrics"):
                for metric in _items(scope_metrics, "metrics", "metrics"):
                    for data in metric.values():
                        if isinstance(data, dict):
                            for point in _items(data, "dataPoints", "data_points"):
                                self._json_pairs(point.get("attributes"), 1)

    def _json_resource(self, container: dict[str, Any]) -> None:
        resource = container.get("resource")
        if isinstance(resource, dict):
            self._json_pairs(resource.get("attributes"), 1)

    def _json_span(self, span: dict[str, Any]) -> None:
        self._json_text(span, "name")
        self._json_pairs(span.get("attributes"), 1)
        for event in _items(span, "events", "events"):
            self._json_text(event, "name")
            self._json_pairs(event.get("attributes"), 1)
        status = span.get("status")
        if isinstance(status, dict):
            self._json_text(status, "message")

    def _json_text(self, container: dict[str, Any], field: str) -> None:
        value = container.get(field)
        if isinstance(value, str) and value:
            redacted = self.text(value)
            if redacted != value:
                container[field] = redacted

    def _json_pairs(self, pairs: Any, depth: int) -> None:
        if not isinstance(pairs, list):
            return
        for pair in pairs:
            if not isinstance(pair, dict):
                continue
            key = pair.get("key")
            if isinstance(key, str) and self.hides_key(key):
                if isinstance(pair.get("value"), dict):
                    pair["value"] = {"stringValue": self.key_text}
            else:
                self._json_value(pair.get("value"), depth)

    def _json_value(self, value: Any, depth: int) -> None:
        if not isinstance(value, dict):
            return
        # Every member is redacted, not only the first: which one the decoder reads is its
        # business, and a hostile sender may set several.
        for kind, item in value.items():
            if kind in ("stringValue", "string_value"):
                self._json_text(value, kind)
            elif kind in ("arrayValue", "array_value"):
                if depth < MAX_VALUE_DEPTH and isinstance(item, dict):
                    values = item.get("values")
                    if isinstance(values, list):
                        for element in values:
                            self._json_value(element, depth + 1)
            elif kind in ("kvlistValue", "kvlist_value"):
                if depth < MAX_VALUE_DEPTH and isinstance(item, dict):
                    self._json_pairs(item.get("values"), depth + 1)
            elif kind in ("bytesValue", "bytes_value") and isinstance(item, str):
                data = _from_base64(item)
                if data is not None:
                    redacted = self.data(data)
                    if redacted != data:
                        value[kind] = base64.b64encode(redacted).decode("ascii")


def _items(container: Any, camel: str, snake: str) -> list[dict[str, Any]]:
    """The objects of a repeated field; anything else is the decoder's to refuse."""
    if not isinstance(container, dict):
        return []
    values = container.get(camel)
    if values is None:
        values = container.get(snake)
    if not isinstance(values, list):
        return []
    return [value for value in values if isinstance(value, dict)]


def _from_base64(text: str) -> bytes | None:
    """Base64 as the decoder reads it: padded or not, standard or URL-safe alphabet."""
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        return None


def build(settings: Any) -> Redactor | None:
    """The redactor of a `[redaction]` section, or None when it has no rules.

    Args:
        settings: a `RedactionConfig` (keys, builtins, patterns, replacement).

    Raises:
        ValueError: a setting has the wrong type, names an unknown built-in, holds a
            pattern that does not compile or matches the empty string, or the replacement
            uses a placeholder other than `{name}`. The message names the setting.
    """
    keys = _strings(settings.keys, "redaction.keys")
    for key in keys:
        if "*" in key[:-1]:
            raise ValueError(
                f"redaction.keys: {key!r}: '*' is allowed only at the end, as a prefix match"
            )
    builtins = _strings(settings.builtins, "redaction.builtins")
    for name in builtins:
        if name not in BUILTINS:
            known = ", ".join(BUILTINS)
            raise ValueError(f"redaction.builtins: unknown built-in {name!r} (known: {known})")
    patterns = settings.patterns
    if not isinstance(patterns, dict):
        raise ValueError(
            "redaction.patterns must be a table of name = regular expression, "
            f"got {type(patterns).__name__}"
        )
    replacement = settings.replacement
    if not isinstance(replacement, str):
        raise ValueError(
            f"redaction.replacement must be a string, got {type(replacement).__name__}"
        )
    if len(replacement) > MAX_REPLACEMENT_CHARS:
        raise ValueError(
            f"redaction.replacement must be at most {MAX_REPLACEMENT_CHARS} characters"
        )
    key_text = _replacement(replacement, KEY_RULE_NAME)

    rules: list[_Rule] = []
    for name, source in patterns.items():
        where = f"redaction.patterns.{name}"
        if not name or name in BUILTINS:
            raise ValueError(f"{where}: a pattern needs a name that is not a built-in's")
        if not isinstance(source, str):
            raise ValueError(
                f"{where} must be a regular expression string, got {type(source).__name__}"
            )
        try:
            pattern = re.compile(source)
        except re.error as exc:
            raise ValueError(f"{where}: not a valid regular expression: {exc}") from None
        if pattern.fullmatch("") is not None:
            raise ValueError(f"{where}: the pattern matches the empty string")
        rules.append(_Rule(name, pattern, _replacement(replacement, name), None))
    for name, (source, check, gate) in BUILTINS.items():
        if name in builtins:
            text = _replacement(replacement, name)
            rules.append(_Rule(name, re.compile(source), text, check, gate))

    if not keys and not rules:
        return None
    return Redactor(keys, rules, key_text)


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{where} must be a list of non-empty strings, got {value!r:.80}")
    return value


def _replacement(template: str, name: str) -> str:
    try:
        return template.format(name=name)
    except (AttributeError, KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"redaction.replacement: {template!r} may use only the placeholder {{name}} ({exc})"
        ) from None
