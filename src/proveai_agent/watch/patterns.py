"""Trace-pattern detectors: agent loops, token explosions and context-window overflow.

They read the spans themselves, not Prometheus. `TracePatterns.observe` takes every committed
batch on the ingest path and only updates a few counters per span (the arguments of tool calls
are the one thing parsed, as JSON); `TracePatterns.evaluate(now)` raises the signals as of `now`
(the detector's clock, epoch seconds). Only spans that ended by `now` count. The spans of one
trace may arrive in several batches and in any order; a span delivered twice counts once while
its trace is tracked.

Agent loop (`agent_loop`, AGENT_LOOP). A call is identified by its service, its span name and:

- a tool span (`gen_ai.operation.name` "execute_tool"): `gen_ai.tool.name` and
  `gen_ai.tool.call.arguments`. JSON arguments are compared with sorted keys, so key order does
  not matter; anything else (not JSON, not a string, over 64 KiB) is compared as its string;
- an agent span ("invoke_agent"): `gen_ai.input.messages` as sent; without it, no call;
- an HTTP client span (SPAN_KIND_CLIENT with `http.request.method`) with GET, HEAD, OPTIONS or
  DELETE: the method and `url.full`, else `server.address` + `url.path` + `url.query`. POST, PUT
  and PATCH carry their arguments in a body that the span does not show: every model call made
  through an SDK would look the same, so they are not compared.

The conversation of a span is its `gen_ai.conversation.id`, else that of its nearest ancestor in
the same trace that has one, also when the ancestor arrives later. A loop fires when one call
repeats at least `loop_min_repeats` times in one trace or in one conversation and its last
repeat ended inside the current window (`now - window_s`, `now`]. Calls that differ in their
arguments (page=1, page=2, cursor tokens) never add up, however many. One signal per service
and subject (the tool name, else the span name): the group with most repeats, with how many
traces and conversations loop on it. Severity grows with repeats / `loop_min_repeats`.

Token explosion (`token_explosion`, TOKEN_EXPLOSION), per service and request model, over model
calls (operation chat, text_completion or generate_content): the mean output tokens per call
that reports them, and the mean total (input + output) tokens per call that reports both. As in
detectors.py, each is compared with a robust baseline: the same mean over windows of `window_s`
ending every `baseline_step_s` from `now - baseline_s` to `now - window_s`, a point counting
only with at least `min_calls` calls, summarised by median and MAD (σ = 1.4826 × MAD). A
statistic fires above max(token_factor × median, median + token_mad_k × σ) with at least
`min_calls` calls in the current window and `min_baseline_points` points; the one furthest
above its threshold is reported. Its `query` divides the token counter by all calls of the
model, including those that reported no usage, so it reads lower when some do not.

Context overflow (`context_overflow`, CONTEXT_OVERFLOW), per service and request model: the
share of model calls in the current window that hit the context limit. A call overflows when

- a finish reason is in `LENGTH_FINISH_REASONS` (case and a "FinishReason." style prefix
  ignored),
- its input tokens are at least `near_window_ratio` × the model's context window, from
  `CONTEXT_WINDOWS` and `PatternConfig.context_windows` by the longest prefix of the request
  model, else the response model (lowercase, after the last "/"); an unknown model skips this,
- an attribute whose key ends in "truncated" is true (True, "true", "yes", "1", a number > 0),
- or a string `gen_ai.input.messages` or `gen_ai.prompt` holds a marker `[truncated]`,
  `(truncated)` or `<truncated>`, in any case, also with one word before it
  (`[content truncated]`).

It fires with at least `overflow_min_spans` overflowing calls and a share of at least
max(overflow_ratio_min, overflow_baseline_factor × the baseline share), the baseline share being
overflowing / calls over the baseline period (0 without calls). Severity grows with share /
that threshold.

The clock is taken at whole seconds for the last two (calls are counted per second of their end
time; those in the current second wait for the next evaluation). Memory is bounded: traces,
spans, conversations, calls per trace or conversation and model series are capped, the least
recently active evicted first, and `evaluate` drops whatever ended before the baseline starts.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from proveai_agent.config import PatternConfig
from proveai_agent.signals import Signal
from proveai_agent.spans import Span
from proveai_agent.watch.detectors import Baseline, robust_baseline, severity
from proveai_agent.watch.promql import quote

TRIGGER = "trace_pattern"
MODEL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
TOOL_OPERATION = "execute_tool"
AGENT_OPERATION = "invoke_agent"
CONVERSATION_KEY = "gen_ai.conversation.id"
COMPARED_HTTP_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
"""HTTP methods whose arguments are all in the URL."""
LENGTH_FINISH_REASONS = frozenset(
    {
        "length",
        "max_tokens",
        "max_output_tokens",
        "model_length",
        "model_context_window_exceeded",
    }
)
"""Finish reasons, lowercased, that say the model stopped at a token limit."""
TRUNCATION_MARKER = re.compile(r"[\[(<](?:\w+ )?truncated[\])>]", re.IGNORECASE)
MARKED_ATTRIBUTES = ("gen_ai.input.messages", "gen_ai.prompt")
TOKENS_METRIC = "llm_gen_ai_tokens_total"
CALLS_METRIC = "llm_traces_span_metrics_calls_total"

CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-3.5-turbo": 16_385,
    "gpt-4": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-1106": 128_000,
    "gpt-4-0125": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.5": 128_000,
    "gpt-5": 400_000,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "claude-2": 100_000,
    "claude-2.1": 200_000,
    "claude-3": 200_000,
    "claude-haiku-4": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-opus-4": 200_000,
    "gemini-1.5-flash": 1_048_576,
    "gemini-1.5-pro": 2_097_152,
    "gemini-2.0-flash": 1_048_576,
    "gemini-2.5": 1_048_576,
    "llama-2": 4_096,
    "llama-3": 8_192,
    "llama-3.1": 131_072,
    "llama-3.2": 131_072,
    "llama-3.3": 131_072,
    "meta-llama-3": 8_192,
    "meta-llama-3.1": 131_072,
    "mistral-large": 131_072,
    "mixtral-8x7b": 32_768,
    "mixtral-8x22b": 65_536,
    "command-r": 128_000,
}
"""Context windows in tokens of common hosted models, by model-name prefix. A self-hosted
model's window is its server's setting (llama.cpp `-c`): put it in `context_windows`."""

_NS = 1_000_000_000
_KEPT_REPEATS = 64
"""End times kept per call; older repeats are only counted."""
_KEPT_TRACES = 16
"""Trace ids kept per call, for the evidence."""
_MAX_PARSED_ARGUMENTS = 65_536
_MAX_DEPTH = 64
"""Most parent links followed to find a conversation (also ends a cycle of parent ids)."""
_MAX_CACHED_WINDOWS = 4096
_TRUE_STRINGS = frozenset({"true", "yes", "1"})


@dataclass(slots=True)
class _Call:
    """One tool, agent or API call: what identifies it and when it ended."""

    digest: bytes
    service: str
    name: str
    subject: str
    arguments: str
    end_ns: int
    failed: bool
    trace_id: str


@dataclass(slots=True)
class _Repeats:
    """The repeats of one call in one trace or conversation, sorted by end time."""

    service: str
    name: str
    subject: str
    arguments: str
    first_ns: int
    ends: list[int] = field(default_factory=list)
    failed: list[bool] = field(default_factory=list)
    dropped: int = 0
    dropped_failed: int = 0
    traces: dict[str, None] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.dropped + len(self.ends)

    def add(self, call: _Call) -> None:
        i = bisect.bisect_right(self.ends, call.end_ns)
        self.ends.insert(i, call.end_ns)
        self.failed.insert(i, call.failed)
        if len(self.ends) > _KEPT_REPEATS:
            self.dropped += 1
            self.dropped_failed += self.failed[0]
            del self.ends[0], self.failed[0]
        self.first_ns = min(self.first_ns, call.end_ns)
        if len(self.traces) < _KEPT_TRACES:
            self.traces[call.trace_id] = None

    def until(self, now_ns: int) -> tuple[int, int, int | None]:
        """Repeats and failed repeats that ended by `now_ns`, and the last one's end."""
        i = bisect.bisect_right(self.ends, now_ns)
        last = self.ends[i - 1] if i else None
        return self.dropped + i, self.dropped_failed + sum(self.failed[:i]), last


@dataclass(slots=True)
class _Group:
    """The calls of one trace or one conversation."""

    kind: str
    key: str
    calls: OrderedDict[bytes, _Repeats] = field(default_factory=OrderedDict)
    hot: set[bytes] = field(default_factory=set)
    """Calls with enough repeats to be a loop, the only ones `evaluate` looks at."""
    repeats: int = 0
    """End times kept over all its calls."""
    last_ns: int = 0


@dataclass(slots=True)
class _Trace:
    """What is known of one trace: parent links, conversation ids and calls."""

    group: _Group
    parents: dict[str, str | None] = field(default_factory=dict)
    conversations: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, list[_Call]] = field(default_factory=dict)
    """Calls whose way up to a conversation stops at a span that has not arrived yet."""
    last_ns: int = 0


@dataclass(slots=True)
class _Bucket:
    """Model calls that ended in one second."""

    calls: int = 0
    output_calls: int = 0
    output_tokens: int = 0
    total_calls: int = 0
    total_tokens: int = 0
    overflowing: int = 0
    finish_reason: int = 0
    near_context_window: int = 0
    truncated_attribute: int = 0
    truncation_marker: int = 0
    max_input_tokens: int = -1

    def row(self) -> tuple[int, ...]:
        return (
            self.calls,
            self.output_calls,
            self.output_tokens,
            self.total_calls,
            self.total_tokens,
            self.overflowing,
            self.finish_reason,
            self.near_context_window,
            self.truncated_attribute,
            self.truncation_marker,
        )


_COLUMNS = (
    "calls",
    "output_calls",
    "output_tokens",
    "total_calls",
    "total_tokens",
    "overflowing",
    "finish_reason",
    "near_context_window",
    "truncated_attribute",
    "truncation_marker",
)
_REASONS = _COLUMNS[6:]
_C = {name: i for i, name in enumerate(_COLUMNS)}


@dataclass(slots=True)
class _Series:
    """Per-second model calls of one service and request model."""

    service: str
    model: str
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    operations: set[str] = field(default_factory=set)
    response_model: str | None = None


@dataclass(slots=True)
class _Windows:
    """Sums of each column over the current window, the baseline points and the period."""

    current: np.ndarray
    points: np.ndarray
    period: np.ndarray
    max_input_tokens: int | None


class TracePatterns:
    """The trace-pattern detectors: fed spans by ingest, evaluated by the watcher.

    Args:
        config: thresholds and bounds; the defaults when None.
    """

    def __init__(self, config: PatternConfig | None = None) -> None:
        self.config = config or PatternConfig()
        self._traces: OrderedDict[str, _Trace] = OrderedDict()
        self._spans = 0
        self._conversations: OrderedDict[str, _Group] = OrderedDict()
        self._conversation_repeats = 0
        self._hot: dict[tuple[str, str], _Group] = {}
        self._series: OrderedDict[tuple[str, str], _Series] = OrderedDict()
        self._windows: dict[str, int | None] = {}
        self._window_table = {
            _model_key(k): int(v)
            for k, v in {**CONTEXT_WINDOWS, **self.config.context_windows}.items()
        }

    def sizes(self) -> dict[str, int]:
        """How much is tracked now: traces, spans, conversations, distinct calls, series."""
        calls = sum(len(t.group.calls) for t in self._traces.values())
        calls += sum(len(g.calls) for g in self._conversations.values())
        return {
            "traces": len(self._traces),
            "spans": self._spans,
            "conversations": len(self._conversations),
            "calls": calls,
            "series": len(self._series),
            "buckets": sum(len(s.buckets) for s in self._series.values()),
        }

    def observe(self, spans: Iterable[Span]) -> None:
        """Take one committed batch of spans into account."""
        for span in spans:
            self._observe(span)

    def evaluate(self, now: float) -> list[Signal]:
        """The signals as of `now` (epoch seconds); drops state the baseline no longer needs."""
        self._expire(now)
        signals = self._loops(now)
        second = math.floor(now)
        for key in sorted(self._series):
            series = self._series[key]
            windows = self._sum_windows(series, second)
            if windows is None:
                continue
            for signal in (
                self._token_explosion(series, windows, now),
                self._context_overflow(series, windows, now),
            ):
                if signal is not None:
                    signals.append(signal)
        return signals

    # -- observing ---------------------------------------------------------------------------

    def _observe(self, span: Span) -> None:
        trace = self._trace(span.trace_id)
        span_id = span.span_id
        if span_id in trace.parents:
            return
        trace.parents[span_id] = span.parent_span_id or None
        self._spans += 1
        trace.last_ns = max(trace.last_ns, span.end_ns)

        attrs = span.attributes or {}
        own = _conversation_id(attrs.get(CONVERSATION_KEY)) if attrs else None
        if own is not None:
            trace.conversations[span_id] = own
        for waiting in trace.waiting.pop(span_id, ()):
            self._link(trace, waiting, span_id)

        call = _call(span, attrs)
        if call is not None:
            self._add(trace.group, call)
            self._link(trace, call, span_id)
        if span.operation in MODEL_OPERATIONS:
            self._add_model_call(span, attrs)
        self._bound()

    def _trace(self, trace_id: str) -> _Trace:
        trace = self._traces.get(trace_id)
        if trace is None:
            trace = _Trace(_Group("trace", trace_id))
            self._traces[trace_id] = trace
        else:
            self._traces.move_to_end(trace_id)
        return trace

    def _link(self, trace: _Trace, call: _Call, span_id: str) -> None:
        """Add `call` to its conversation, from `span_id` up, or wait for a missing span."""
        current: str | None = span_id
        for _ in range(_MAX_DEPTH):
            if current is None:
                return
            conversation = trace.conversations.get(current)
            if conversation is not None:
                self._add(self._conversation(conversation), call)
                return
            if current not in trace.parents:
                trace.waiting.setdefault(current, []).append(call)
                return
            current = trace.parents[current]

    def _conversation(self, conversation: str) -> _Group:
        group = self._conversations.get(conversation)
        if group is None:
            group = _Group("conversation", conversation)
            self._conversations[conversation] = group
        else:
            self._conversations.move_to_end(conversation)
        return group

    def _add(self, group: _Group, call: _Call) -> None:
        before = group.repeats
        repeats = group.calls.get(call.digest)
        if repeats is None:
            repeats = _Repeats(
                call.service, call.name, call.subject, call.arguments, call.end_ns
            )
            group.calls[call.digest] = repeats
            while len(group.calls) > self.config.max_calls_per_group:
                digest, evicted = group.calls.popitem(last=False)
                group.hot.discard(digest)
                group.repeats -= len(evicted.ends)
        else:
            group.calls.move_to_end(call.digest)
        kept = len(repeats.ends)
        repeats.add(call)
        group.repeats += len(repeats.ends) - kept
        group.last_ns = max(group.last_ns, call.end_ns)
        if group.kind == "conversation":
            self._conversation_repeats += group.repeats - before
        if repeats.total >= self.config.loop_min_repeats and call.digest not in group.hot:
            group.hot.add(call.digest)
            self._hot[(group.kind, group.key)] = group

    def _bound(self) -> None:
        config = self.config
        while self._traces and (
            len(self._traces) > config.max_traces or self._spans > config.max_spans
        ):
            self._drop_trace(next(iter(self._traces)))
        while self._conversations and (
            len(self._conversations) > config.max_conversations
            or self._conversation_repeats > config.max_spans
        ):
            self._drop_conversation(next(iter(self._conversations)))

    def _drop_trace(self, trace_id: str) -> None:
        trace = self._traces.pop(trace_id)
        self._spans -= len(trace.parents)
        self._hot.pop(("trace", trace_id), None)

    def _drop_conversation(self, conversation: str) -> None:
        group = self._conversations.pop(conversation)
        self._conversation_repeats -= group.repeats
        self._hot.pop(("conversation", conversation), None)

    def _add_model_call(self, span: Span, attrs: dict[str, Any]) -> None:
        key = (span.service, span.model or "")
        series = self._series.get(key)
        if series is None:
            series = _Series(*key)
            self._series[key] = series
            while len(self._series) > self.config.max_series:
                self._series.popitem(last=False)
        else:
            self._series.move_to_end(key)
        series.operations.add(span.operation or "")
        if span.response_model:
            series.response_model = span.response_model

        second = -(-span.end_ns // _NS)
        bucket = series.buckets.get(second)
        if bucket is None:
            bucket = series.buckets[second] = _Bucket()
            limit = self.config.baseline_s + self.config.window_s + 1
            if len(series.buckets) > limit:
                del series.buckets[min(series.buckets)]
        bucket.calls += 1
        output, input_ = _count(span.output_tokens), _count(span.input_tokens)
        if output is not None:
            bucket.output_calls += 1
            bucket.output_tokens += output
            if input_ is not None:
                bucket.total_calls += 1
                bucket.total_tokens += input_ + output
        if input_ is not None:
            bucket.max_input_tokens = max(bucket.max_input_tokens, input_)

        reasons = self._overflow(span, attrs, input_)
        if any(reasons):
            bucket.overflowing += 1
            bucket.finish_reason += reasons[0]
            bucket.near_context_window += reasons[1]
            bucket.truncated_attribute += reasons[2]
            bucket.truncation_marker += reasons[3]

    def _overflow(
        self, span: Span, attrs: dict[str, Any], input_tokens: int | None
    ) -> tuple[bool, bool, bool, bool]:
        """Why the call overflowed: finish reason, near the window, attribute, marker."""
        finish = any(_finish_reason(r) in LENGTH_FINISH_REASONS for r in span.finish_reasons)
        near = False
        if input_tokens is not None:
            window = self.context_window(span.model) or self.context_window(span.response_model)
            near = window is not None and input_tokens >= self.config.near_window_ratio * window
        attribute = any(k.endswith("truncated") and _true(v) for k, v in attrs.items())
        marker = False
        for key in MARKED_ATTRIBUTES:
            value = attrs.get(key)
            # The substring test is far cheaper than the pattern over a long prompt, and
            # none of the letters of "truncated" has a case-insensitive match beyond its
            # upper and lower case.
            if (
                isinstance(value, str)
                and "truncated" in value.lower()
                and TRUNCATION_MARKER.search(value)
            ):
                marker = True
                break
        return finish, near, attribute, marker

    def context_window(self, model: str | None) -> int | None:
        """The context window of `model` by longest prefix, None when unknown."""
        if not model:
            return None
        if model in self._windows:
            return self._windows[model]
        name = _model_key(model)
        best: tuple[int, int] | None = None
        for prefix, window in self._window_table.items():
            if name.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), window)
        if len(self._windows) >= _MAX_CACHED_WINDOWS:
            self._windows.clear()
        self._windows[model] = best[1] if best else None
        return self._windows[model]

    # -- evaluating --------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        horizon = _to_ns(now - self.config.baseline_s - self.config.window_s)
        for trace_id in [k for k, t in self._traces.items() if t.last_ns < horizon]:
            self._drop_trace(trace_id)
        for conversation in [k for k, g in self._conversations.items() if g.last_ns < horizon]:
            self._drop_conversation(conversation)
        first = math.floor(now) - self.config.baseline_s - self.config.window_s
        for key in list(self._series):
            buckets = self._series[key].buckets
            for second in [s for s in buckets if s <= first]:
                del buckets[second]
            if not buckets:
                del self._series[key]

    def _loops(self, now: float) -> list[Signal]:
        config = self.config
        now_ns = _to_ns(now)
        start_ns = now_ns - config.window_s * _NS
        found: dict[tuple[str, str], list[tuple[_Group, _Repeats, int, int, int]]] = (
            defaultdict(list)
        )
        for key, group in list(self._hot.items()):
            if not group.hot:
                del self._hot[key]
                continue
            for digest in group.hot:
                repeats = group.calls[digest]
                count, failed, last = repeats.until(now_ns)
                if count >= config.loop_min_repeats and last is not None and last > start_ns:
                    found[(repeats.service, repeats.subject)].append(
                        (group, repeats, count, failed, last)
                    )
        return [self._loop_signal(key, found[key], now) for key in sorted(found)]

    def _loop_signal(
        self,
        key: tuple[str, str],
        loops: list[tuple[_Group, _Repeats, int, int, int]],
        now: float,
    ) -> Signal:
        service, subject = key
        group, repeats, count, failed, last = max(
            loops, key=lambda loop: (loop[2], loop[4], loop[0].kind == "conversation")
        )
        traces: dict[str, None] = {}
        conversations: set[str] = set()
        for other, other_repeats, *_ in loops:
            traces.update(other_repeats.traces)
            if other.kind == "conversation":
                conversations.add(other.key)
        ratio = count / self.config.loop_min_repeats
        evidence: dict[str, Any] = {
            "group": group.kind,
            "trace_ids": list(repeats.traces),
            "conversation_id": group.key if group.kind == "conversation" else None,
            "tool": subject,
            "span_name": repeats.name,
            "repeats": count,
            "failed": failed,
            "arguments": repeats.arguments,
            "first_repeat_at": repeats.first_ns / _NS,
            "last_repeat_at": last / _NS,
            "threshold": self.config.loop_min_repeats,
            "ratio_to_threshold": ratio,
            "traces_looping": len(traces),
            "conversations_looping": len(conversations),
            "window_s": self.config.window_s,
        }
        where = f"{group.kind} {group.key}"
        return Signal(
            kind="agent_loop",
            failure_class="AGENT_LOOP",
            trigger=TRIGGER,
            service=service,
            span_name=repeats.name,
            at=now,
            severity=severity(ratio),
            summary=(
                f"{service}: {subject} called {count} times with the same arguments in "
                f"{where} ({failed} failed, {len(traces)} looping traces)"
            ),
            evidence=evidence,
            subject=subject,
            candidates={"AGENT_LOOP": 1.0},
        )

    def _sum_windows(self, series: _Series, second: int) -> _Windows | None:
        """Column sums of the current window, each baseline point and the baseline period."""
        config = self.config
        window, period = int(config.window_s), int(config.baseline_s)
        span = period + window
        origin = second - span
        inside = [s for s in series.buckets if origin < s <= second]
        if not inside:
            return None
        table = np.zeros((span, len(_COLUMNS)), dtype=float)
        max_input = -1
        for s in inside:
            bucket = series.buckets[s]
            table[s - origin - 1] = bucket.row()
            if s > second - window:
                max_input = max(max_input, bucket.max_input_tokens)
        cumulative = np.vstack([np.zeros(len(_COLUMNS)), np.cumsum(table, axis=0)])
        ends = np.arange(window, period + 1, max(1, int(config.baseline_step_s)))
        return _Windows(
            current=cumulative[span] - cumulative[period],
            points=cumulative[ends] - cumulative[ends - window],
            period=cumulative[period] - cumulative[0],
            max_input_tokens=max_input if max_input >= 0 else None,
        )

    def _token_explosion(self, series: _Series, sums: _Windows, now: float) -> Signal | None:
        config = self.config
        found: dict[str, dict[str, Any]] = {}
        for statistic, calls_col, tokens_col in (
            ("output_tokens_per_call", "output_calls", "output_tokens"),
            ("total_tokens_per_call", "total_calls", "total_tokens"),
        ):
            calls = float(sums.current[_C[calls_col]])
            if calls < config.min_calls:
                continue
            point_calls = sums.points[:, _C[calls_col]]
            busy = point_calls >= config.min_calls
            values = (sums.points[busy, _C[tokens_col]] / point_calls[busy]).tolist()
            if len(values) < config.min_baseline_points:
                continue
            base = robust_baseline(values)
            threshold = max(
                config.token_factor * base.median, base.median + config.token_mad_k * base.sigma
            )
            current = float(sums.current[_C[tokens_col]]) / calls
            found[statistic] = self._token_evidence(
                statistic, current, base, threshold, calls, sums, now
            )

        firing = {s: e for s, e in found.items() if e["current"] > e["threshold"]}
        if not firing:
            return None
        statistic = max(firing, key=lambda s: firing[s]["ratio_to_threshold"] or math.inf)
        evidence = dict(firing[statistic])
        evidence["statistics"] = found
        evidence["model"] = series.model
        evidence["query"] = _token_query(series, statistic == "output_tokens_per_call", config)
        ratio = evidence["ratio_to_threshold"]
        label = "output" if statistic == "output_tokens_per_call" else "total"
        return Signal(
            kind="token_explosion",
            failure_class="TOKEN_EXPLOSION",
            trigger=TRIGGER,
            service=series.service,
            span_name=None,
            at=now,
            severity="critical" if ratio is None else severity(ratio),
            summary=(
                f"{series.service} / {series.model or '(no model)'}: {evidence['current']:.0f} "
                f"{label} tokens per call over {config.window_s}s (baseline median "
                f"{evidence['baseline_median']:.0f}, threshold {evidence['threshold']:.0f})"
            ),
            evidence=evidence,
            subject=series.model or None,
            candidates={"TOKEN_EXPLOSION": 1.0},
        )

    def _token_evidence(
        self,
        statistic: str,
        current: float,
        base: Baseline,
        threshold: float,
        calls: float,
        sums: _Windows,
        now: float,
    ) -> dict[str, Any]:
        config = self.config
        second = math.floor(now)
        model_calls = float(sums.current[_C["calls"]])
        return {
            "statistic": statistic,
            "current": current,
            "baseline_median": base.median,
            "baseline_mad": base.mad,
            "baseline_points": base.points,
            "threshold": threshold,
            "ratio_to_threshold": current / threshold if threshold > 0 else None,
            "window_s": config.window_s,
            "baseline_s": config.baseline_s,
            "baseline_start": float(second - config.baseline_s),
            "baseline_end": float(second - config.window_s),
            "traffic": {
                "calls": model_calls,
                "calls_with_usage": calls,
                "rps": model_calls / config.window_s,
            },
        }

    def _context_overflow(self, series: _Series, sums: _Windows, now: float) -> Signal | None:
        config = self.config
        calls = float(sums.current[_C["calls"]])
        overflowing = float(sums.current[_C["overflowing"]])
        if calls <= 0 or overflowing < config.overflow_min_spans:
            return None
        share = overflowing / calls
        baseline_calls = float(sums.period[_C["calls"]])
        baseline_overflowing = float(sums.period[_C["overflowing"]])
        baseline_share = baseline_overflowing / baseline_calls if baseline_calls else 0.0
        threshold = max(
            config.overflow_ratio_min, config.overflow_baseline_factor * baseline_share
        )
        if share < threshold:
            return None

        window = self.context_window(series.model) or self.context_window(series.response_model)
        ratio = share / threshold if threshold > 0 else None
        evidence: dict[str, Any] = {
            "statistic": "overflow_share",
            "current": share,
            "share": share,
            "overflowing": overflowing,
            "calls": calls,
            "reasons": {r: float(sums.current[_C[r]]) for r in _REASONS},
            "baseline_share": baseline_share if baseline_calls else None,
            "baseline_calls": baseline_calls,
            "baseline_overflowing": baseline_overflowing,
            "threshold": threshold,
            "ratio_to_threshold": ratio,
            "max_input_tokens": sums.max_input_tokens,
            "context_window": window,
            "near_window_ratio": config.near_window_ratio,
            "model": series.model,
            "window_s": config.window_s,
            "baseline_s": config.baseline_s,
        }
        return Signal(
            kind="context_overflow",
            failure_class="CONTEXT_OVERFLOW",
            trigger=TRIGGER,
            service=series.service,
            span_name=None,
            at=now,
            severity="critical" if ratio is None else severity(ratio),
            summary=(
                f"{series.service} / {series.model or '(no model)'}: {overflowing:.0f} of "
                f"{calls:.0f} model calls hit the context limit over {config.window_s}s "
                f"({share:.0%}, baseline {baseline_share:.0%})"
            ),
            evidence=evidence,
            subject=series.model or None,
            candidates={"CONTEXT_OVERFLOW": 1.0, "TOKEN_EXPLOSION": 0.3},
        )


def _call(span: Span, attrs: dict[str, Any]) -> _Call | None:
    """The identity of a tool, agent or HTTP call; None for any other span."""
    operation = span.operation
    subject = span.name
    if operation == TOOL_OPERATION:
        subject = _text(attrs.get("gen_ai.tool.name")) or span.name
        arguments = _normalised(attrs.get("gen_ai.tool.call.arguments"))
    elif operation == AGENT_OPERATION:
        messages = attrs.get("gen_ai.input.messages")
        if messages is None:
            return None
        arguments = messages if isinstance(messages, str) else _dumped(messages)
    elif operation is None and span.kind == "SPAN_KIND_CLIENT":
        request = _http_request(attrs)
        if request is None:
            return None
        arguments = request
    else:
        return None
    identity = "\x1f".join((span.service, span.name, subject, arguments))
    digest = hashlib.blake2b(
        identity.encode("utf-8", "backslashreplace"), digest_size=16
    ).digest()
    return _Call(
        digest=digest,
        service=span.service,
        name=span.name,
        subject=subject,
        arguments=arguments[:200],
        end_ns=span.end_ns,
        failed=span.status == "STATUS_CODE_ERROR",
        trace_id=span.trace_id,
    )


def _http_request(attrs: dict[str, Any]) -> str | None:
    """ "METHOD URL" of an HTTP client call whose arguments are all in its URL."""
    method = attrs.get("http.request.method")
    if not isinstance(method, str) or method.upper() not in COMPARED_HTTP_METHODS:
        return None
    url = attrs.get("url.full")
    if not isinstance(url, str) or not url:
        host, path, query = (
            _text(attrs.get(k)) for k in ("server.address", "url.path", "url.query")
        )
        if not (host or path or query):
            return None
        url = host + path + (f"?{query}" if query else "")
    return f"{method.upper()} {url}"


def _normalised(value: Any) -> str:
    """Arguments as compared: JSON with sorted keys where they are JSON, else their string."""
    if value is None:
        return ""
    if isinstance(value, str):
        if len(value) > _MAX_PARSED_ARGUMENTS:
            return value
        try:
            return _dumped(json.loads(value))
        except (ValueError, RecursionError):
            return value
    if isinstance(value, dict | list):
        return _dumped(value)
    return str(value)


def _dumped(value: Any) -> str:
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        )
    except (TypeError, ValueError, RecursionError):
        return str(value)


def _text(value: Any) -> str:
    if value is None or isinstance(value, dict | list):
        return ""
    return value if isinstance(value, str) else str(value)


def _conversation_id(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _count(value: Any) -> int | None:
    """A token count, None unless a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _finish_reason(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    reason = value.strip().lower().rsplit(".", 1)[-1]
    return reason.removeprefix("finish_reason_")


def _true(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value > 0
    return isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS


def _model_key(model: str) -> str:
    return model.strip().lower().rsplit("/", 1)[-1]


def _to_ns(seconds: float) -> int:
    whole = math.floor(seconds)
    return whole * _NS + round((seconds - whole) * _NS)


def _token_query(series: _Series, output: bool, config: PatternConfig) -> str:
    """PromQL for the current mean tokens per call of this service and model."""
    matchers = (
        f"service_name={quote(series.service)},gen_ai_request_model={quote(series.model)}"
    )
    types = 'gen_ai_token_type="output"' if output else 'gen_ai_token_type=~"input|output"'
    operations = sorted(o for o in series.operations if o) or sorted(MODEL_OPERATIONS)
    if len(operations) == 1:
        operation = f"gen_ai_operation_name={quote(operations[0])}"
    else:
        operation = f"gen_ai_operation_name=~{quote('|'.join(operations))}"
    w = f"{config.window_s}s"
    return (
        f"sum(increase({TOKENS_METRIC}{{{matchers},{types}}}[{w}])) "
        f"/ sum(increase({CALLS_METRIC}{{{matchers},{operation}}}[{w}]))"
    )
