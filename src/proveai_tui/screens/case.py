"""One case: its head over views of its evidence, timeline, analysis, context and traces."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Tree
from textual.widgets.tree import TreeNode

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.client import AgentClient, AgentError
from proveai_tui.screens.case_actions import CaseActions
from proveai_tui.widgets.case_changes import CaseChanges
from proveai_tui.widgets.case_header import CaseHeader
from proveai_tui.widgets.context_view import ContextView
from proveai_tui.widgets.footer import KeysFooter
from proveai_tui.widgets.hypotheses import HypothesisList
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.scroll_pane import ScrollPane
from proveai_tui.widgets.signal_list import SignalList
from proveai_tui.widgets.span_detail import SpanDetail
from proveai_tui.widgets.span_tree import SpanTree
from proveai_tui.widgets.status_bar import StatusBar
from proveai_tui.widgets.suggestions import SuggestionList
from proveai_tui.widgets.timeline import Timeline
from proveai_tui.widgets.waterfall import Waterfall

logger = logging.getLogger(__name__)

MAX_TRACES = 5
FOCUS_CLASSES = {"signals": "-signals-focused", "span-detail": "-detail-focused"}
"""The screen's class while that pane has focus; on a short screen the pane grows."""
NO_TRACES = "no exemplar trace in the case's snapshot"
VIEWS = (
    ("evidence", "Evidence", "signals and recent changes, span tree, span detail"),
    ("timeline", "Timeline", "everything that happened to the case, oldest first"),
    ("hypotheses", "Hypotheses", "the engine's hypotheses ranked by confidence"),
    ("suggestions", "Suggestions", "the engine's suggestions and their verification"),
    ("context", "Context", "prompts, model outputs, retrieved chunks and scores"),
    ("waterfall", "Waterfall", "the exemplar traces on a time axis, loops folded"),
)
"""(name, title, what it shows) of each view, in the order of their keys 1 to 6."""


def view_tabs(current: str) -> Text:
    """`1 Evidence  2 Timeline …`, the current view marked with brackets, not colour alone."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for number, (name, title, _) in enumerate(VIEWS, 1):
        if number > 1:
            text.append("  ")
        if name == current:
            text.append(f"[{number} {title}]", style="bold reverse")
        else:
            text.append(f"{number} {title}", style="dim")
    return text


def view_bindings() -> list[BindingType]:
    """A digit per view, and ] and [ to step through them."""
    bindings: list[BindingType] = [
        Binding(
            str(number),
            f"show_view('{name}')",
            title,
            tooltip=f"View {number}: {what}",
            show=False,
            id=f"case.view_{name}",
        )
        for number, (name, title, what) in enumerate(VIEWS, 1)
    ]
    bindings += [
        Binding(
            "right_square_bracket",
            "step_view(1)",
            "Next view",
            tooltip="Next view, in the order of the keys 1 to 6",
            key_display="]",
            show=False,  # the strip of views under the header says which key shows which
            id="case.next_view",
        ),
        Binding(
            "left_square_bracket",
            "step_view(-1)",
            "Previous view",
            tooltip="Previous view",
            key_display="[",
            show=False,
            id="case.prev_view",
        ),
    ]
    return bindings


def snapshot_traces(case: dict[str, Any]) -> list[dict[str, Any] | str]:
    """The exemplar traces in the case's context snapshot: whole traces or bare trace ids."""
    snapshot = case.get("context_snapshot")
    traces = snapshot.get("traces") if isinstance(snapshot, dict) else None
    return [t for t in traces or [] if isinstance(t, dict | str)][:MAX_TRACES]


Content = dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]
"""Messages and retrieved chunks by the id of the span that carried them."""


def snapshot_content(case: dict[str, Any]) -> Content:
    """The snapshot's prompts, model outputs and retrieved chunks, by their span's id."""
    snapshot = fmt.mapping(case.get("context_snapshot"))
    content: Content = {}
    for key in ("prompts", "model_outputs"):
        for message in fmt.items(snapshot.get(key)):
            if isinstance(message, dict) and message.get("span_id"):
                content.setdefault(str(message["span_id"]), ([], []))[0].append(message)
    for chunk in fmt.items(snapshot.get("retrieved_chunks")):
        if isinstance(chunk, dict) and chunk.get("span_id"):
            content.setdefault(str(chunk["span_id"]), ([], []))[1].append(chunk)
    return content


def content_counts(traces: list[dict[str, Any]], extra: Content) -> dict[str, tuple[int, int]]:
    """How many messages and chunks each span shows, its own or else the snapshot's."""
    counts = {}
    for trace in traces:
        for span in fmt.items(trace.get("spans")):
            if not isinstance(span, dict):
                continue
            span_id = str(span.get("span_id"))
            messages, chunks = extra.get(span_id, ([], []))
            counts[span_id] = (
                len(fmt.items(span.get("messages"))) or len(messages),
                len(fmt.items(span.get("chunks"))) or len(chunks),
            )
    return counts


class CaseScreen(CaseActions, Screen, inherit_bindings=False):
    """Loads `/api/cases/{id}` when shown, on `r`, and when the case list says it changed."""

    help_title = "Case screen"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "escape",
            "back",
            "Back",
            tooltip="Back to the screen the case was opened from",
            id="case.back",
        ),
        Binding("r", "refresh", "Refresh", tooltip="Load the case again", id="case.refresh"),
        Binding(
            "tab",
            "app.focus_next",
            "Switch pane",
            tooltip="Next pane: signals, span tree, span detail",
            id="case.next_pane",
        ),
        Binding(
            "shift+tab",
            "app.focus_previous",
            "Switch back",
            tooltip="Previous pane",
            show=False,
            id="case.prev_pane",
        ),
        *view_bindings(),
    ]

    def __init__(self, case_id: str, client: AgentClient) -> None:
        super().__init__()
        self.case_id = case_id
        self.client = client
        self.case: dict[str, Any] | None = None
        self._listed = False
        """Whether the last open-case list had this case: when it drops out, it has ended."""
        self.traces: list[dict[str, Any]] = []
        self._content: Content = {}
        self.view = VIEWS[0][0]
        self._view_focus: dict[str, Widget] = {}

    def compose(self) -> ComposeResult:
        yield StatusBar(f"Prove AI · {self.case_id}", id="status")
        yield CaseHeader(f"loading {self.case_id} …", id="case-header")
        yield QuietStatic(view_tabs(VIEWS[0][0]), id="case-views")
        with ContentSwitcher(id="case-body", initial="view-evidence"):
            with Container(id="view-evidence"):
                with ScrollPane(id="signals", help_title="Signals"):
                    yield SignalList("", id="signal-list")
                    yield CaseChanges("", id="case-changes")
                heading = QuietStatic("", id="traces-heading")
                heading.display = False
                yield heading
                with Container(id="case-traces"):
                    yield SpanTree(id="spans")
                    yield SpanDetail(id="span-detail")
            with ScrollPane(id="view-timeline", classes="case-view", help_title="Timeline"):
                yield Timeline("", id="timeline")
            with ScrollPane(id="view-hypotheses", classes="case-view", help_title="Hypotheses"):
                yield HypothesisList("", id="hypotheses")
            with ScrollPane(
                id="view-suggestions", classes="case-view", help_title="Suggestions"
            ):
                yield SuggestionList("", id="suggestions")
            with ScrollPane(id="view-context", classes="case-view", help_title="Context"):
                yield ContextView("", id="context")
            with ScrollPane(id="view-waterfall", classes="case-view", help_title="Waterfall"):
                yield Waterfall("", id="waterfall")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one(SpanTree).focus()
        self.watch(self, "focused", self._focus_moved)
        self.load()

    def _focus_moved(self, focused: Widget | None) -> None:
        """Mark which pane has focus, so that the stylesheet can give it the room."""
        for pane, css_class in FOCUS_CLASSES.items():
            self.set_class(focused is not None and focused.id == pane, css_class)

    def action_back(self) -> None:
        self.dismiss()

    def action_show_view(self, name: str) -> None:
        """Switch to a view, giving focus back to the pane that had it there."""
        if name == self.view or name not in {n for n, _, _ in VIEWS}:
            return
        if self.focused is not None:
            self._view_focus[self.view] = self.focused
        self.view = name
        self.query_one("#case-body", ContentSwitcher).current = f"view-{name}"
        self.query_one("#case-views", QuietStatic).show(view_tabs(name))
        target = self._view_focus.get(name)
        if target is None or not target.is_attached:
            target = self.query_one(SpanTree) if name == "evidence" else None
        if target is None:
            target = self.query_one(f"#view-{name}", ScrollPane)
        target.focus()

    def action_step_view(self, step: int) -> None:
        names = [name for name, _, _ in VIEWS]
        self.action_show_view(names[(names.index(self.view) + step) % len(names)])

    def action_refresh(self) -> None:
        self.load()

    def cases_changed(self, cases: list[dict[str, Any]]) -> None:
        """Reload when the case list shows this case updated since it was loaded."""
        if self.case is None:
            self.load()
            return
        listed, self._listed = self._listed, False
        for summary in cases:
            if summary.get("id") == self.case_id:
                self._listed = True
                if summary.get("updated_at") != self.case.get("updated_at"):
                    self.load()
                return
        if listed:  # it left the open cases: resolved or closed since it was loaded
            self.load()

    @work(exclusive=True, group="case", exit_on_error=False)
    async def load(self) -> None:
        """Read the case and its traces, and show them; a failure is shown, never raised."""
        try:
            case = await self.client.case(self.case_id)
            traces = await self._fetch_traces(case)
            self._show(case, traces)
        except AgentError as error:
            self._show_failure(error.message)
        except Exception as error:
            logger.exception("showing %s failed", self.case_id)
            self._show_failure(f"the case could not be shown ({error!r})")

    def _show(self, case: dict[str, Any], traces: list[dict[str, Any]]) -> None:
        self.case = case
        self.refresh_actions()
        self.traces = traces
        self._content = snapshot_content(case)
        self.query_one(CaseHeader).show_case(case)
        signals = [s for s in case.get("signals") or [] if isinstance(s, dict)]
        self.query_one(SignalList).show_signals(signals)
        self.query_one(CaseChanges).show_changes(fmt.items(case.get("recent_changes")))
        self.query_one(Timeline).show_case(case)
        self.query_one(HypothesisList).show_case(case)
        self.query_one(SuggestionList).show_case(case)
        self.query_one(ContextView).show_case(case)
        self.query_one(Waterfall).show_traces(traces)
        heading = self.query_one("#traces-heading", QuietStatic)
        heading.show("" if traces else NO_TRACES)
        heading.display = not traces
        tree = self.query_one(SpanTree)
        tree.show_traces(traces)
        if not traces:
            self.query_one(SpanDetail).show_snapshot(fmt.mapping(case.get("context_snapshot")))
        elif tree.cursor_node is not None:
            self._show_node(tree.cursor_node)

    async def _fetch_traces(self, case: dict[str, Any]) -> list[dict[str, Any]]:
        """Whole traces from the snapshot; bare ids are fetched from `/api/traces/{id}`."""
        traces = []
        for item in snapshot_traces(case):
            if isinstance(item, dict) and isinstance(item.get("spans"), list):
                traces.append(item)
                continue
            trace_id = item if isinstance(item, str) else str(item.get("trace_id") or "")
            if not trace_id:
                continue
            try:
                traces.append(await self.client.trace(trace_id))
            except AgentError as error:
                traces.append({"trace_id": trace_id, "error": error.message, "spans": []})
        return traces

    def _show_failure(self, message: str) -> None:
        if self.case is None:
            text = Text(f"could not load {self.case_id}: {message}", style=palette.ALARM)
            self.query_one(CaseHeader).show(text)
        else:
            self.notify(f"could not reload {self.case_id}: {message}", severity="error")

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        self._show_node(event.node)

    def _show_node(self, node: TreeNode[dict]) -> None:
        """Show the span under the cursor, or for a trace node where its content is."""
        detail = self.query_one(SpanDetail)
        span = node.data
        if span is not None:
            messages, chunks = self._content.get(str(span.get("span_id")), ([], []))
            detail.show_span(span, messages, chunks)
            return
        trace_nodes = list(self.query_one(SpanTree).root.children)
        if node in trace_nodes and trace_nodes.index(node) < len(self.traces):
            trace = self.traces[trace_nodes.index(node)]
            detail.show_trace(trace, content_counts([trace], self._content))
            return
        detail.show_span(None)
