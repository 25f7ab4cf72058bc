"""One case: its head, its signals, and its exemplar traces as span trees."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Tree

from proveai_tui import palette
from proveai_tui.client import AgentClient, AgentError
from proveai_tui.widgets.case_header import CaseHeader
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.signal_list import SignalList
from proveai_tui.widgets.span_detail import SpanDetail
from proveai_tui.widgets.span_tree import SpanTree
from proveai_tui.widgets.status_bar import StatusBar

logger = logging.getLogger(__name__)

MAX_TRACES = 5
NO_TRACES = "no exemplar trace in the case's snapshot"


def snapshot_traces(case: dict[str, Any]) -> list[dict[str, Any] | str]:
    """The exemplar traces in the case's context snapshot: whole traces or bare trace ids."""
    snapshot = case.get("context_snapshot")
    traces = snapshot.get("traces") if isinstance(snapshot, dict) else None
    return [t for t in traces or [] if isinstance(t, dict | str)][:MAX_TRACES]


class CaseScreen(Screen):
    """Loads `/api/cases/{id}` when shown, on `r`, and when the case list says it changed."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="case.back"),
        Binding("r", "refresh", "Refresh", id="case.refresh"),
        Binding("tab", "app.focus_next", "Switch pane", id="case.next_pane"),
        Binding(
            "shift+tab", "app.focus_previous", "Switch back", show=False, id="case.prev_pane"
        ),
    ]

    def __init__(self, case_id: str, client: AgentClient) -> None:
        super().__init__()
        self.case_id = case_id
        self.client = client
        self.case: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        yield StatusBar(f"Prove AI · {self.case_id}", id="status")
        with VerticalScroll(id="case-body"):
            yield CaseHeader(f"loading {self.case_id} …", id="case-header")
            yield SignalList("", id="signals")
        heading = QuietStatic("", id="traces-heading")
        heading.display = False
        yield heading
        yield SpanTree(id="spans")
        yield SpanDetail("", id="span-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(SpanTree).focus()
        self.load()

    def action_back(self) -> None:
        self.dismiss()

    def action_refresh(self) -> None:
        self.load()

    def cases_changed(self, cases: list[dict[str, Any]]) -> None:
        """Reload when the case list shows this case updated since it was loaded."""
        if self.case is None:
            self.load()
            return
        for summary in cases:
            if summary.get("id") == self.case_id:
                if summary.get("updated_at") != self.case.get("updated_at"):
                    self.load()
                return

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
        self.query_one(CaseHeader).show_case(case)
        signals = [s for s in case.get("signals") or [] if isinstance(s, dict)]
        self.query_one(SignalList).show_signals(signals)
        heading = self.query_one("#traces-heading", QuietStatic)
        heading.show("" if traces else NO_TRACES)
        heading.display = not traces
        self.query_one(SpanTree).show_traces(traces)

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
        self.query_one(SpanDetail).show_span(event.node.data)
