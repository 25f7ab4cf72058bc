"""The audit log: whether its hash chain holds, and the most recent records, newest first."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import DataTable

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.client import AgentClient, AgentError
from proveai_tui.widgets.footer import KeysFooter
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.status_bar import StatusBar

SHOWN = 200
"""The most recent records listed."""
AGENT_PAGE = 10_000
"""The most records `/api/audit` answers at once."""
MAX_PAGES = 20
HEADERS = {
    "seq": "seq",
    "chain": "chain",
    "time": "time",
    "actor": "actor",
    "action": "action",
    "subject": "subject",
}
CELL_PADDING = 1
ACTOR_WIDTH = 14


def verdict_text(verdict: dict[str, Any] | None, error: str = "") -> Text:
    """The chain's state in words: holds, or broken at record N and why."""
    text = Text()
    if error:
        text.append(f"chain not checked: {error}", style=palette.WARN)
        return text
    if verdict is None:
        text.append("checking the chain …", style="dim")
        return text
    records = verdict.get("records")
    counted = f"{records:,}" if isinstance(records, int) else fmt.DASH
    reason = str(verdict.get("reason") or "")
    if verdict.get("ok") is True:
        text.append("✓ chain holds", style=palette.GOOD)
        text.append(f": {counted} records checked, each linked to the one before")
        return text
    text.append(
        f"✗ chain BROKEN at record {verdict.get('first_bad', fmt.DASH)}", style=palette.ALARM
    )
    text.append(f": {reason or 'no reason given'}")
    text.append(f" ({counted} records read up to it)", style="dim")
    return text


def chain_word(seq: Any, first_bad: int | None) -> str:
    """How far the verdict vouches for a record: ok before the break, then not."""
    if first_bad is None or not isinstance(seq, int):
        return "ok"
    if seq < first_bad:
        return "ok"
    return "BROKEN" if seq == first_bad else "unchecked"


def record_cells(record: dict[str, Any], first_bad: int | None) -> dict[str, str]:
    """The text of each column for one record; unknowns are "—"."""
    return {
        "seq": str(record.get("seq", fmt.DASH)),
        "chain": chain_word(record.get("seq"), first_bad),
        "time": fmt.clock(record.get("at")).removesuffix(" UTC"),
        "actor": str(record.get("actor") or fmt.DASH),
        "action": str(record.get("action") or fmt.DASH),
        "subject": str(record.get("subject") or fmt.DASH),
    }


def fit_widths(rows: list[dict[str, str]], width: int, columns: list[str]) -> dict[str, int]:
    """Column widths for `width` cells: seq, chain, time and action whole, actor up to 14,
    and the subject the rest."""
    pad = 2 * CELL_PADDING

    def natural(key: str) -> int:
        return max([len(HEADERS[key])] + [len(row[key]) for row in rows])

    widths = {key: natural(key) for key in columns}
    widths["actor"] = min(widths["actor"], ACTOR_WIDTH)
    fixed = sum(v for k, v in widths.items() if k != "subject") + pad * len(columns)
    widths["subject"] = max(min(widths["subject"], width - fixed), 8)
    return widths


def detail_line(record: dict[str, Any] | None) -> Text:
    """The highlighted record whole: its data as the agent recorded it, and its hash."""
    text = Text()
    if record is None:
        return text
    text.append(f"#{record.get('seq', fmt.DASH)} ", style="bold")
    text.append(fmt.clock(record.get("at")))
    text.append(f" · {record.get('actor') or fmt.DASH} · {record.get('action') or fmt.DASH}")
    text.append(f" {record.get('subject') or ''}".rstrip())
    data = record.get("data")
    if data:
        text.append(" · ", style="dim")
        text.append(json.dumps(data, ensure_ascii=False, sort_keys=True))
    if record.get("hash"):
        text.append(f" · hash {str(record['hash'])[:12]}…", style="dim")
    return text


async def recent_records(client: AgentClient, after: int) -> list[dict[str, Any]]:
    """The last SHOWN records with a sequence number above `after`, newest first."""
    kept: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        items = (await client.audit(after=after, limit=AGENT_PAGE)).get("items")
        if not isinstance(items, list):
            raise AgentError("GET /api/audit: the answer has no items list")
        page = [item for item in items if isinstance(item, dict)]
        kept = (kept + page)[-SHOWN:]
        last = page[-1].get("seq") if page else None
        if len(page) < AGENT_PAGE or not isinstance(last, int) or last <= after:
            break
        after = last
    return kept[::-1]


class RecordTable(DataTable, inherit_bindings=False):
    """Audit records, one per row, newest at the top; the chain column only when broken."""

    help_title = "Audit records"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "cursor_down", "Next record", show=False, id="audit.down"),
        Binding("up,k", "cursor_up", "Previous record", show=False, id="audit.up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="audit.page_down"),
        Binding("pageup", "page_up", "Page up", show=False, id="audit.page_up"),
        Binding("home,g", "scroll_top", "Newest record", show=False, id="audit.first"),
        Binding("end,G", "scroll_bottom", "Oldest record", show=False, id="audit.last"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            cursor_type="row", zebra_stripes=False, cell_padding=CELL_PADDING, **kwargs
        )
        self.records: list[dict[str, Any]] = []
        self.first_bad: int | None = None
        self._drawn: tuple | None = None

    def show_records(self, records: list[dict[str, Any]], first_bad: int | None) -> None:
        """Show records in the order given, the broken one marked; redraws only on change."""
        self.records, self.first_bad = records, first_bad
        self._draw()

    @property
    def highlighted(self) -> dict[str, Any] | None:
        if not self.records or not 0 <= self.cursor_row < len(self.records):
            return None
        return self.records[self.cursor_row]

    def on_resize(self, event: Resize) -> None:
        self._draw()

    def _draw(self) -> None:
        rows = [record_cells(record, self.first_bad) for record in self.records]
        columns = [key for key in HEADERS if key != "chain" or self.first_bad is not None]
        widths = fit_widths(rows, max(self.size.width - 1, 40), columns)
        drawn = (tuple(widths.items()), tuple(tuple(row.values()) for row in rows))
        if drawn == self._drawn:
            return
        self._drawn = drawn
        keep = self.highlighted
        keep_seq = keep.get("seq") if keep else None
        self.clear(columns=True)
        for key, column_width in widths.items():
            self.add_column(HEADERS[key], width=column_width, key=key)
        for row in rows:
            cells = []
            for key in widths:
                cell = Text(fmt.ellipsize(row[key], widths[key]), no_wrap=True)
                if key == "chain" and row[key] == "BROKEN":
                    cell.stylize(palette.ALARM)
                cells.append(cell)
            self.add_row(*cells)
        seqs = [record.get("seq") for record in self.records]
        if keep_seq is not None and keep_seq in seqs:
            self.move_cursor(row=seqs.index(keep_seq), animate=False)


class AuditScreen(Screen, inherit_bindings=False):
    """The audit chain's verdict from `/api/audit/verify` and the latest records.

    Args:
        client: the agent client that the screen reads the audit log with.
    """

    help_title = "Audit screen"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "r", "refresh", "Verify again", tooltip="Check the chain again", id="audit.refresh"
        ),
    ]

    def __init__(self, client: AgentClient) -> None:
        super().__init__()
        self.client = client
        self.verdict: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] | None = None

    def compose(self) -> ComposeResult:
        yield StatusBar("Prove AI · audit log", id="status")
        yield QuietStatic(verdict_text(None), id="audit-verdict")
        yield QuietStatic(self._heading(), id="audit-heading")
        yield RecordTable(id="audit-records")
        yield QuietStatic("", id="audit-detail")
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one(RecordTable).focus()

    def on_screen_resume(self) -> None:
        self.load()

    def action_refresh(self) -> None:
        self.load()

    @work(exclusive=True, group="audit", exit_on_error=False)
    async def load(self) -> None:
        """Verify the chain, then read the records up to its end; failures are said."""
        verdict_line = self.query_one("#audit-verdict", QuietStatic)
        try:
            verdict = await self.client.audit_verify()
        except AgentError as error:
            verdict_line.show(verdict_text(None, error.message))
            return
        self.verdict = verdict
        verdict_line.show(verdict_text(verdict))
        bad, counted = verdict.get("first_bad"), verdict.get("records")
        first_bad = bad if isinstance(bad, int) else None
        counted = counted if isinstance(counted, int) else 0
        try:
            records = await recent_records(self.client, max(0, counted - SHOWN))
        except AgentError as error:
            self.query_one("#audit-heading", QuietStatic).show(
                Text(f"could not read the records: {error.message}", style=palette.WARN)
            )
            return
        self.records = records
        self.query_one(RecordTable).show_records(records, first_bad)
        self.query_one("#audit-heading", QuietStatic).show(self._heading())
        self._show_detail()

    def _heading(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("Records", style="bold")
        if self.records is None:
            text.append(" · loading …", style="dim")
        elif not self.records:
            text.append(" · none yet")
        else:
            text.append(f" · the latest {len(self.records)}, newest first")
        return text

    def _show_detail(self) -> None:
        record = self.query_one(RecordTable).highlighted
        self.query_one("#audit-detail", QuietStatic).show(detail_line(record))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()
