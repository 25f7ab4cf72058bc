"""Trace-pattern detectors: agent loops, token explosions and context-window overflow.

Spans are built by hand. NOW is a whole second; the current window is (NOW - 60, NOW]. Where
a test needs baseline points that do not overlap, it uses a 60-second step: point k (k = 0 ..
29) is the window (NOW - 1860 + 60k, NOW - 1800 + 60k], and its calls end at its middle.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from proveai_agent.signals import Signal
from proveai_agent.spans import Span
from proveai_agent.watch.patterns import PatternConfig, TracePatterns

NOW = 1_700_000_040.0
STEP_60 = PatternConfig(baseline_step_s=60)
_ids = itertools.count(1)
_MISSING = object()


def ns(seconds: float) -> int:
    """Epoch seconds as epoch nanoseconds, exact to the millisecond."""
    return round(seconds * 1000) * 1_000_000


def make_span(
    *,
    trace: str = "t1",
    span_id: str | None = None,
    parent: str | None = None,
    service: str = "agent",
    name: str = "work",
    kind: str = "SPAN_KIND_INTERNAL",
    status: str = "STATUS_CODE_OK",
    end: float = NOW - 10,
    duration: float = 0.5,
    operation: str | None = None,
    model: str | None = None,
    response_model: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    finish_reasons: list[Any] | None = None,
    attributes: dict[str, Any] | None = None,
) -> Span:
    attrs = dict(attributes or {})
    if operation is not None:
        attrs.setdefault("gen_ai.operation.name", operation)
    return Span(
        trace_id=trace,
        span_id=span_id or f"{next(_ids):016x}",
        parent_span_id=parent,
        service=service,
        name=name,
        kind=kind,
        status=status,
        status_message="",
        start_ns=ns(end - duration),
        end_ns=ns(end),
        model=model,
        response_model=response_model,
        operation=operation,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        finish_reasons=list(finish_reasons or []),
        attributes=attrs,
    )


def tool(arguments: Any = '{"q": "x"}', *, tool_name: Any = "search", **kw: Any) -> Span:
    """An execute_tool span; `_MISSING` arguments leave the attribute out."""
    attrs: dict[str, Any] = {"gen_ai.tool.name": tool_name, **kw.pop("attributes", {})}
    if arguments is not _MISSING:
        attrs["gen_ai.tool.call.arguments"] = arguments
    kw.setdefault("name", f"execute_tool {tool_name}")
    return make_span(operation="execute_tool", attributes=attrs, **kw)


def chat(output: int | None = 100, input_: int | None = None, **kw: Any) -> Span:
    kw.setdefault("model", "gpt-4o")
    kw.setdefault("name", f"chat {kw['model']}")
    kw.setdefault("kind", "SPAN_KIND_CLIENT")
    return make_span(operation="chat", output_tokens=output, input_tokens=input_, **kw)


def run(
    spans: list[Span], config: PatternConfig | None = None, now: float = NOW
) -> list[Signal]:
    patterns = TracePatterns(config or PatternConfig())
    patterns.observe(spans)
    return patterns.evaluate(now)


def of_kind(signals: list[Signal], kind: str) -> list[Signal]:
    return [s for s in signals if s.kind == kind]


def repeats(n: int, first_end: float = NOW - 30, **kw: Any) -> list[Span]:
    """n identical tool calls, one second apart."""
    return [tool(end=first_end + i, **kw) for i in range(n)]


# -- agent loop -------------------------------------------------------------------------------


def test_same_tool_call_five_times_in_one_trace_is_a_loop() -> None:
    signals = run(repeats(5))

    assert len(signals) == 1
    signal = signals[0]
    assert (signal.kind, signal.failure_class, signal.trigger) == (
        "agent_loop",
        "AGENT_LOOP",
        "trace_pattern",
    )
    assert (signal.service, signal.span_name, signal.subject) == (
        "agent",
        "execute_tool search",
        "search",
    )
    assert signal.candidates == {"AGENT_LOOP": 1.0}
    assert signal.at == NOW
    e = signal.evidence
    assert e["group"] == "trace"
    assert e["trace_ids"] == ["t1"]
    assert e["conversation_id"] is None
    assert e["tool"] == "search"
    assert e["repeats"] == 5
    assert e["failed"] == 0
    assert e["arguments"] == '{"q":"x"}'
    assert e["first_repeat_at"] == NOW - 30
    assert e["last_repeat_at"] == NOW - 26
    assert e["traces_looping"] == 1
    # 5 repeats / 5 needed = 1.0: low.
    assert e["ratio_to_threshold"] == 1.0
    assert signal.severity == "low"


def test_four_repeats_are_below_the_threshold() -> None:
    assert run(repeats(4)) == []


def test_pagination_with_different_arguments_is_not_a_loop() -> None:
    pages = [tool(f'{{"q": "x", "page": {i}}}', end=NOW - 50 + i) for i in range(1, 31)]
    cursors = [tool(f'{{"cursor": "tok{i:04x}"}}', end=NOW - 50 + i) for i in range(30)]

    assert run(pages + cursors) == []


def test_a_loop_whose_last_repeat_left_the_window_does_not_fire() -> None:
    # The window is (NOW - 60, NOW]: a last repeat at NOW - 60 is outside, at NOW - 59 inside.
    assert run(repeats(5, first_end=NOW - 64)) == []
    assert len(run(repeats(5, first_end=NOW - 63))) == 1


def test_only_repeats_that_ended_by_now_count() -> None:
    patterns = TracePatterns(PatternConfig())
    patterns.observe([*repeats(4, first_end=NOW - 20), tool(end=NOW + 5)])

    assert patterns.evaluate(NOW) == []
    later = patterns.evaluate(NOW + 5)
    assert [s.evidence["repeats"] for s in later] == [5]


def test_a_repeat_ending_exactly_at_now_counts() -> None:
    assert len(run(repeats(5, first_end=NOW - 4))) == 1


def test_failed_repeats_are_counted_and_more_repeats_raise_severity() -> None:
    spans = repeats(6)
    for span in spans[:4]:
        span.status = "STATUS_CODE_ERROR"
    (signal,) = run(spans)
    assert signal.evidence["failed"] == 4
    # 6 / 5 = 1.2: low.
    assert signal.severity == "low"

    # 10 / 5 = 2.0: high; 20 / 5 = 4.0: critical.
    assert run(repeats(10))[0].severity == "high"
    assert run(repeats(20))[0].severity == "critical"


def test_json_key_order_of_the_arguments_does_not_matter() -> None:
    spellings = ['{"a": 1, "b": [1, 2]}', '{"b":[1,2],"a":1}', {"b": [1, 2], "a": 1}]
    spans = [tool(spellings[i % 3], end=NOW - 30 + i) for i in range(5)]

    (signal,) = run(spans)
    assert signal.evidence["repeats"] == 5
    assert signal.evidence["arguments"] == '{"a":1,"b":[1,2]}'


def test_spans_of_one_trace_in_separate_batches_and_out_of_order() -> None:
    ends = [NOW - 10, NOW - 30, NOW - 20, NOW - 50, NOW - 40]
    spans = [tool(end=end) for end in ends]
    patterns = TracePatterns(PatternConfig())
    for batch in ([spans[2]], [spans[0], spans[4]], [spans[1], spans[3]]):
        patterns.observe(batch)

    (signal,) = patterns.evaluate(NOW)
    assert signal.evidence["repeats"] == 5
    assert signal.evidence["first_repeat_at"] == NOW - 50
    assert signal.evidence["last_repeat_at"] == NOW - 10


def test_a_span_delivered_twice_counts_once() -> None:
    spans = repeats(4)
    patterns = TracePatterns(PatternConfig())
    patterns.observe(spans)
    patterns.observe(spans)

    assert patterns.evaluate(NOW) == []
    assert patterns.sizes()["spans"] == 4


def _conversation_turn(
    trace: str, end: float, conversation: str = "conv-1", arguments: str = '{"q": "x"}'
) -> list[Span]:
    """An agent span carrying the conversation id and one tool call under it."""
    root = make_span(
        trace=trace,
        name="invoke_agent planner",
        end=end + 1,
        attributes={"gen_ai.conversation.id": conversation},
    )
    return [root, tool(arguments, trace=trace, parent=root.span_id, end=end)]


def test_a_conversation_spread_over_several_traces_is_one_loop() -> None:
    spans = [s for i in range(5) for s in _conversation_turn(f"t{i}", NOW - 50 + 5 * i)]

    (signal,) = run(spans)
    e = signal.evidence
    assert e["group"] == "conversation"
    assert e["conversation_id"] == "conv-1"
    assert e["repeats"] == 5
    assert e["trace_ids"] == ["t0", "t1", "t2", "t3", "t4"]
    assert e["traces_looping"] == 5
    assert e["conversations_looping"] == 1


def test_different_conversations_do_not_add_up() -> None:
    spans = [
        s
        for i in range(5)
        for s in _conversation_turn(f"t{i}", NOW - 50 + 5 * i, conversation=f"c{i % 2}")
    ]
    # c0 has 3 repeats, c1 has 2; each trace has 1.
    assert run(spans) == []


def test_a_tool_span_inherits_the_conversation_of_an_ancestor_that_arrives_later() -> None:
    patterns = TracePatterns(PatternConfig())
    roots, middles, tools = [], [], []
    for i in range(5):
        trace = f"t{i}"
        root = make_span(trace=trace, attributes={"gen_ai.conversation.id": "conv-9"})
        middle = make_span(trace=trace, parent=root.span_id, name="chain step")
        roots.append(root)
        middles.append(middle)
        tools.append(tool(trace=trace, parent=middle.span_id, end=NOW - 40 + i))
    # Tools first, then the spans between them and the root, then the roots.
    for batch in (tools, middles):
        patterns.observe(batch)
        assert patterns.evaluate(NOW) == []
    patterns.observe(roots)

    (signal,) = patterns.evaluate(NOW)
    assert signal.evidence["conversation_id"] == "conv-9"
    assert signal.evidence["repeats"] == 5


def test_one_signal_per_service_and_tool_with_the_largest_loop() -> None:
    spans = [
        *repeats(5, trace="t1"),
        *repeats(5, trace="t2"),
        *repeats(6, trace="t3", arguments='{"q": "y"}'),
        *repeats(5, trace="t4", tool_name="fetch"),
        *repeats(5, trace="t5", service="other"),
    ]
    signals = run(spans)

    assert [(s.service, s.subject) for s in signals] == [
        ("agent", "fetch"),
        ("agent", "search"),
        ("other", "search"),
    ]
    search = signals[1].evidence
    assert search["repeats"] == 6
    assert search["trace_ids"] == ["t3"]
    assert search["arguments"] == '{"q":"y"}'
    assert search["traces_looping"] == 3


def _get(url: dict[str, Any], method: str = "GET", end: float = NOW - 10) -> Span:
    attrs = {"http.request.method": method, **url}
    return make_span(name=method, kind="SPAN_KIND_CLIENT", end=end, attributes=attrs)


def test_the_same_http_get_repeated_is_a_loop() -> None:
    spans = [_get({"url.full": "https://api.example.com/items?id=7"}) for _ in range(5)]
    (signal,) = run(spans)
    assert signal.subject == "GET"
    assert signal.evidence["arguments"] == "GET https://api.example.com/items?id=7"

    parts = {"server.address": "api.example.com", "url.path": "/items", "url.query": "id=7"}
    (signal,) = run([_get(parts) for _ in range(5)])
    assert signal.evidence["arguments"] == "GET api.example.com/items?id=7"


def test_http_posts_and_gets_of_other_pages_are_not_loops() -> None:
    url = {"url.full": "https://api.openai.com/v1/chat/completions"}
    # A POST's arguments are in its body, which the span does not show.
    assert run([_get(url, method="POST") for _ in range(10)]) == []
    pages = [_get({"url.full": f"https://api.example.com/items?page={i}"}) for i in range(10)]
    assert run(pages) == []
    # No URL at all: nothing to compare.
    assert run([_get({}) for _ in range(10)]) == []


def test_an_agent_invoked_with_the_same_input_messages_is_a_loop() -> None:
    messages = '[{"role": "user", "parts": [{"type": "text", "content": "plan"}]}]'

    def agent(attrs: dict[str, Any]) -> Span:
        return make_span(
            name="invoke_agent planner", operation="invoke_agent", attributes=attrs
        )

    (signal,) = run([agent({"gen_ai.input.messages": messages}) for _ in range(5)])
    assert signal.subject == "invoke_agent planner"
    # Without input messages an agent span is not a call.
    assert run([agent({}) for _ in range(5)]) == []


def test_model_calls_are_not_loop_candidates() -> None:
    assert of_kind(run([chat(end=NOW - 10) for _ in range(10)]), "agent_loop") == []


def test_hostile_tool_arguments_do_not_break_the_detector() -> None:
    huge = "x" * 1_000_000
    (signal,) = run(repeats(5, arguments=huge))
    assert len(signal.evidence["arguments"]) == 200

    deep = "[" * 30_000 + "]" * 30_000  # under the parse limit, too deep for the parser
    assert run(repeats(5, arguments=deep))[0].evidence["repeats"] == 5

    assert run(repeats(5, arguments=5))[0].evidence["arguments"] == "5"
    assert run(repeats(5, arguments=b"\x00\xff"))[0].evidence["repeats"] == 5
    assert run(repeats(5, arguments="not json {"))[0].evidence["arguments"] == "not json {"
    assert run(repeats(5, arguments={1: "a", "b": 2}))[0].evidence["repeats"] == 5
    # No tool name and no arguments: the span name is the subject.
    (signal,) = run(repeats(5, arguments=_MISSING, tool_name=None, name="execute_tool"))
    assert signal.subject == "execute_tool"
    assert run(repeats(5, tool_name=42))[0].subject == "42"


def test_odd_spans_are_tolerated() -> None:
    spans = [
        make_span(end=NOW - 5, duration=-3),
        make_span(end=0, duration=0),
        make_span(parent="", attributes={"gen_ai.conversation.id": ["a"]}),
        make_span(attributes={"gen_ai.conversation.id": True}),
        make_span(operation="execute_tool"),
        make_span(operation="chat", model=None, finish_reasons=[None, 5, "LENGTH"]),
        make_span(span_id="a", parent="b", trace="cycle"),
        make_span(span_id="b", parent="a", trace="cycle"),
        tool(trace="cycle", parent="a"),
    ]
    patterns = TracePatterns(PatternConfig())
    patterns.observe(spans)
    assert patterns.evaluate(NOW) == []


# -- memory bounds ----------------------------------------------------------------------------


def test_state_stays_capped_however_many_traces_arrive() -> None:
    config = PatternConfig(
        max_traces=50, max_spans=400, max_conversations=20, max_series=5, max_calls_per_group=10
    )
    patterns = TracePatterns(config)
    for i in range(1000):
        trace = f"trace-{i}"
        spans = _conversation_turn(trace, NOW - 30, conversation=f"c{i}")
        spans += [tool(f'{{"page": {p}}}', trace=trace) for p in range(3)]
        spans.append(chat(trace=trace, model=f"m{i % 50}"))
        patterns.observe(spans)
    sizes = patterns.sizes()
    assert sizes["traces"] <= 50
    assert sizes["spans"] <= 400
    assert sizes["conversations"] <= 20
    assert sizes["series"] <= 5


def test_distinct_calls_in_one_trace_and_seconds_per_series_are_capped() -> None:
    patterns = TracePatterns(PatternConfig(max_calls_per_group=10))
    patterns.observe(tool(f'{{"page": {p}}}', end=NOW - 50) for p in range(1000))
    assert patterns.sizes()["calls"] == 10

    patterns = TracePatterns(PatternConfig())
    patterns.observe(chat(end=NOW - 20_000 + s) for s in range(20_000))
    # One bucket per second of the baseline and window (1800 + 60) and the one being filled.
    assert patterns.sizes()["buckets"] <= 1861


def test_state_older_than_the_baseline_needs_is_dropped() -> None:
    patterns = TracePatterns(PatternConfig())
    # The baseline reaches back to NOW - 1800 - 60; all of this ended before that.
    old = NOW - 1900
    patterns.observe(_conversation_turn("t-old", old) + repeats(5, first_end=old - 10))
    patterns.observe([chat(end=old)])
    assert patterns.sizes()["traces"] == 2

    assert patterns.evaluate(NOW) == []
    assert patterns.sizes() == {
        "traces": 0,
        "spans": 0,
        "conversations": 0,
        "calls": 0,
        "series": 0,
        "buckets": 0,
    }


# -- token explosion --------------------------------------------------------------------------


def history(
    outputs: list[int | None],
    inputs: list[int | None] | None = None,
    calls: list[int] | None = None,
    **kw: Any,
) -> list[Span]:
    """Model calls for the 30 baseline points of a 60-second step, values cycling by point."""
    spans = []
    for k in range(30):
        end = NOW - 1800 + 60 * k - 30
        n = calls[k % len(calls)] if calls else 5
        output = outputs[k % len(outputs)]
        input_ = inputs[k % len(inputs)] if inputs else None
        spans += [chat(output, input_, end=end, **kw) for _ in range(n)]
    return spans


def current(n: int, output: int | None, input_: int | None = None, **kw: Any) -> list[Span]:
    return [chat(output, input_, end=NOW - 30, **kw) for _ in range(n)]


def test_output_tokens_above_three_times_the_baseline_median_fire() -> None:
    # 30 points of 100 tokens: median 100, MAD 0; threshold max(3 × 100, 100 + 0) = 300.
    signals = run(history([100]) + current(5, 400), STEP_60)

    (signal,) = signals
    assert (signal.kind, signal.failure_class, signal.trigger) == (
        "token_explosion",
        "TOKEN_EXPLOSION",
        "trace_pattern",
    )
    assert (signal.service, signal.span_name, signal.subject) == ("agent", None, "gpt-4o")
    assert signal.candidates == {"TOKEN_EXPLOSION": 1.0}
    e = signal.evidence
    assert e["statistic"] == "output_tokens_per_call"
    assert e["current"] == 400
    assert e["baseline_median"] == 100
    assert e["baseline_mad"] == 0
    assert e["baseline_points"] == 30
    assert e["threshold"] == 300
    assert e["ratio_to_threshold"] == pytest.approx(400 / 300)
    assert (e["window_s"], e["baseline_s"]) == (60, 1800)
    assert (e["baseline_start"], e["baseline_end"]) == (NOW - 1800, NOW - 60)
    assert e["traffic"] == {"calls": 5, "calls_with_usage": 5, "rps": 5 / 60}
    # Inputs were not reported, so the total is not known.
    assert set(e["statistics"]) == {"output_tokens_per_call"}
    assert e["query"] == (
        'sum(increase(llm_gen_ai_tokens_total{service_name="agent",'
        'gen_ai_request_model="gpt-4o",gen_ai_token_type="output"}[60s])) '
        '/ sum(increase(llm_traces_span_metrics_calls_total{service_name="agent",'
        'gen_ai_request_model="gpt-4o",gen_ai_operation_name="chat"}[60s]))'
    )
    # 400 / 300 = 1.33: medium.
    assert signal.severity == "medium"


def test_token_explosion_with_the_default_overlapping_baseline_points() -> None:
    # One call every 10 s at offsets ending in 5, so each 60 s point holds 6 calls.
    # Points every 20 s from NOW - 1800 to NOW - 60: (1800 - 60) / 20 + 1 = 88.
    spans = [chat(100, end=NOW - 1855 + 10 * j) for j in range(180)]
    spans += current(6, 350)

    (signal,) = run(spans)
    assert signal.evidence["baseline_points"] == 88
    assert signal.evidence["baseline_median"] == 100
    assert signal.evidence["threshold"] == 300


def test_tokens_at_2_9_times_the_baseline_do_not_fire() -> None:
    assert run(history([100]) + current(5, 290), STEP_60) == []


def test_a_wide_baseline_raises_the_threshold_above_the_factor() -> None:
    # Points alternate 50 and 150: median (50 + 150) / 2 = 100, MAD 50, σ = 74.13;
    # threshold max(300, 100 + 4 × 74.13 = 396.52) = 396.52.
    base = history([50, 150])
    assert run(base + current(5, 390), STEP_60) == []

    (signal,) = run(base + current(5, 400), STEP_60)
    assert signal.evidence["baseline_mad"] == 50
    assert signal.evidence["threshold"] == pytest.approx(100 + 4 * 1.4826 * 50)


def test_alternating_healthy_traffic_does_not_fire() -> None:
    assert run(history([50, 150]) + current(5, 150), STEP_60) == []


def test_too_few_calls_in_the_window_do_not_fire() -> None:
    assert run(history([100]) + current(4, 1000), STEP_60) == []


def test_too_few_baseline_points_do_not_fire() -> None:
    # Only points with 5 calls count: 2 of them (k = 28, 29) are under the 3 needed.
    calls = [4] * 28 + [5, 5]
    assert run(history([100], calls=calls) + current(5, 1000), STEP_60) == []

    calls = [4] * 27 + [5, 5, 5]
    (signal,) = run(history([100], calls=calls) + current(5, 1000), STEP_60)
    assert signal.evidence["baseline_points"] == 3


def test_total_tokens_fire_when_only_the_input_grows() -> None:
    # Total baseline 100 + 100 = 200, threshold 600; current 100 + 2000 = 2100.
    spans = history([100], inputs=[100]) + current(5, 100, 2000)

    (signal,) = run(spans, STEP_60)
    e = signal.evidence
    assert e["statistic"] == "total_tokens_per_call"
    assert e["current"] == 2100
    assert e["threshold"] == 600
    assert e["statistics"]["output_tokens_per_call"]["current"] == 100
    assert 'gen_ai_token_type=~"input|output"' in e["query"]
    # 2100 / 600 = 3.5: high.
    assert signal.severity == "high"


def test_the_statistic_furthest_above_its_threshold_is_reported() -> None:
    # Output 700 / 300 = 2.33; total (700 + 100) / (3 × 200) = 1.33.
    (signal,) = run(history([100], inputs=[100]) + current(5, 700, 100), STEP_60)
    assert signal.evidence["statistic"] == "output_tokens_per_call"
    assert signal.evidence["statistics"]["total_tokens_per_call"]["current"] == 800
    assert signal.severity == "high"


def test_each_service_and_model_has_its_own_baseline() -> None:
    spans = (
        history([100]) + history([1000], model="gpt-4.1") + current(5, 1000, model="gpt-4.1")
    )
    assert run(spans, STEP_60) == []


def test_calls_without_usage_and_odd_token_counts_are_left_out() -> None:
    spans = history([100]) + current(5, 400)
    spans += [chat(None, end=NOW - 30), chat(-5, -1, end=NOW - 30), chat(True, end=NOW - 30)]
    (signal,) = run(spans, STEP_60)
    assert signal.evidence["current"] == 400
    assert signal.evidence["traffic"]["calls"] == 8
    assert signal.evidence["traffic"]["calls_with_usage"] == 5


# -- context overflow -------------------------------------------------------------------------


def overflow_signal(spans: list[Span], config: PatternConfig | None = None) -> Signal | None:
    found = of_kind(run(spans, config), "context_overflow")
    assert len(found) <= 1
    return found[0] if found else None


def window_calls(n: int, **kw: Any) -> list[Span]:
    return [chat(100, 1000, end=NOW - 30, **kw) for _ in range(n)]


def test_calls_stopped_at_the_length_limit_fire() -> None:
    spans = window_calls(7) + window_calls(3, finish_reasons=["length"])

    signal = overflow_signal(spans)
    assert signal is not None
    assert (signal.failure_class, signal.trigger, signal.subject) == (
        "CONTEXT_OVERFLOW",
        "trace_pattern",
        "gpt-4o",
    )
    assert signal.candidates == {"CONTEXT_OVERFLOW": 1.0, "TOKEN_EXPLOSION": 0.3}
    e = signal.evidence
    assert (e["overflowing"], e["calls"], e["share"]) == (3, 10, 0.3)
    assert e["reasons"] == {
        "finish_reason": 3,
        "near_context_window": 0,
        "truncated_attribute": 0,
        "truncation_marker": 0,
    }
    # No baseline calls: baseline share unknown, counted as 0; threshold max(0.1, 0) = 0.1.
    assert e["baseline_share"] is None
    assert e["threshold"] == 0.1
    assert e["max_input_tokens"] == 1000
    assert e["context_window"] == 128_000
    # 0.3 / 0.1 = 3: high.
    assert signal.severity == "high"


def test_length_finish_reasons_are_matched_whatever_their_case() -> None:
    spans = window_calls(7)
    spans += [chat(finish_reasons=[r], end=NOW - 30) for r in ("MAX_TOKENS", "Length")]
    spans += [chat(finish_reasons=["FinishReason.MAX_TOKENS"], end=NOW - 30)]
    spans += [chat(finish_reasons=[r], end=NOW - 30) for r in ("stop", "tool_calls", "STOP")]

    signal = overflow_signal(spans)
    assert signal is not None
    assert signal.evidence["reasons"]["finish_reason"] == 3


def test_two_overflowing_calls_are_too_few() -> None:
    assert overflow_signal(window_calls(1) + window_calls(2, finish_reasons=["length"])) is None


def test_a_share_under_ten_percent_does_not_fire() -> None:
    # 3 of 40: 7.5 %.
    assert (
        overflow_signal(window_calls(37) + window_calls(3, finish_reasons=["length"])) is None
    )


def test_the_share_must_be_twice_the_baseline_share() -> None:
    # Baseline: 100 calls of which 20 overflow, share 0.2; threshold max(0.1, 2 × 0.2) = 0.4.
    base = [
        chat(end=NOW - 1000 + i, finish_reasons=["length"] if i < 20 else [])
        for i in range(100)
    ]
    assert (
        overflow_signal(base + window_calls(7) + window_calls(3, finish_reasons=["length"]))
        is None
    )

    signal = overflow_signal(
        base + window_calls(5) + window_calls(5, finish_reasons=["length"])
    )
    assert signal is not None
    assert signal.evidence["baseline_share"] == 0.2
    assert signal.evidence["baseline_calls"] == 100
    assert signal.evidence["threshold"] == 0.4
    # 0.5 / 0.4 = 1.25: low.
    assert signal.severity == "low"


def test_input_tokens_near_the_context_window_overflow() -> None:
    # gpt-4o: 128 000 tokens; 0.9 × 128 000 = 115 200.
    near = [chat(100, 115_200, model="gpt-4o-2024-08-06", end=NOW - 30) for _ in range(3)]
    signal = overflow_signal(window_calls(7, model="gpt-4o-2024-08-06") + near)
    assert signal is not None
    assert signal.evidence["reasons"]["near_context_window"] == 3
    assert signal.evidence["max_input_tokens"] == 115_200
    assert signal.evidence["context_window"] == 128_000

    under = [chat(100, 115_199, end=NOW - 30) for _ in range(3)]
    assert overflow_signal(window_calls(7) + under) is None


def test_context_windows_are_matched_by_the_longest_prefix() -> None:
    patterns = TracePatterns(PatternConfig(context_windows={"acme": 32_000, "gpt-4o": 1_000}))
    assert patterns.context_window("gpt-4-turbo-2024-04-09") == 128_000
    assert patterns.context_window("gpt-4-0613") == 8_192
    assert patterns.context_window("openai/GPT-4.1-mini") == 1_047_576
    assert patterns.context_window("claude-3-5-sonnet-20241022") == 200_000
    assert patterns.context_window("acme-large") == 32_000
    assert patterns.context_window("gpt-4o-mini") == 1_000
    assert patterns.context_window("unheard-of") is None
    assert patterns.context_window(None) is None


def test_an_unknown_model_with_many_input_tokens_and_no_marker_does_not_fire() -> None:
    spans = [chat(100, 10_000_000, model="acme-large", end=NOW - 30) for _ in range(10)]
    assert overflow_signal(spans) is None

    # With its window configured, 0.9 × 32 000 = 28 800 input tokens overflow.
    config = PatternConfig(context_windows={"acme": 32_000})
    signal = overflow_signal(spans, config)
    assert signal is not None
    assert signal.evidence["context_window"] == 32_000


def test_the_response_model_names_the_window_when_the_request_model_is_unknown() -> None:
    spans = [
        chat(10, 8_000, model="my-deployment", response_model="gpt-4-0613", end=NOW - 30)
        for _ in range(3)
    ]
    signal = overflow_signal(spans)
    assert signal is not None
    assert signal.subject == "my-deployment"
    assert signal.evidence["context_window"] == 8_192


def test_a_true_truncated_attribute_overflows_and_a_false_one_does_not() -> None:
    true = [
        {"gen_ai.prompt.truncated": True},
        {"llm.input.truncated": "true"},
        {"x.truncated": 2},
    ]
    false = [
        {"a.truncated": False},
        {"b.truncated": "false"},
        {"c.truncated": 0},
        {"d.truncated": "no"},
    ]
    spans = [chat(end=NOW - 30, attributes=a) for a in true + false]
    spans += window_calls(3)

    signal = overflow_signal(spans)
    assert signal is not None
    assert signal.evidence["reasons"]["truncated_attribute"] == 3
    assert signal.evidence["overflowing"] == 3


def test_truncation_markers_in_raw_prompts_overflow() -> None:
    marked = [
        {"gen_ai.input.messages": '[{"role": "user", "content": "long text ... [truncated]"}]'},
        {"gen_ai.prompt": "earlier turns <TRUNCATED> question"},
        {"gen_ai.prompt": "[content truncated] question"},
    ]
    unmarked = [
        {"gen_ai.input.messages": [{"role": "user", "content": "[truncated]"}]},
        {"gen_ai.prompt": "the text was truncated by the user"},
        {"gen_ai.output.messages": "[truncated]"},
    ]
    spans = [chat(end=NOW - 30, attributes=a) for a in marked + unmarked]
    spans += window_calls(4)

    signal = overflow_signal(spans)
    assert signal is not None
    assert signal.evidence["reasons"]["truncation_marker"] == 3
    assert signal.evidence["overflowing"] == 3


def test_a_call_with_several_reasons_overflows_once() -> None:
    both = [chat(100, 120_000, finish_reasons=["length"], end=NOW - 30) for _ in range(3)]
    signal = overflow_signal(window_calls(7) + both)
    assert signal is not None
    assert signal.evidence["overflowing"] == 3
    assert signal.evidence["reasons"]["finish_reason"] == 3
    assert signal.evidence["reasons"]["near_context_window"] == 3
    assert signal.evidence["share"] == 0.3


def test_overflow_after_now_or_before_the_window_is_not_counted() -> None:
    late = [chat(finish_reasons=["length"], end=NOW + 1) for _ in range(3)]
    early = [chat(finish_reasons=["length"], end=NOW - 60) for _ in range(3)]
    assert overflow_signal(window_calls(7) + late + early) is None
