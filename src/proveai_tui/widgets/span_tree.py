"""A case's exemplar traces as span trees: name, service, duration, status and GenAI usage."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.events import Resize
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from proveai_tui import format as fmt
from proveai_tui import palette


def span_model(span: dict[str, Any]) -> str:
    """The model a GenAI span used: the response model when known, else the requested one."""
    return str(span.get("response_model") or span.get("model") or "")


def span_label(span: dict[str, Any]) -> Text:
    """One line for a span; GenAI fields only where the span carried them."""
    status = fmt.span_status(span.get("status"))
    text = Text(no_wrap=True)
    text.append(str(span.get("name") or fmt.DASH), style="bold")
    text.append(f"  {span.get('service') or fmt.DASH}", style="dim")
    text.append(f"  {fmt.span_duration(span.get('start_ns'), span.get('end_ns'))}")
    text.append("  ")
    text.append(status, style=palette.SPAN_STATUS.get(status, ""))
    name = str(span.get("name") or "")
    models = [m for m in (span.get("model"), span.get("response_model")) if m]
    if models and not any(str(m) in name for m in models):
        text.append(f"  {span_model(span)}", style=palette.ACCENT)
    if usage := fmt.tokens(span.get("input_tokens"), span.get("output_tokens")):
        text.append(f"  {usage}", style="dim")
    return text


def span_children(spans: list[dict[str, Any]]) -> tuple[list[dict], dict[str, list[dict]]]:
    """Roots and children by parent id; a span whose parent is not in the trace is a root."""
    ids = {span.get("span_id") for span in spans}
    roots: list[dict[str, Any]] = []
    children: dict[str, list[dict[str, Any]]] = {}
    for span in sorted(spans, key=lambda s: s.get("start_ns") or 0):
        parent = span.get("parent_span_id")
        if parent and parent in ids and parent != span.get("span_id"):
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    return roots, children


def trace_label(trace: dict[str, Any]) -> Text:
    spans = [s for s in fmt.items(trace.get("spans")) if isinstance(s, dict)]
    text = Text(no_wrap=True)
    text.append(f"trace {trace.get('trace_id') or fmt.DASH}", style="bold")
    if trace.get("error"):
        text.append(f"  could not load: {trace['error']}", style=palette.ALARM)
        return text
    starts = [s["start_ns"] for s in spans if fmt.is_number(s.get("start_ns"))]
    ends = [s["end_ns"] for s in spans if fmt.is_number(s.get("end_ns"))]
    duration = fmt.span_duration(min(starts), max(ends)) if starts and ends else fmt.DASH
    errors = sum(1 for s in spans if fmt.span_status(s.get("status")) == "ERROR")
    text.append(f"  {len(spans)} spans  {duration}", style="dim")
    if errors:
        text.append(f"  {errors} ERROR", style=palette.ALARM)
    return text


class SpanTree(Tree[dict], inherit_bindings=False):
    """Traces under a hidden root; each node's data is its span (None for a trace node)."""

    help_title = "Span tree"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "cursor_down", "Next span", show=False, id="spans.down"),
        Binding("up,k", "cursor_up", "Previous span", show=False, id="spans.up"),
        Binding(
            "enter,space", "toggle_node", "Fold", tooltip="Fold or unfold", id="spans.fold"
        ),
        Binding("left,h", "cursor_parent", "Parent span", show=False, id="spans.parent"),
        Binding("pagedown", "page_down", "Page down", show=False, id="spans.page_down"),
        Binding("pageup", "page_up", "Page up", show=False, id="spans.page_up"),
        Binding("home,g", "scroll_home", "First span", show=False, id="spans.first"),
        Binding("end,G", "scroll_end", "Last span", show=False, id="spans.last"),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__("traces", **kwargs)
        self.show_root = False
        self.guide_depth = 3
        self._drawn: tuple | None = None

    def show_traces(self, traces: list[dict[str, Any]]) -> None:
        """Show these traces; nothing is redrawn when the same spans are shown again."""
        spans = [[s for s in fmt.items(t.get("spans")) if isinstance(s, dict)] for t in traces]
        drawn = tuple(
            (
                trace.get("trace_id"),
                trace.get("error"),
                tuple(span_label(s).plain for s in mine),
            )
            for trace, mine in zip(traces, spans, strict=True)
        )
        if drawn == self._drawn:
            return
        self._drawn = drawn

        self.clear()
        for trace, mine in zip(traces, spans, strict=True):
            node = self.root.add(trace_label(trace), data=None, expand=True)
            roots, children = span_children(mine)
            for span in roots:
                self._add_span(node, span, children, seen=set())
        self.call_after_refresh(self._move_to_error_origin)

    def _move_to_error_origin(self) -> None:
        """Put the cursor on the first failed span with no failed child, else on the root."""
        if self.last_line < 0:
            return
        line = 1 if self.last_line >= 1 else 0
        for index in range(self.last_line + 1):
            node = self.get_node_at_line(index)
            span = node.data if node else None
            if not span or fmt.span_status(span.get("status")) != "ERROR":
                continue
            failed_child = node is not None and any(
                child.data and fmt.span_status(child.data.get("status")) == "ERROR"
                for child in node.children
            )
            if not failed_child:
                line = index
                break
        self.move_cursor_to_line(line)

    def on_resize(self, event: Resize) -> None:
        if self.cursor_node is not None:
            self.scroll_to_node(self.cursor_node, animate=False)

    def _add_span(
        self,
        parent: TreeNode[dict],
        span: dict[str, Any],
        children: dict[str, list[dict[str, Any]]],
        seen: set[str],
    ) -> None:
        span_id = str(span.get("span_id"))
        kids = [] if span_id in seen else children.get(span_id, [])
        seen.add(span_id)
        if not kids:
            parent.add_leaf(span_label(span), data=span)
            return
        node = parent.add(span_label(span), data=span, expand=True)
        for child in kids:
            self._add_span(node, child, children, seen)
