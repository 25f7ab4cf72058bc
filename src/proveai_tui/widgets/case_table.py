"""A list of cases: id, severity, state, class, service, age, and with room the title."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.coordinate import Coordinate
from textual.events import Resize
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

from proveai_tui import format as fmt
from proveai_tui import palette

HEADERS = {
    "id": "case",
    "severity": "severity",
    "state": "state",
    "class": "class",
    "service": "service",
    "age": "age",
    "confidence": "conf",
    "title": "title",
}
BASE_COLUMNS = ("id", "severity", "state", "class", "service", "age")
"""The columns of the overview's list of open cases."""
SHORT = {
    "class": {
        "HALLUCINATION": "HALLUCIN",
        "RETRIEVAL_DRIFT": "RETR_DRIFT",
        "COHERENCE_DEGRADATION": "COHER_DEGR",
        "AGENT_LOOP": "AGENT_LOOP",
        "LATENCY_REGRESS": "LAT_REGR",
        "CONTEXT_OVERFLOW": "CTX_OVERFL",
        "PROMPT_REGRESSION": "PROMPT_REG",
        "TOKEN_EXPLOSION": "TOKEN_EXPL",
        "ERROR_SPIKE": "ERR_SPIKE",
    },
    "state": {"INVESTIGATING": "INVESTIG", "REMEDIATION_SUGGESTED": "SUGGESTED"},
}
"""Short forms, in the order they are taken when the columns do not fit."""
SHRINKABLE = ("service", "class", "state")
MIN_SHRUNK = 8
MIN_TITLE = 24
CELL_PADDING = 1


def case_cells(case: dict[str, Any], now: datetime) -> dict[str, str]:
    """The text of each column for one case summary; unknowns are "—"."""
    return {
        "id": str(case.get("id") or fmt.DASH),
        "severity": fmt.severity(case.get("severity")),
        "state": fmt.state(case.get("state")),
        "class": str(case.get("failure_class") or fmt.DASH),
        "service": str(case.get("service") or fmt.DASH),
        "age": fmt.age(case.get("opened_at"), now),
        "confidence": confidence(case.get("top_confidence")),
        "title": str(case.get("title") or ""),
    }


def confidence(value: Any) -> str:
    """The best hypothesis's confidence, two decimals; "—" before the engine has ranked."""
    return f"{value:.2f}" if fmt.is_number(value) else fmt.DASH


def _natural(rows: list[dict[str, str]], key: str) -> int:
    return max([len(HEADERS[key])] + [len(row[key]) for row in rows])


def fit_columns(
    rows: list[dict[str, str]], width: int, columns: tuple[str, ...] = BASE_COLUMNS
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The rows and column widths that fit `width` cells, every one of `columns` kept.

    Class, then state, take their short forms; then service, class and state are cut with
    "…" down to 8 cells, widest first. The title comes last, only where it has room to be
    read; the case screen always shows it.

    Returns:
        the rows as they are to be written, and the columns to show, in order, with widths.
    """
    pad = 2 * CELL_PADDING
    fitted = [dict(row) for row in rows]

    def over() -> int:
        return sum(_natural(fitted, k) for k in columns) + pad * len(columns) - width

    for key, short in SHORT.items():
        if over() <= 0:
            break
        for row in fitted:
            row[key] = short.get(row[key], row[key])

    widths = {key: _natural(fitted, key) for key in columns}
    excess = over()
    while excess > 0:
        candidates = [key for key in SHRINKABLE if key in widths and widths[key] > MIN_SHRUNK]
        if not candidates:
            break
        widest = max(candidates, key=lambda key: widths[key])
        widths[widest] -= 1
        excess -= 1

    spare = -excess - pad
    title = _natural(fitted, "title")
    if title > len(HEADERS["title"]) and spare >= min(title, MIN_TITLE):
        widths["title"] = min(title, spare)
    return fitted, widths


class CaseTable(DataTable, inherit_bindings=False):
    """Cases, one per row, keyed by case id; Enter asks to open the highlighted one.

    Args:
        columns: the columns always shown, in order; the title joins them where it fits.
        keep_order: show cases in the order given rather than most severe first, for a list
            whose owner sorts it.
    """

    help_title = "Open cases"

    class Highlighted(Message):
        """The highlighted case changed, or whether its title has a column.

        Args:
            case: the highlighted case summary, None when the list is empty.
            title_shown: True when the title column is on screen.
        """

        def __init__(self, case: dict[str, Any] | None, title_shown: bool) -> None:
            super().__init__()
            self.case = case
            self.title_shown = title_shown

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open case", id="cases.open"),
        Binding("down,j", "cursor_down", "Next case", show=False, id="cases.down"),
        Binding("up,k", "cursor_up", "Previous case", show=False, id="cases.up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="cases.page_down"),
        Binding("pageup", "page_up", "Page up", show=False, id="cases.page_up"),
        Binding("home,g", "scroll_top", "First case", show=False, id="cases.first"),
        Binding("end,G", "scroll_bottom", "Last case", show=False, id="cases.last"),
    ]

    def __init__(
        self, columns: tuple[str, ...] = BASE_COLUMNS, keep_order: bool = False, **kwargs
    ) -> None:
        super().__init__(
            cursor_type="row", zebra_stripes=False, cell_padding=CELL_PADDING, **kwargs
        )
        self._columns = columns
        self._keep_order = keep_order
        self._cases: list[dict[str, Any]] = []
        self._drawn: tuple | None = None
        self._told: tuple | None = None

    @property
    def title_shown(self) -> bool:
        """True when the title has a column at the present width."""
        return "title" in self.columns

    @property
    def case_ids(self) -> list[str]:
        return [str(case.get("id")) for case in self._cases]

    @property
    def highlighted_case(self) -> str | None:
        if not self._cases or self.cursor_row < 0 or self.cursor_row >= self.row_count:
            return None
        return str(self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key.value)

    @property
    def cases(self) -> list[dict[str, Any]]:
        """The case summaries shown, in the order of the rows."""
        return list(self._cases)

    def show_cases(self, cases: list[dict[str, Any]]) -> None:
        """Show cases, most severe first then newest unless the order is kept; redraws only
        when a cell changed."""
        if self._keep_order:
            self._cases = list(cases)
            self._draw()
            return
        self._cases = sorted(
            cases,
            key=lambda c: (
                fmt.SEVERITY_RANK.get(fmt.severity(c.get("severity")), 9),
                -(ts.timestamp() if (ts := fmt.parse_time(c.get("opened_at"))) else 0),
            ),
        )
        self._draw()

    def on_resize(self, event: Resize) -> None:
        self._draw()

    def _draw(self) -> None:
        now = datetime.now(UTC)
        rows = [case_cells(case, now) for case in self._cases]
        width = max(self.size.width - 1, 40)
        rows, widths = fit_columns(rows, width, self._columns)
        drawn = (
            tuple(widths.items()),
            tuple(tuple(row[key] for key in widths) for row in rows),
            tuple(case.get("id") for case in self._cases),
        )
        if drawn == self._drawn:
            self._tell()
            return
        previous, self._drawn = self._drawn, drawn
        same_columns = previous is not None and previous[0] == drawn[0]
        if same_columns and previous is not None and previous[2] == drawn[2]:
            # The same cases in the same order: only the cells that changed are redrawn.
            for case, row, old, new in zip(
                self._cases, rows, previous[1], drawn[1], strict=True
            ):
                if old != new:
                    self._replace_row(str(case.get("id")), self._cells(row, widths))
            self._tell()
            return

        keep = self.highlighted_case
        if same_columns:
            self.clear()
        else:
            self.clear(columns=True)
            for key, column_width in widths.items():
                self.add_column(HEADERS[key], width=column_width, key=key)
        for case, row in zip(self._cases, rows, strict=True):
            self.add_row(*self._cells(row, widths), key=str(case.get("id")))
        if keep in self.case_ids:
            self.move_cursor(row=self.case_ids.index(keep), animate=False)
        self._tell()

    def _replace_row(self, row_key: str, cells: list[Text]) -> None:
        """Put new cells in one row and draw that row alone.

        `update_cell` counts any change as a change of the whole table: every cache the
        table keeps misses and every visible row is drawn again, which makes one changed
        state in a live delivery cost as much as drawing the screen. Here the cached
        renders of this row are dropped, the rest stay, and only the row's lines are
        marked for redrawing. Should the table keep its caches differently one day, the
        change falls back to `update_cell`.
        """
        key = RowKey(row_key)
        try:
            index = self._row_locations.get(key)
            data = self._data[key]
            caches = (self._cell_render_cache, self._row_render_cache)
            renderables, lines = self._row_renderable_cache, self._line_cache
        except (AttributeError, KeyError):
            index = None
        columns = list(self.columns)  # in the order the cells are given
        if index is None:
            for column, cell in zip(columns, cells, strict=True):
                self.update_cell(key, column, cell)
            return
        for column, cell in zip(columns, cells, strict=True):
            data[column] = cell
        for cache in caches:
            _discard(cache, lambda cached: cached[0] == key)
        _discard(renderables, lambda cached: cached[1] == index)
        region = self._get_row_region(index)
        _discard(lines, lambda cached: region.y <= cached[0] < region.bottom)
        self.refresh_row(index)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._tell()

    def _tell(self) -> None:
        """Post Highlighted when the highlighted case or the title column changed."""
        case_id = self.highlighted_case
        case = next((c for c in self._cases if str(c.get("id")) == case_id), None)
        told = (case_id, case.get("title") if case else None, self.title_shown)
        if told != self._told:
            self._told = told
            self.post_message(self.Highlighted(case, self.title_shown))

    @staticmethod
    def _cells(row: dict[str, str], widths: dict[str, int]) -> list[Text]:
        cells = []
        for key, column_width in widths.items():
            text = Text(fmt.ellipsize(row[key], column_width), no_wrap=True)
            if key == "severity":
                text.stylize(palette.SEVERITY.get(row[key], ""))
            elif key == "id":
                text.stylize("bold")
            cells.append(text)
        return cells


def _discard(cache: LRUCache[Any, Any], matches: Callable[[Any], bool]) -> None:
    """Drop the entries of one of the table's caches whose key matches."""
    for key in list(cache.keys()):  # the cache has no iterator of its own
        if matches(key):
            cache.discard(key)
