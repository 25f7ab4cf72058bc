"""Attribute drift: a version-naming attribute of a service takes a value it never had.

A service's model, prompt template version or index version moving from one value to
another is a change worth correlating with a failure. Values are tracked per service and
per kind of span (its `gen_ai.operation.name` and `gen_ai.agent.name`, else its name), so
that a service whose embedding and chat calls name different models sees each move on its
own; resource attributes are tracked for the whole service. Only a value never seen before
counts, and only once the attribute has been watched for `warmup_s` (span time): the
values a service uses side by side (two chat models, an A/B test) are learnt in that time
and recorded once each afterwards at most, not on every switch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..config import DEFAULT_DRIFT_KEYS
from ..spans import Span
from ..store.changes import Change

MAX_VALUES_PER_KEY = 64
MAX_VALUE_CHARS = 200
_VALUE_TYPES = (str, int, float)


class AttributeDrift:
    """Remembers the values each (service, key) took and reports the new ones as changes."""

    def __init__(
        self,
        keys: Sequence[str] = DEFAULT_DRIFT_KEYS,
        max_services: int = 1000,
        warmup_s: float = 0.0,
    ) -> None:
        self.keys = tuple(keys)
        self._wanted = frozenset(self.keys)
        self._order = {key: i for i, key in enumerate(self.keys)}
        self.max_services = max_services
        self.warmup_s = warmup_s
        # (service, scope, key) -> values seen, in the order they first appeared
        self._seen: dict[tuple[str, str, str], dict[str, float]] = {}
        # (service, scope, key) -> when it was first seen, span time
        self._started: dict[tuple[str, str, str], float] = {}

    def observe(self, spans: Iterable[Span]) -> list[Change]:
        """The changes these spans show, in the order their new values first appear."""
        changes: list[Change] = []
        wanted, order = self._wanted, self._order
        # Spans of one resource share its dict: a resource value is looked at for the first
        # span that does not carry the key itself, which is when a new one would be recorded.
        resource_keys: dict[int, list[str]] = {}
        for span in spans:
            attributes = span.attributes
            present = wanted.intersection(attributes)
            if present:
                scope = self._scope(span)
                for key in (
                    sorted(present, key=order.__getitem__) if len(present) > 1 else present
                ):
                    self._observe_value(span, scope, key, attributes[key], changes)
            resource = span.resource
            if not resource:
                continue
            waiting = resource_keys.get(id(resource))
            if waiting is None:
                waiting = resource_keys[id(resource)] = sorted(
                    wanted.intersection(resource), key=order.__getitem__
                )
            if waiting:
                for key in [k for k in waiting if attributes.get(k) is None]:
                    waiting.remove(key)
                    self._observe_value(span, "", key, resource[key], changes)
        return changes

    @staticmethod
    def _scope(span: Span) -> str:
        """The kind of span a span attribute's values are tracked for."""
        scope = span.operation or span.name
        agent = span.attributes.get("gen_ai.agent.name")
        if isinstance(agent, str):
            scope = f"{scope} {agent}"
        return scope[:MAX_VALUE_CHARS]

    def _observe_value(
        self, span: Span, scope: str, key: str, value: object, changes: list[Change]
    ) -> None:
        if not isinstance(value, _VALUE_TYPES) or isinstance(value, bool):
            return
        change = self._see(span.service, scope, key, str(value)[:MAX_VALUE_CHARS], span)
        if change is not None:
            changes.append(change)

    def _see(self, service: str, scope: str, key: str, value: str, span: Span) -> Change | None:
        seen = self._seen.get((service, scope, key))
        if seen is None:
            if len(self._seen) >= self.max_services * len(self.keys):
                return None  # bounded memory: a flood of services is not tracked further
            self._seen[(service, scope, key)] = {value: span.start_ns / 1e9}
            self._started[(service, scope, key)] = span.start_ns / 1e9
            return None
        if value in seen:
            return None
        before = next(reversed(seen))
        if len(seen) >= MAX_VALUES_PER_KEY:
            seen.pop(next(iter(seen)))
        at = span.start_ns / 1e9
        seen[value] = at
        if at - self._started[(service, scope, key)] < self.warmup_s:
            return None  # still learning the values in use
        return Change(
            at=at,
            service=service,
            kind="attribute",
            summary=f"{key}{f' of {scope}' if scope else ''} changed from {before} to {value}",
            before=before,
            after=value,
            source=key,
        )
