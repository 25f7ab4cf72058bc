"""The live overview: metrics sources, a panel per service over a time range, open cases.

The live source delivers the agent's 15-minute overview. When another range is chosen the
screen asks the agent for that range itself, every RANGE_REFRESH_S seconds and at `r`, and
leaves the panels of pushed 15-minute overviews aside until 15 minutes is chosen again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.events import Resize
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable

from proveai_tui.client import AgentError
from proveai_tui.widgets.case_table import CaseTable
from proveai_tui.widgets.footer import KeysFooter
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.scroll_pane import ScrollPane
from proveai_tui.widgets.service_panel import PANEL_HEIGHT, TALL_PANEL_HEIGHT, ServicePanel
from proveai_tui.widgets.source_health import SourceHealth
from proveai_tui.widgets.status_bar import StatusBar

logger = logging.getLogger(__name__)

RANGES = (
    ("15m", "the last 15 minutes"),
    ("1h", "the last hour"),
    ("6h", "the last 6 hours"),
    ("24h", "the last 24 hours"),
    ("7d", "the last 7 days"),
    ("30d", "the last 30 days"),
    ("90d", "the last 90 days"),
    ("365d", "the last 365 days"),
)
"""The agent's overview ranges and how the screen says them; the first is the live one."""
LIVE_RANGE = RANGES[0][0]
RANGE_REFRESH_S = 15.0
"""Seconds between two reads of a chosen range; a point of its trend is 30 s or longer."""
SOURCE_NAMES = {"prometheus": "Prometheus", "victoriametrics": "VictoriaMetrics"}


def services_heading(
    count: int | None, words: str, read_from: Any = None, pending: str = "", failed: str = ""
) -> Text:
    """The line above the panels: how many services, the trends' range and its source.

    Args:
        count: services shown, None before any overview arrived.
        words: the range the panels show, e.g. "the last 7 days".
        read_from: the source that answered, as the agent names it.
        pending: the range asked for and not shown yet.
        failed: why the range asked for could not be shown.
    """
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("Services" if count is None else f"Services ({count})")
    text.append(f" · trends over {words}", style="not bold")
    if read_from:
        name = SOURCE_NAMES.get(str(read_from), str(read_from))
        text.append(f" · from {name}", style="dim not bold")
    if failed:
        text.append(f" · {pending or 'range'} not shown: ", style="not bold")
        text.append(failed, style="not bold")
    elif pending:
        text.append(f" · asking for {pending} …", style="dim not bold")
    return text


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
        Binding(
            "right_square_bracket,t",
            "range_next",
            "Range",
            tooltip="Trends over a longer time range (t cycles)",
            key_display="]",
            id="overview.range_next",
        ),
        Binding(
            "left_square_bracket",
            "range_prev",
            "Shorter range",
            tooltip="Trends over a shorter time range",
            key_display="[",
            show=False,
            id="overview.range_prev",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._cases: list[dict[str, Any]] | None = None
        self._highlighted: dict[str, Any] | None = None
        self._range_index = 0
        self._live: dict[str, Any] | None = None
        self._held: tuple[dict[str, Any] | None, list[dict[str, Any]] | None] = (None, None)
        self._shown: dict[str, Any] | None = None
        self._shown_range = LIVE_RANGE
        self._failed = ""
        self._wake = asyncio.Event()

    @property
    def range(self) -> str:
        """The range chosen, as the agent names it (15m, 1h, …)."""
        return RANGES[self._range_index][0]

    @property
    def range_words(self) -> str:
        """The range chosen, in words."""
        return RANGES[self._range_index][1]

    def compose(self) -> ComposeResult:
        yield StatusBar("Prove AI · overview", id="status")
        yield SourceHealth("waiting for the agent …", id="sources")
        yield QuietStatic(services_heading(None, RANGES[0][1]), id="services-heading")
        yield ScrollPane(id="services", help_title="Service panels", step=PANEL_HEIGHT)
        empty = QuietStatic("", id="no-services")
        empty.display = False
        yield empty
        yield QuietStatic(cases_heading(None), id="cases-heading")
        yield CaseTable(id="cases")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one(CaseTable).focus()

    def on_screen_resume(self) -> None:
        """Show what arrived while another screen was in front."""
        overview, cases = self._held
        if overview is not None or cases is not None:
            self._held = (None, None)
            self.show(overview, cases)

    def show(self, overview: dict[str, Any] | None, cases: list[dict[str, Any]] | None) -> None:
        """Show what arrived; None leaves that part as it was.

        While another screen is in front, the latest of each is kept and shown when this
        screen comes back: nobody sees the work of redrawing a screen that is not shown.
        """
        if self.is_attached and not self.is_current:
            held_overview, held_cases = self._held
            self._held = (overview or held_overview, cases if cases is not None else held_cases)
            return
        if cases is not None:
            self._cases = cases
            self.query_one(CaseTable).show_cases(cases)
            self._show_heading()
        if overview is not None:
            self._live = overview
            self.query_one(SourceHealth).show_overview(overview)
            if self.range == LIVE_RANGE:
                self._shown, self._shown_range = overview, LIVE_RANGE
        if self._shown is not None and (overview is not None or cases is not None):
            self._show_services(self._shown, self._cases)

    def on_case_table_highlighted(self, message: CaseTable.Highlighted) -> None:
        self._highlighted = None if message.title_shown else message.case
        self._show_heading()

    def _show_heading(self) -> None:
        heading = cases_heading(self._cases, self._highlighted if self._cases else None)
        self.query_one("#cases-heading", QuietStatic).show(heading)

    def _show_services_heading(self) -> None:
        overview = self._shown
        count = None
        if overview is not None:
            count = sum(isinstance(s, dict) for s in overview.get("services") or [])
        words = dict(RANGES).get(self._shown_range, self._shown_range)
        pending = self.range_words if self.range != self._shown_range else ""
        heading = services_heading(
            count,
            words,
            overview.get("read_from") if overview else None,
            pending=pending,
            failed=self._failed,
        )
        self.query_one("#services-heading", QuietStatic).show(heading)

    def _show_services(
        self, overview: dict[str, Any], cases: list[dict[str, Any]] | None
    ) -> None:
        self._show_services_heading()
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

    def on_resize(self, event: Resize) -> None:
        tall = self.has_class("-tall")
        self.query_one("#services", ScrollPane).step = (
            TALL_PANEL_HEIGHT if tall else PANEL_HEIGHT
        )

    def action_refresh(self) -> None:
        self.post_message(self.RefreshAsked())
        self._wake.set()

    def action_range_next(self) -> None:
        self._choose((self._range_index + 1) % len(RANGES))

    def action_range_prev(self) -> None:
        self._choose((self._range_index - 1) % len(RANGES))

    def _choose(self, index: int) -> None:
        """Show the chosen range: the live overview for 15 minutes, else ask the agent."""
        self._range_index, self._failed = index, ""
        if self.range == LIVE_RANGE:
            self.workers.cancel_group(self, "overview-range")
            self._shown_range = LIVE_RANGE
            self._shown = self._live
            if self._live is not None:
                self._show_services(self._live, self._cases)
            else:
                self._show_services_heading()
            return
        self._show_services_heading()
        self.run_worker(
            self._follow_range(self.range),
            group="overview-range",
            exclusive=True,
            exit_on_error=False,
        )

    async def _follow_range(self, name: str) -> None:
        """Read one range from the agent until another is chosen."""
        client = getattr(self.app, "client", None)
        if client is None:
            return
        while self.range == name:
            try:
                overview = await client.overview(range=name)
            except AgentError as error:
                logger.debug("overview for %s: %s", name, error.message)
                self._failed = error.message
                self._show_services_heading()
            else:
                if self.range != name:
                    return
                self._failed = ""
                self._shown, self._shown_range = overview, name
                self._show_services(overview, self._cases)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RANGE_REFRESH_S)
