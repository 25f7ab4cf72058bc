"""The change log: deploys, watched files and attribute drift, newest first, by service."""

from __future__ import annotations

import unicodedata
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import DataTable, Input

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.client import AgentClient, AgentError
from proveai_tui.render import SEPARATOR
from proveai_tui.widgets.footer import KeysFooter
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.status_bar import StatusBar

SHOWN = 500
"""The most changes listed: the newest ones."""
AGENT_PAGE = 500
"""`/api/changes` answers at most this many, the oldest first of those asked for."""
MAX_PAGES = 50
"""The most answers read to reach the newest changes; beyond, the list says it stopped."""
MAX_SERVICE = 200
"""The longest service name the agent takes."""
HEADERS = {
    "time": "time",
    "service": "service",
    "kind": "kind",
    "summary": "summary",
    "change": "before → after",
}
ARROW = " → "
TIME_WIDTH = 11
KIND_WIDTH = 9
SERVICE_WIDTH = 16
CELL_PADDING = 1


def short_time(value: Any) -> str:
    """A change's time in a table cell: 06-02 09:05 (UTC)."""
    parsed = fmt.parse_time(value)
    return parsed.strftime("%m-%d %H:%M") if parsed else fmt.DASH


def before_after(change: dict[str, Any]) -> str:
    """`before → after`, with "—" for the side the agent did not send."""
    before, after = change.get("before"), change.get("after")
    if before is None and after is None:
        return ""
    left = fmt.DASH if before is None else str(before)
    right = fmt.DASH if after is None else str(after)
    return f"{left}{ARROW}{right}"


def change_cells(change: dict[str, Any]) -> dict[str, str]:
    """The text of each column for one change; unknowns are "—"."""
    return {
        "time": short_time(change.get("at")),
        "service": str(change.get("service") or fmt.DASH),
        "kind": str(change.get("kind") or fmt.DASH),
        "summary": " ".join(str(change.get("summary") or fmt.DASH).split()),
        "change": " ".join(before_after(change).split()),
    }


def fit_widths(rows: list[dict[str, str]], width: int) -> dict[str, int]:
    """Column widths for `width` cells: time and kind whole, service up to 16, and the rest
    shared by summary and before → after, the summary first."""
    pad = 2 * CELL_PADDING

    def natural(key: str) -> int:
        return max([len(HEADERS[key])] + [len(row[key]) for row in rows])

    widths = {
        "time": TIME_WIDTH,
        "service": min(natural("service"), SERVICE_WIDTH),
        "kind": min(natural("kind"), KIND_WIDTH),
    }
    rest = width - sum(widths.values()) - pad * 5
    change = min(natural("change"), max(rest * 2 // 5, len(HEADERS["change"])))
    widths["summary"] = max(rest - change, 8)
    widths["change"] = max(change, 8)
    return widths


def detail_line(change: dict[str, Any] | None) -> Text:
    """The highlighted change whole: time, service, kind, summary, values, source."""
    text = Text()
    if change is None:
        return text
    text.append(fmt.clock(change.get("at")), style="bold")
    for label, value in (
        ("", str(change.get("service") or fmt.DASH)),
        ("", str(change.get("kind") or fmt.DASH)),
        ("", str(change.get("summary") or fmt.DASH)),
        ("", before_after(change)),
        ("source", str(change.get("source") or fmt.DASH)),
    ):
        if value:
            text.append(SEPARATOR, style="dim")
            if label:
                text.append(f"{label} ", style="dim")
            text.append(value)
    return text


def check_service(typed: str) -> str:
    """The service to filter on; ValueError says why the typed text is not one."""
    service = typed.strip()
    if len(service) > MAX_SERVICE:
        raise ValueError(f"a service name is at most {MAX_SERVICE} characters")
    if any(unicodedata.category(c) == "Cc" for c in service):
        raise ValueError("a service name has no control characters")
    return service


async def recent_changes(
    client: AgentClient, service: str
) -> tuple[list[dict[str, Any]], bool]:
    """The newest SHOWN changes, newest first, and whether older ones were left out.

    The agent answers the oldest changes first, at most 500 at a time, so the newest are
    reached by asking again from the time of the last one received until an answer is short.
    """
    seen: dict[Any, dict[str, Any]] = {}
    since: str | None = None
    for _ in range(MAX_PAGES):
        params = {"service": service, **({"since": since} if since else {})}
        items = (await client.changes(**params)).get("items")
        if not isinstance(items, list):
            raise AgentError("GET /api/changes: the answer has no items list")
        page = [item for item in items if isinstance(item, dict)]
        fresh = [item for item in page if item.get("id") not in seen]
        for item in fresh:
            seen[item.get("id")] = item
        if len(page) < AGENT_PAGE or not fresh or not isinstance(page[-1].get("at"), str):
            break
        since = page[-1]["at"]
    ordered = sorted(seen.values(), key=_newest_first)
    return ordered[:SHOWN], len(ordered) > SHOWN


def _newest_first(change: dict[str, Any]) -> tuple[float, float]:
    parsed = fmt.parse_time(change.get("at"))
    number = change.get("id")
    order = float(number) if isinstance(number, int | float) and fmt.is_number(number) else 0.0
    return (-(parsed.timestamp() if parsed else 0.0), -order)


class ChangeTable(DataTable, inherit_bindings=False):
    """Changes, one per row, newest at the top."""

    help_title = "Changes"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "cursor_down", "Next change", show=False, id="changes.down"),
        Binding("up,k", "cursor_up", "Previous change", show=False, id="changes.up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="changes.page_down"),
        Binding("pageup", "page_up", "Page up", show=False, id="changes.page_up"),
        Binding("home,g", "scroll_top", "Newest change", show=False, id="changes.first"),
        Binding("end,G", "scroll_bottom", "Oldest change", show=False, id="changes.last"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            cursor_type="row", zebra_stripes=False, cell_padding=CELL_PADDING, **kwargs
        )
        self.changes: list[dict[str, Any]] = []
        self._drawn: tuple | None = None

    def show_changes(self, changes: list[dict[str, Any]]) -> None:
        """Show changes in the order given; redraws only when a cell changed."""
        self.changes = changes
        self._draw()

    @property
    def highlighted(self) -> dict[str, Any] | None:
        if not self.changes or not 0 <= self.cursor_row < len(self.changes):
            return None
        return self.changes[self.cursor_row]

    def on_resize(self, event: Resize) -> None:
        self._draw()

    def _draw(self) -> None:
        rows = [change_cells(change) for change in self.changes]
        widths = fit_widths(rows, max(self.size.width - 1, 40))
        drawn = (tuple(widths.items()), tuple(tuple(row.values()) for row in rows))
        if drawn == self._drawn:
            return
        self._drawn = drawn
        keep = self.highlighted
        keep_id = keep.get("id") if keep else None
        self.clear(columns=True)
        for key, column_width in widths.items():
            self.add_column(HEADERS[key], width=column_width, key=key)
        for row in rows:
            self.add_row(
                *(Text(fmt.ellipsize(row[key], widths[key]), no_wrap=True) for key in widths)
            )
        ids = [change.get("id") for change in self.changes]
        if keep_id is not None and keep_id in ids:
            self.move_cursor(row=ids.index(keep_id), animate=False)


class ChangesScreen(Screen, inherit_bindings=False):
    """The newest changes the agent recorded, of every service or of one.

    Args:
        client: the agent client that the screen reads `/api/changes` with.
    """

    help_title = "Changes screen"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "slash",
            "filter",
            "Service",
            tooltip="Show the changes of one service",
            key_display="/",
            id="changes.filter",
        ),
        Binding(
            "escape",
            "clear_filter",
            "All services",
            tooltip="Show every service's changes again",
            show=False,
            id="changes.clear_filter",
        ),
        Binding("r", "refresh", "Refresh", tooltip="Ask the agent again", id="changes.refresh"),
    ]

    def __init__(self, client: AgentClient) -> None:
        super().__init__()
        self.client = client
        self.service = ""
        self.changes: list[dict[str, Any]] | None = None
        self.cut = False

    def compose(self) -> ComposeResult:
        yield StatusBar("Prove AI · changes", id="status")
        yield QuietStatic(self._heading(), id="changes-heading")
        message = QuietStatic("", id="changes-message")
        message.display = False
        yield message
        yield ChangeTable(id="change-list")
        yield QuietStatic("", id="change-detail")
        with Horizontal(id="changes-filter-line", classes="filter-line") as line:
            line.display = False
            yield QuietStatic("service ", classes="filter-label")
            yield Input(
                placeholder="a service name; ⏎ applies, esc shows every service",
                id="changes-filter",
                select_on_focus=False,
            )
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one(ChangeTable).focus()

    def on_screen_resume(self) -> None:
        self.load()

    def action_refresh(self) -> None:
        self.load()

    @work(exclusive=True, group="changes", exit_on_error=False)
    async def load(self) -> None:
        """Read the newest changes of the service asked for; a failure is said, not raised."""
        service = self.service
        try:
            changes, cut = await recent_changes(self.client, service)
        except AgentError as error:
            self._say(f"could not load changes: {error.message}")
            return
        if service != self.service:
            return
        self.changes, self.cut = changes, cut
        self._say("")
        self.query_one(ChangeTable).show_changes(changes)
        self.query_one("#changes-heading", QuietStatic).show(self._heading())
        self._show_detail()

    def _heading(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("Changes", style="bold")
        if self.service:
            text.append(f" of {self.service}")
        if self.changes is None:
            text.append(" · loading …", style="dim")
        elif not self.changes:
            text.append(" · none recorded")
        else:
            count = f"newest {len(self.changes)}" if self.cut else f"{len(self.changes)}"
            text.append(f" · {count}, newest first")
        return text

    def _say(self, message: str) -> None:
        line = self.query_one("#changes-message", QuietStatic)
        line.show(Text(message, style=palette.WARN))
        line.display = bool(message)

    def _show_detail(self) -> None:
        change = self.query_one(ChangeTable).highlighted
        self.query_one("#change-detail", QuietStatic).show(detail_line(change))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def action_filter(self) -> None:
        line = self.query_one("#changes-filter-line")
        field = self.query_one("#changes-filter", Input)
        if not line.display:
            field.value = self.service
            field.cursor_position = len(field.value)
        line.display = True
        field.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "changes-filter":
            return
        event.stop()
        try:
            service = check_service(event.value)
        except ValueError as refused:
            self._say(f"filter not applied: {refused}")
            return
        self._close_filter()
        self._say("")
        self._apply(service)

    def action_clear_filter(self) -> None:
        self._close_filter()
        self._say("")
        self._apply("")

    def _close_filter(self) -> None:
        self.query_one("#changes-filter-line").display = False
        self.query_one(ChangeTable).focus()

    def _apply(self, service: str) -> None:
        if service == self.service:
            return
        self.service = service
        self.changes = None
        self.query_one(ChangeTable).show_changes([])
        self.query_one("#changes-heading", QuietStatic).show(self._heading())
        self.load()
