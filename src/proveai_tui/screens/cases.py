"""Every case the agent knows, a page at a time: filtered by the agent, sorted here."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Input
from textual.worker import get_current_worker

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.client import AgentClient, AgentError
from proveai_tui.screens.overview import OverviewScreen
from proveai_tui.widgets.case_table import SHORT, CaseTable
from proveai_tui.widgets.footer import KeysFooter
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.status_bar import StatusBar

logger = logging.getLogger(__name__)

PAGE = 200
"""Cases asked for at a time; the next page comes when the cursor reaches the last row."""
COLUMNS = ("id", "severity", "class", "state", "service", "age", "confidence")
MAX_FILTER = 500
"""The longest filter taken: no case title the agent stores is longer."""
STATES = (
    "DETECTED",
    "TRIAGED",
    "INVESTIGATING",
    "REMEDIATION_SUGGESTED",
    "FIX_APPLIED",
    "VERIFYING",
    "RESOLVED",
    "CLOSED",
)
FILTER_KEYS = {"state": "state", "class": "class", "service": "service"}
"""Filter words and the query parameter of `/api/cases` each one becomes."""
EXAMPLES = {"state": "state:TRIAGED", "class": "class:AGENT_LOOP", "service": "service:rag-api"}
FILTER_HELP = "state:X class:Y service:Z and words in the title; ⏎ applies, esc clears"


class FilterError(ValueError):
    """A filter the console will not send, with the reason in words."""


@dataclass(frozen=True)
class CaseFilter:
    """What the user asked for: the agent's filters, each empty when not asked."""

    state: str = ""
    failure_class: str = ""
    service: str = ""
    text: str = ""

    @property
    def empty(self) -> bool:
        return not (self.state or self.failure_class or self.service or self.text)

    def params(self, open_only: bool) -> dict[str, str]:
        """The query of `/api/cases`; `open_only` applies when no state was asked."""
        params = {
            "state": self.state or ("open" if open_only else ""),
            "class": self.failure_class,
            "service": self.service,
            "q": self.text,
        }
        return {key: value for key, value in params.items() if value}

    def describe(self) -> str:
        """The filter as it would be typed again."""
        words = [
            f"{key}:{value}"
            for key, value in (
                ("state", self.state),
                ("class", self.failure_class),
                ("service", self.service),
            )
            if value
        ]
        if self.text:
            words.append(self.text)
        return " ".join(words)


def _state(value: str) -> str:
    """A state as the agent names it, from any case or the table's short form."""
    if value.lower() == "open":
        return "open"
    upper = value.upper()
    long_forms = {short: long for long, short in SHORT["state"].items()}
    upper = long_forms.get(upper, upper)
    if upper not in STATES:
        raise FilterError(f"no state {value!r}: the states are open, {', '.join(STATES)}")
    return upper


def _failure_class(value: str) -> str:
    upper = value.upper()
    return {short: long for long, short in SHORT["class"].items()}.get(upper, upper)


def parse_filter(typed: str) -> CaseFilter:
    """The filter in `state:X class:Y service:Z words` form; FilterError says what is wrong.

    Keys are case-insensitive; states and classes are upper-cased and take the table's short
    forms; a service is matched exactly as typed. Other words, joined by single spaces, are
    looked for in titles and service names. The last of a repeated key counts.
    """
    if len(typed) > MAX_FILTER:
        raise FilterError(f"the filter is {len(typed):,} characters long; at most {MAX_FILTER}")
    for char in typed:
        if unicodedata.category(char) == "Cc" and not char.isspace():
            raise FilterError(
                f"the filter holds a control character (U+{ord(char):04X}); "
                "only printable text filters cases"
            )

    found: dict[str, str] = {}
    words: list[str] = []
    for word in typed.split():
        key, colon, value = word.partition(":")
        if not colon or key.lower() not in FILTER_KEYS:
            words.append(word)
            continue
        key = key.lower()
        if not value:
            raise FilterError(f"{key}: needs a value, for example {EXAMPLES[key]}")
        found[key] = value
    return CaseFilter(
        state=_state(found["state"]) if "state" in found else "",
        failure_class=_failure_class(found["class"]) if "class" in found else "",
        service=found.get("service", ""),
        text=" ".join(words),
    )


def _number(case: dict[str, Any]) -> int:
    number = str(case.get("id") or "").partition("-")[2]
    return int(number) if number.isdigit() else 0


def _opened(case: dict[str, Any]) -> float:
    parsed = fmt.parse_time(case.get("opened_at"))
    return parsed.timestamp() if parsed else 0.0


def _confidence(case: dict[str, Any]) -> float:
    value = case.get("top_confidence")
    return float(value) if isinstance(value, int | float) and fmt.is_number(value) else -1.0


SortKey = Callable[[dict[str, Any]], Any]
SORTS: list[tuple[str, SortKey]] = [
    ("newest", lambda case: -_number(case)),
    ("severity", lambda case: fmt.SEVERITY_RANK.get(fmt.severity(case.get("severity")), 9)),
    ("class", lambda case: str(case.get("failure_class") or "~")),
    (
        "state",
        lambda case: (
            STATES.index(state) if (state := fmt.state(case.get("state"))) in STATES else 99
        ),
    ),
    ("service", lambda case: str(case.get("service") or "~")),
    ("age", lambda case: -_opened(case)),
    ("confidence", lambda case: -_confidence(case)),
]
"""The orders `s` cycles through, each in its natural direction (most severe, youngest,
most confident first; states in lifecycle order); ties go newest first."""


def sort_cases(cases: list[dict[str, Any]], sort: int, reverse: bool) -> list[dict[str, Any]]:
    """The cases in the order of SORTS[sort], reversed when asked; ties newest first."""
    newest = sorted(cases, key=lambda case: -_number(case))
    return sorted(newest, key=SORTS[sort][1], reverse=reverse)


def cases_heading(
    open_only: bool,
    shown: CaseFilter,
    cases: int,
    total: int | None,
    sort: int,
    reverse: bool,
    more: bool,
) -> Text:
    """The line above the table: which cases, how many, in what order, filtered how."""
    text = Text(no_wrap=True, overflow="ellipsis")
    which = "Open cases" if open_only and not shown.state else "Cases"
    if shown.state:
        which = f"Cases in {shown.state}" if shown.state != "open" else "Open cases"
    text.append(which, style="bold")
    if total is None:
        text.append(" · loading …", style="dim")
    elif total == 0:
        text.append(" · none match" if not shown.empty else " · none")
    else:
        loaded = f"{cases:,} of {total:,}" if cases < total else f"{total:,}"
        text.append(f" · {loaded}")
        if more:
            text.append(" (more at the end)", style="dim")
    name = SORTS[sort][0]
    text.append(f" · by {name}{', reversed' if reverse else ''}", style="dim")
    if not shown.empty:
        text.append(" · filter ", style="dim")
        text.append(shown.describe())
    return text


class CasesScreen(Screen, inherit_bindings=False):
    """All cases or the open ones, filtered by the agent, a page of 200 at a time.

    The agent filters and pages; sorting orders the cases loaded so far, so that a list of
    ten thousand cases costs one request per page and never the whole list.

    Args:
        client: the agent client that the screen reads `/api/cases` with.
    """

    help_title = "Cases screen"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "slash",
            "filter",
            "Filter",
            tooltip="Filter: state:X class:Y service:Z and words in the title",
            key_display="/",
            id="cases.filter",
        ),
        Binding(
            "escape",
            "clear_filter",
            "Clear filter",
            tooltip="Clear the filter and close its line",
            show=False,
            id="cases.clear_filter",
        ),
        Binding("s", "sort", "Sort", tooltip="Sort by the next column", id="cases.sort"),
        Binding(
            "S",
            "reverse",
            "Reverse",
            tooltip="Reverse the order",
            show=False,
            id="cases.reverse",
        ),
        Binding(
            "a", "toggle_all", "Open/all", tooltip="Show all cases or open ones", id="cases.all"
        ),
        Binding(
            "r",
            "refresh",
            "Refresh",
            tooltip="Ask the agent again",
            show=False,
            id="cases.refresh",
        ),
    ]

    def __init__(self, client: AgentClient) -> None:
        super().__init__()
        self.client = client
        self.open_only = True
        self.filter = CaseFilter()
        self.sort = 0
        self.reverse = False
        self.total: int | None = None
        self.next_cursor: str | None = None
        self.loading = False
        self._loaded: list[dict[str, Any]] = []
        self._query = 0
        """Counts the queries asked, so that the answer to an older one is dropped."""

    @property
    def loaded(self) -> list[dict[str, Any]]:
        """The case summaries loaded so far, in the agent's order."""
        return list(self._loaded)

    def compose(self) -> ComposeResult:
        yield StatusBar("Prove AI · cases", id="status")
        yield QuietStatic(self._heading(), id="cases-list-heading")
        message = QuietStatic("", id="cases-message")
        message.display = False
        yield message
        table = CaseTable(columns=COLUMNS, keep_order=True, id="case-list")
        table.help_title = "Cases"
        yield table
        with Horizontal(id="cases-filter-line", classes="filter-line") as line:
            line.display = False
            yield QuietStatic("filter ", classes="filter-label")
            yield Input(placeholder=FILTER_HELP, id="cases-filter", select_on_focus=False)
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one(CaseTable).focus()
        self.load()

    def on_screen_resume(self) -> None:
        """Coming back shows the cases as they are now, unless pages were loaded past the
        first: reloading would lose them."""
        if self._loaded and len(self._loaded) <= PAGE and not self.loading:
            self.load()

    # Loading

    def load(self) -> None:
        """Ask for the first page of the present filter; an older answer is dropped."""
        self._query += 1
        self.loading = True
        self._fetch(self._query, self.filter.params(self.open_only), None)

    def load_more(self) -> None:
        """Ask for the next page, unless one is on its way or there is none."""
        if self.loading or not self.next_cursor:
            return
        self.loading = True
        self._fetch(self._query, self.filter.params(self.open_only), self.next_cursor)

    @work(exclusive=True, group="cases-list", exit_on_error=False)
    async def _fetch(self, query: int, params: dict[str, str], cursor: str | None) -> None:
        try:
            answer = await self.client.cases(
                **params, limit=PAGE, **({"cursor": cursor} if cursor else {})
            )
            items = answer.get("items")
            if not isinstance(items, list):
                raise AgentError("GET /api/cases: the answer has no items list")
        except AgentError as error:
            if query == self._query and not get_current_worker().is_cancelled:
                self.loading = False
                self._say(f"could not load cases: {error.message}")
            return
        if query != self._query:
            return
        self.loading = False
        cases = [case for case in items if isinstance(case, dict) and case.get("id")]
        if cursor is None:
            self._loaded = cases
        else:
            known = {case["id"] for case in self._loaded}
            self._loaded += [case for case in cases if case["id"] not in known]
        total = answer.get("total")
        self.total = total if isinstance(total, int) else len(self._loaded)
        self.next_cursor = answer.get("next") if isinstance(answer.get("next"), str) else None
        self._say("")
        self._show()

    # Live

    def cases_changed(self, open_cases: list[dict[str, Any]], complete: bool) -> None:
        """Take a live delivery of the open cases into the loaded pages, without asking
        the agent. A loaded case takes its new summary, or leaves when the filter no longer
        shows it; a new case the filter shows goes on top; with `complete` (the delivery
        has every open case) a case gone from it has ended, and leaves a list of open
        cases. Free text is matched by the agent only: with it, nothing is added or
        dropped. Nothing is drawn when nothing changed."""
        if self.loading or not self._loaded:
            return
        fresh = {str(case.get("id")): case for case in open_cases if case.get("id")}
        open_view = self.open_only and not self.filter.state
        changed, removed = False, 0
        kept: list[dict[str, Any]] = []
        for case in self._loaded:
            now = fresh.pop(str(case["id"]), None)
            if now is None and complete and open_view and not self.filter.text:
                removed += 1
            elif now is None:
                kept.append(case)
            elif self._shows(now) is False:
                removed += 1
            else:
                changed = changed or now != case
                kept.append(now)
        newest = max((_number(case) for case in self._loaded), default=0)
        added = sorted(
            (c for c in fresh.values() if _number(c) > newest and self._shows(c)),
            key=_number,
            reverse=True,
        )
        if not (changed or removed or added):
            return
        self._loaded = added + kept
        if self.total is not None:
            self.total += len(added) - removed
        self._show()

    def _shows(self, case: dict[str, Any]) -> bool | None:
        """Whether the filter shows this open case; None when only the agent can tell."""
        wanted = self.filter
        if wanted.state and wanted.state not in ("open", case.get("state")):
            return False
        if wanted.failure_class and case.get("failure_class") != wanted.failure_class:
            return False
        if wanted.service and case.get("service") != wanted.service:
            return False
        return None if wanted.text else True

    # Showing

    def _show(self) -> None:
        table = self.query_one(CaseTable)
        table.show_cases(sort_cases(self._loaded, self.sort, self.reverse))
        self.query_one("#cases-list-heading", QuietStatic).show(self._heading())

    def _heading(self) -> Text:
        return cases_heading(
            self.open_only,
            self.filter,
            len(self._loaded),
            self.total,
            self.sort,
            self.reverse,
            bool(self.next_cursor),
        )

    def _say(self, message: str) -> None:
        """A line under the heading for what went wrong; empty hides it."""
        line = self.query_one("#cases-message", QuietStatic)
        line.show(Text(message, style=palette.WARN))
        line.display = bool(message)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        table = self.query_one(CaseTable)
        if table.row_count and event.cursor_row >= table.row_count - 1:
            self.load_more()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter opens the case, the way the overview opens one."""
        event.stop()
        if event.row_key.value is not None:
            self.post_message(OverviewScreen.CaseChosen(str(event.row_key.value)))

    # Filter

    def action_filter(self) -> None:
        line = self.query_one("#cases-filter-line")
        field = self.query_one("#cases-filter", Input)
        if not line.display:
            field.value = self.filter.describe()
            field.cursor_position = len(field.value)
        line.display = True
        field.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "cases-filter":
            return
        event.stop()
        try:
            asked = parse_filter(event.value)
        except FilterError as refused:
            self._say(f"filter not applied: {refused}")
            return
        self._close_filter()
        self._say("")
        if asked != self.filter:
            self.filter = asked
            self._restart()

    def action_clear_filter(self) -> None:
        self._close_filter()
        self._say("")
        if not self.filter.empty:
            self.filter = CaseFilter()
            self._restart()

    def _close_filter(self) -> None:
        self.query_one("#cases-filter-line").display = False
        self.query_one(CaseTable).focus()

    def _restart(self) -> None:
        """A new question for the agent: the old pages go once its answer is here.

        The table keeps the old rows until then, under a heading that says what is being
        asked: emptying it first would draw the whole table twice for one filter.
        """
        self._loaded = []
        self.total = None
        self.next_cursor = None
        self.query_one("#cases-list-heading", QuietStatic).show(self._heading())
        self.load()

    # Order and scope

    def action_sort(self) -> None:
        self.sort = (self.sort + 1) % len(SORTS)
        self.reverse = False
        self._show()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self._show()

    def action_toggle_all(self) -> None:
        self.open_only = not self.open_only
        if self.filter.state:
            self._say(f"the filter's state:{self.filter.state} decides which cases show")
            self.query_one("#cases-list-heading", QuietStatic).show(self._heading())
            return
        self._restart()

    def action_refresh(self) -> None:
        self.load()
