"""The live overview: metrics sources, a panel per service, and the open cases below."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from proveai_tui.widgets.case_table import CaseTable
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.scroll_pane import ScrollPane
from proveai_tui.widgets.service_panel import PANEL_HEIGHT, ServicePanel
from proveai_tui.widgets.source_health import SourceHealth
from proveai_tui.widgets.status_bar import StatusBar


def cases_heading(
    cases: list[dict[str, Any]] | None, highlighted: dict[str, Any] | None = None
) -> Text:
    """The line above the case list; names the highlighted case when titles have no column."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if cases is None:
        text.append("Open cases: waiting for the agent")
    elif not cases:
        text.append("Open cases: none")
    else:
        text.append(f"Open cases ({len(cases)})")
        if highlighted is None:
            text.append("  ⏎ opens the highlighted one", style="dim")
        else:
            text.append(f" · {highlighted.get('id') or ''} ", style="dim")
            text.append(str(highlighted.get("title") or "(untitled)"), style="not bold")
    return text


class OverviewScreen(Screen, inherit_bindings=False):
    """Shows the last data the agent sent and keeps it when the agent stops answering."""

    class CaseChosen(Message):
        """The user asked to open a case."""

        def __init__(self, case_id: str) -> None:
            super().__init__()
            self.case_id = case_id

    class RefreshAsked(Message):
        """The user asked for fresh data now."""

    help_title = "Overview screen"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "refresh", "Refresh", tooltip="Ask the agent now", id="overview.refresh"),
        Binding(
            "tab",
            "app.focus_next",
            "Switch pane",
            tooltip="Next pane: service panels, open cases",
            id="overview.next_pane",
        ),
        Binding(
            "shift+tab",
            "app.focus_previous",
            "Switch back",
            tooltip="Previous pane",
            show=False,
            id="overview.prev_pane",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._cases: list[dict[str, Any]] | None = None
        self._highlighted: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        yield StatusBar("Prove AI · overview", id="status")
        yield SourceHealth("waiting for the agent …", id="sources")
        yield ScrollPane(id="services", help_title="Service panels", step=PANEL_HEIGHT)
        empty = QuietStatic("", id="no-services")
        empty.display = False
        yield empty
        yield QuietStatic(cases_heading(None), id="cases-heading")
        yield CaseTable(id="cases")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(CaseTable).focus()

    def show(self, overview: dict[str, Any] | None, cases: list[dict[str, Any]] | None) -> None:
        """Show what arrived; None leaves that part as it was."""
        if overview is not None:
            self.query_one(SourceHealth).show_overview(overview)
            self._show_services(overview, cases)
        if cases is not None:
            self._cases = cases
            self.query_one(CaseTable).show_cases(cases)
            self._show_heading()

    def on_case_table_highlighted(self, message: CaseTable.Highlighted) -> None:
        self._highlighted = None if message.title_shown else message.case
        self._show_heading()

    def _show_heading(self) -> None:
        heading = cases_heading(self._cases, self._highlighted if self._cases else None)
        self.query_one("#cases-heading", QuietStatic).show(heading)

    def _show_services(
        self, overview: dict[str, Any], cases: list[dict[str, Any]] | None
    ) -> None:
        services = [s for s in overview.get("services") or [] if isinstance(s, dict)]
        names = [str(s.get("service") or "?") for s in services]
        grid = self.query_one("#services", ScrollPane)
        panels = list(grid.query(ServicePanel))

        if [panel.service for panel in panels] != names:
            grid.remove_children()
            panels = [ServicePanel(name) for name in names]
            grid.mount_all(panels)
        grid.set_class(len(names) > 1, "-several")

        for panel, numbers in zip(panels, services, strict=True):
            mine = [c for c in cases or [] if c.get("service") == panel.service]
            if panel.is_mounted:
                panel.show(numbers, mine)
            else:
                panel.call_after_refresh(panel.show, numbers, mine)

        empty = self.query_one("#no-services", QuietStatic)
        empty.display = not services
        if not services:
            empty.show(
                "no services reporting yet"
                if overview.get("spanmetrics")
                else "no services: the panels fill once span metrics arrive"
            )

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.CaseChosen(str(event.row_key.value)))

    def action_refresh(self) -> None:
        self.post_message(self.RefreshAsked())
