"""The highlighted span in full: status, model, tokens, scores, messages and retrieved chunks.

Only what the agent sent is shown: a field the span did not carry is left out, not guessed.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.render import Clipped, Pairs
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.scroll_pane import ScrollPane
from proveai_tui.widgets.span_tree import span_model

MESSAGE_LINES = 4
"""A message shows at most this many lines, wrapped to the pane's width."""
NO_SPAN = "move to a span to see its details"


def part_text(part: Any) -> str:
    """One message part as text: its content, or what a tool call asked and got."""
    if not isinstance(part, dict):
        return str(part) if part else ""
    kind = str(part.get("type") or "")
    if kind == "text":
        return str(part.get("content") or "")
    if kind == "tool_call":
        return f"tool call {part.get('name') or fmt.DASH}({_written(part.get('arguments'))})"
    if kind == "tool_call_response":
        return f"tool result {_written(part.get('response'))}"
    content = part.get("content")
    return f"[{kind or 'part'}] {_written(content)}".rstrip()


def _written(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def message_text(message: dict[str, Any]) -> str:
    return "\n".join(t for t in (part_text(p) for p in fmt.items(message.get("parts"))) if t)


def message_role(message: dict[str, Any]) -> str:
    return str(message.get("role") or message.get("direction") or fmt.DASH)


def messages_view(messages: list[dict[str, Any]]) -> tuple[Table, list[str]]:
    """Role beside the text of each message, the text cut to a few wrapped lines."""
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(ratio=1)
    plain = []
    for message in messages:
        role, text = message_role(message), message_text(message)
        style = "dim" if message.get("direction") == "system" else ""
        grid.add_row(role, Clipped(Text(text or fmt.DASH, style=style), MESSAGE_LINES))
        plain.append(f"{role}  {text}")
    return grid, plain


def chunk_line(chunk: dict[str, Any]) -> tuple[str, str, str]:
    """A chunk's id, score and the first line of its content."""
    content = str(chunk.get("content") or "").strip()
    first = content.splitlines()[0] if content else fmt.DASH
    return str(chunk.get("id") or fmt.DASH), fmt.number(chunk.get("score")), first


def chunks_view(chunks: list[dict[str, Any]]) -> tuple[Table, list[str]]:
    """One line per retrieved chunk: id, score, first line of content."""
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(no_wrap=True, justify="right")
    grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    plain = []
    for chunk in chunks:
        chunk_id, score, first = chunk_line(chunk)
        grid.add_row(chunk_id, score, first)
        plain.append(f"{chunk_id}  {score}  {first}")
    return grid, plain


def span_head(span: dict[str, Any]) -> Text:
    """Name, kind, duration and status, with the status message the span carried."""
    status = fmt.span_status(span.get("status"))
    text = Text()
    text.append(str(span.get("name") or fmt.DASH), style="bold")
    kind = str(span.get("kind") or "").removeprefix("SPAN_KIND_").lower()
    head = [kind, fmt.span_duration(span.get("start_ns"), span.get("end_ns"))]
    text.append("  " + "  ".join(part for part in head if part), style="dim")
    text.append("  ")
    text.append(status, style=palette.SPAN_STATUS.get(status, ""))
    if span.get("status_message"):
        text.append(f": {span['status_message']}")
    return text


def span_facts(span: dict[str, Any]) -> list[tuple[str, str]]:
    """The span's fields as (label, value), in reading order; unknown ones are left out."""
    model, requested = span_model(span), span.get("model")
    if model and requested and requested != model:
        model = f"{requested} → {model}"
    facts = [
        ("service", span.get("service")),
        ("model", model),
        ("operation", span.get("operation")),
        ("provider", span.get("provider")),
        ("tokens", fmt.tokens(span.get("input_tokens"), span.get("output_tokens"))),
    ]
    if fmt.is_number(span.get("ttft_s")):
        facts.append(("first token", fmt.seconds(span["ttft_s"])))
    reasons = [str(r) for r in fmt.items(span.get("finish_reasons")) if r]
    if reasons:
        facts.append(("finish", ", ".join(reasons)))
    return [(label, str(value)) for label, value in facts if value]


def scores_pairs(scores: dict[str, Any]) -> Pairs:
    """Every score with its value, e.g. `scores relevance 0.963 · groundedness 0.86`."""
    pairs = [(str(name), fmt.number(value)) for name, value in scores.items()]
    first, *rest = pairs
    return Pairs([(f"scores {first[0]}", first[1]), *rest])


def content_views(
    messages: list[dict[str, Any]], chunks: list[dict[str, Any]]
) -> tuple[list[Any], list[str]]:
    """The messages and chunks sections, each under its heading; none when empty."""
    parts: list[Any] = []
    plain: list[str] = []
    if messages:
        heading = f"Messages ({len(messages)})"
        grid, lines = messages_view(messages)
        parts += [Text(heading, style="bold"), grid]
        plain += [heading, *lines]
    if chunks:
        heading = f"Retrieved chunks ({len(chunks)})"
        grid, lines = chunks_view(chunks)
        parts += [Text(heading, style="bold"), grid]
        plain += [heading, *lines]
    return parts, plain


def detail_view(
    span: dict[str, Any],
    messages: list[dict[str, Any]] | None = None,
    chunks: list[dict[str, Any]] | None = None,
) -> tuple[Group, str]:
    """A span in full; `messages` and `chunks` stand in for the span's own when it has none."""
    head = span_head(span)
    facts = Pairs(span_facts(span))
    parts: list[Any] = [head, facts]
    plain = [head.plain, facts.plain]
    scores = fmt.mapping(span.get("scores"))
    if scores:
        line = scores_pairs(scores)
        parts.append(line)
        plain.append(line.plain)
    own_messages = [m for m in fmt.items(span.get("messages")) if isinstance(m, dict)]
    own_chunks = [c for c in fmt.items(span.get("chunks")) if isinstance(c, dict)]
    more, lines = content_views(own_messages or messages or [], own_chunks or chunks or [])
    return Group(*parts, *more), "\n".join(plain + lines)


def trace_view(trace: dict[str, Any], content: dict[str, tuple[int, int]]) -> tuple[Group, str]:
    """A trace node: which of its spans carry messages or chunks, to move to."""
    head = Text(f"trace {trace.get('trace_id') or fmt.DASH}", style="bold")
    if trace.get("error"):
        failed = Text(f"could not load: {trace['error']}", style=palette.ALARM)
        return Group(head, failed), f"{head.plain}\n{failed.plain}"
    carriers = []
    for span in fmt.items(trace.get("spans")):
        if not isinstance(span, dict):
            continue
        messages, chunks = content.get(str(span.get("span_id")), (0, 0))
        what = [f"{messages} messages"] if messages else []
        what += [f"{chunks} chunks"] if chunks else []
        if what:
            carriers.append(("", f"{span.get('name') or fmt.DASH} ({', '.join(what)})"))
    if not carriers:
        none = Text("no span of this trace carried messages or retrieved chunks", style="dim")
        return Group(head, none), f"{head.plain}\n{none.plain}"
    where = Text("messages and retrieved chunks are on these spans:", style="dim")
    spans = Pairs(carriers)
    return Group(head, where, spans), f"{head.plain}\n{where.plain}\n{spans.plain}"


def snapshot_view(snapshot: dict[str, Any]) -> tuple[Group, str]:
    """The case's context snapshot when it has no trace to hang its content on."""
    messages = [
        m
        for m in fmt.items(snapshot.get("prompts")) + fmt.items(snapshot.get("model_outputs"))
        if isinstance(m, dict)
    ]
    chunks = [c for c in fmt.items(snapshot.get("retrieved_chunks")) if isinstance(c, dict)]
    scores = fmt.mapping(snapshot.get("eval_scores"))
    head = Text("Context snapshot", style="bold")
    parts: list[Any] = [head]
    plain = [head.plain]
    if scores:
        line = scores_pairs(scores)
        parts.append(line)
        plain.append(line.plain)
    more, lines = content_views(messages, chunks)
    if not (scores or more):
        parts.append(Text("no prompts, outputs, chunks or scores in it", style="dim"))
        plain.append("no prompts, outputs, chunks or scores in it")
    return Group(*parts, *more), "\n".join(plain + lines)


class SpanDetail(ScrollPane):
    """Details of the span under the cursor in the span tree; Tab in to scroll them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(help_title="Span detail", **kwargs)

    def compose(self) -> ComposeResult:
        yield QuietStatic(Text(NO_SPAN, style="dim"), classes="detail-text")

    @property
    def plain(self) -> str:
        """What the pane shows, without styles and before wrapping."""
        return self.query_one(".detail-text", QuietStatic).plain

    def show_span(
        self,
        span: dict[str, Any] | None,
        messages: list[dict[str, Any]] | None = None,
        chunks: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Show a span, or the hint to pick one; content from the case's snapshot fills in."""
        if not span:
            return self._show(Text(NO_SPAN, style="dim"), NO_SPAN)
        view, plain = detail_view(span, messages, chunks)
        return self._show(view, plain)

    def show_trace(self, trace: dict[str, Any], content: dict[str, tuple[int, int]]) -> bool:
        view, plain = trace_view(trace, content)
        return self._show(view, plain)

    def show_snapshot(self, snapshot: dict[str, Any]) -> bool:
        view, plain = snapshot_view(snapshot)
        return self._show(view, plain)

    def _show(self, view: Any, plain: str) -> bool:
        changed = self.query_one(".detail-text", QuietStatic).show(view, key=plain, plain=plain)
        if changed:
            self.scroll_home(animate=False)
        return changed
