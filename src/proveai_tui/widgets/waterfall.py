"""Exemplar traces as waterfalls: each span a bar on the trace's time axis, loops folded.

Siblings that share a name at least `LOOP_MIN` times are drawn as one row, `name × n loop`,
with a bar cell wherever any repeat ran: an agent that calls the same tool fifty times is one
striped row, not fifty lines to scroll past.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.containers import Lines
from rich.text import Text

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.widgets.quiet_static import QuietStatic

LOOP_MIN = 5
"""Siblings with one name this many times are a loop; the agent's own detector's default."""
MAX_ROWS = 300
"""Rows drawn per trace; the rest are counted, so that a huge trace stays quick to draw."""
DURATION_WIDTH = 7
SPAN_CELL = "█"
LOOP_CELL = "▒"
INDENT = 2
NO_TRACE = "no exemplar trace in the case's snapshot"


@dataclass
class Row:
    """One line of the waterfall: a span, or a loop of same-named siblings."""

    depth: int
    spans: list[dict[str, Any]]
    children: list[Row] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spans[0].get("name") or fmt.DASH)

    @property
    def repeats(self) -> int:
        return len(self.spans)

    @property
    def is_loop(self) -> bool:
        return self.repeats >= LOOP_MIN

    @property
    def failed(self) -> int:
        return sum(1 for s in self.spans if fmt.span_status(s.get("status")) == "ERROR")

    def times(self) -> Iterator[tuple[float, float]]:
        for span in self.spans:
            start, end = span.get("start_ns"), span.get("end_ns")
            if not (isinstance(start, int | float) and isinstance(end, int | float)):
                continue
            if fmt.is_number(start) and fmt.is_number(end) and end >= start:
                yield start, end

    def duration(self) -> str:
        """A span's duration; for a loop, from its first start to its last end."""
        times = list(self.times())
        if not times:
            return fmt.DASH
        return fmt.span_duration(min(s for s, _ in times), max(e for _, e in times))


def trace_spans(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in fmt.items(trace.get("spans")) if isinstance(s, dict)]


def group_siblings(spans: list[dict[str, Any]], depth: int) -> list[Row]:
    """Siblings in start order, those named alike `LOOP_MIN` times or more as one row."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(str(span.get("name") or ""), []).append(span)
    rows: list[Row] = []
    placed: set[str] = set()
    for span in spans:
        name = str(span.get("name") or "")
        same = by_name[name]
        if len(same) >= LOOP_MIN:
            if name not in placed:
                placed.add(name)
                rows.append(Row(depth, same))
        else:
            rows.append(Row(depth, [span]))
    return rows


def build_rows(spans: list[dict[str, Any]]) -> list[Row]:
    """The trace's rows in drawing order, depth first; never recursive, so any depth works.

    A span whose parent is not in the trace is a root; spans left over by a parent cycle are
    drawn as roots after the others, so that every span is drawn once.
    """
    ids = {str(s.get("span_id")) for s in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    roots: list[dict[str, Any]] = []
    ordered = sorted(
        spans, key=lambda s: s["start_ns"] if fmt.is_number(s.get("start_ns")) else 0
    )
    for span in ordered:
        parent = span.get("parent_span_id")
        if parent and str(parent) in ids and parent != span.get("span_id"):
            children.setdefault(str(parent), []).append(span)
        else:
            roots.append(span)

    drawn: list[Row] = []
    seen: set[str] = set()
    pending = list(reversed(group_siblings(roots, 0)))
    while True:
        while pending:
            row = pending.pop()
            fresh = [s for s in row.spans if str(s.get("span_id")) not in seen]
            if not fresh:
                continue
            row.spans = fresh
            seen.update(str(s.get("span_id")) for s in fresh)
            drawn.append(row)
            kids = [k for s in fresh for k in children.get(str(s.get("span_id")), [])]
            kids.sort(key=lambda s: s["start_ns"] if fmt.is_number(s.get("start_ns")) else 0)
            pending.extend(reversed(group_siblings(kids, row.depth + 1)))
        left = [s for s in ordered if str(s.get("span_id")) not in seen]
        if not left:
            return drawn
        pending = list(reversed(group_siblings(left[:1], 0)))


def bar_cells(start: float, end: float, t0: float, total: float, width: int) -> range:
    """The cells a span covers on an axis of `width` cells from t0 over `total`.

    From floor((start - t0) / total × width) up to ceil((end - t0) / total × width), at
    least one cell, inside the axis.
    """
    if width <= 0:
        return range(0)
    first = math.floor((start - t0) / total * width)
    last = math.ceil((end - t0) / total * width)
    first = min(max(first, 0), width - 1)
    last = min(max(last, first + 1), width)
    return range(first, last)


def label_width(width: int) -> int:
    return max(12, min(48, width * 2 // 5))


def bar_text(row: Row, t0: float, total: float, width: int) -> Text:
    """The row's bar: `█` per cell a span ran in, `▒` for the repeats of a loop."""
    cells = [False] * width
    for start, end in row.times():
        for cell in bar_cells(start, end, t0, total, width):
            cells[cell] = True
    style = palette.ALARM if row.failed else (palette.WARN if row.is_loop else palette.ACCENT)
    glyph = LOOP_CELL if row.is_loop else SPAN_CELL
    text = Text(no_wrap=True)
    for filled in cells:
        text.append(glyph if filled else " ", style=style if filled else "")
    return text


def row_label(row: Row, width: int) -> Text:
    """Indented name, cut to fit, then `× n loop` and the failures, which are never cut."""
    suffix = ""
    if row.is_loop:
        suffix = f" × {row.repeats} loop"
        if row.failed:
            suffix += f", {row.failed} ERROR"
    elif row.failed:
        suffix = " ERROR"
    indent = " " * min(row.depth * INDENT, max(0, width // 2))
    room = max(1, width - len(indent) - len(suffix))
    text = Text(no_wrap=True)
    text.append(indent + fmt.ellipsize(row.name, room), style="bold" if row.is_loop else "")
    if suffix:
        text.append(suffix, style=palette.ALARM if row.failed else palette.WARN)
    text.pad_right(max(0, width - text.cell_len))
    text.truncate(width)
    return text


def trace_head(trace: dict[str, Any], spans: list[dict[str, Any]]) -> Text:
    text = Text(no_wrap=False)
    text.append(f"trace {trace.get('trace_id') or fmt.DASH}", style="bold")
    starts = [s["start_ns"] for s in spans if fmt.is_number(s.get("start_ns"))]
    ends = [s["end_ns"] for s in spans if fmt.is_number(s.get("end_ns"))]
    duration = fmt.span_duration(min(starts), max(ends)) if starts and ends else fmt.DASH
    text.append(f"  {len(spans)} spans  {duration}", style="dim")
    errors = sum(1 for s in spans if fmt.span_status(s.get("status")) == "ERROR")
    if errors:
        text.append(f"  {errors} ERROR", style=palette.ALARM)
    return text


def loop_lines(rows: list[Row]) -> list[Text]:
    """One line per loop, in words: what repeated, how often, under which span."""
    lines = []
    parents: dict[int, Row] = {}
    for row in rows:
        parents[row.depth] = row
        if not row.is_loop:
            continue
        under = parents.get(row.depth - 1)
        text = Text(f"loop: {row.name} × {row.repeats}", style=palette.WARN)
        if under is not None and row.depth > 0:
            text.append(f" under {under.name}")
        if row.failed:
            text.append(f", {row.failed} of them ERROR", style=palette.ALARM)
        lines.append(text)
    return lines


def axis_line(label: int, bars: int, total_ns: float) -> Text:
    """`0` under the first bar cell and the trace's length under the last."""
    end = fmt.seconds(total_ns / 1e9)
    text = Text(" " * (label + 1), no_wrap=True)
    gap = max(1, bars - 1 - len(end))
    text.append("0" + " " * gap + end, style="dim")
    return text


def waterfall_lines(trace: dict[str, Any], width: int) -> list[Text]:
    """The trace drawn at `width` cells: head, loops in words, axis, then one line a row.

    Each row is `label(L) bar(W) duration(7)`, with L = 2/5 of the width (12 to 48 cells)
    and W the rest less two gaps.
    """
    spans = trace_spans(trace)
    lines = [trace_head(trace, spans)]
    if trace.get("error"):
        lines.append(Text(f"could not load: {trace['error']}", style=palette.ALARM))
        return lines
    if not spans:
        lines.append(Text("no spans", style="dim"))
        return lines
    rows = build_rows(spans)
    lines += loop_lines(rows)

    times = [t for row in rows for t in row.times()]
    t0 = min((s for s, _ in times), default=0)
    total = max(max((e for _, e in times), default=0) - t0, 1)
    label = label_width(width)
    bars = max(1, width - label - DURATION_WIDTH - 2)
    lines.append(axis_line(label, bars, total if times else 0))
    for row in rows[:MAX_ROWS]:
        line = row_label(row, label)
        line.append(" ")
        line.append_text(bar_text(row, t0, total, bars))
        line.append(" " + row.duration().rjust(DURATION_WIDTH), style="dim")
        lines.append(line)
    if len(rows) > MAX_ROWS:
        hidden = rows[MAX_ROWS:]
        count = sum(r.repeats for r in hidden)
        lines.append(Text(f"… {len(hidden)} more rows ({count} spans) not drawn", style="dim"))
    return lines


class WaterfallView:
    """The traces drawn to the width the widget gives them."""

    def __init__(self, traces: list[dict[str, Any]]) -> None:
        self.traces = traces

    def lines(self, width: int) -> list[Text]:
        lines: list[Text] = []
        for trace in self.traces:
            if lines:
                lines.append(Text(""))
            lines += waterfall_lines(trace, width)
        return lines or [Text(NO_TRACE, style="dim")]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        wrapped: list[Text] = []
        for line in self.lines(width):
            wrapped += line.wrap(console, width, overflow="fold") if line.plain else [line]
        yield Lines(wrapped)


def traces_key(traces: list[dict[str, Any]]) -> tuple:
    """What the waterfall depends on; equal keys draw the same."""
    return tuple(
        (
            trace.get("trace_id"),
            trace.get("error"),
            tuple(
                tuple(
                    s.get(key)
                    for key in (
                        "span_id",
                        "parent_span_id",
                        "name",
                        "start_ns",
                        "end_ns",
                        "status",
                    )
                )
                for s in trace_spans(trace)
            ),
        )
        for trace in traces
    )


class Waterfall(QuietStatic):
    """Every exemplar trace of the case as a waterfall, one under the other."""

    PLAIN_WIDTH = 100
    """The width `plain` is drawn at; the screen draws at the widget's own width."""

    def show_traces(self, traces: list[dict[str, Any]]) -> bool:
        view = WaterfallView(traces)
        plain = "\n".join(line.plain for line in view.lines(self.PLAIN_WIDTH))
        return self.show(view, key=traces_key(traces), plain=plain)
