"""Every key binding of the screen you are on, grouped by pane, with what it does and its id."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen

from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.scroll_pane import ScrollPane

CLOSING = "Escape or ? closes this list; arrows, j/k and PageUp/PageDown scroll it."


class KeyRow(NamedTuple):
    keys: str
    does: str
    binding_id: str


class KeyGroup(NamedTuple):
    title: str
    rows: list[KeyRow]


def help_title(node: Any) -> str:
    """The name a screen, pane or the app goes by in this list."""
    return str(getattr(node, "help_title", None) or type(node).__name__)


def bindings_view(groups: list[KeyGroup]) -> tuple[Group, str]:
    """Each group under its title: keys, what they do and the id, aligned across groups."""
    rows = [row for group in groups for row in group.rows]
    keys_width = max((len(row.keys) for row in rows), default=0) + 2
    id_width = max((len(row.binding_id) for row in rows), default=0)
    parts: list[Any] = []
    plain: list[str] = []
    for group in groups:
        if parts:
            parts.append(Text(""))
        parts.append(Text(group.title, style="bold"))
        plain.append(group.title)
        table = Table.grid(padding=(0, 2, 0, 0), expand=True)
        table.add_column(no_wrap=True, style="bold", width=keys_width)
        table.add_column(ratio=1)
        table.add_column(no_wrap=True, style="dim", width=id_width)
        for row in group.rows:
            table.add_row("  " + row.keys, row.does, row.binding_id)
            plain.append(f"  {row.keys}  {row.does}  {row.binding_id}")
        parts.append(table)
    parts += [Text(""), Text(CLOSING, style="dim")]
    plain.append(CLOSING)
    return Group(*parts), "\n".join(plain)


class HelpScreen(ModalScreen[None]):
    """Lists the bindings of the screen it was opened from."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark", "close", "Close", id="help.close"),
    ]

    def __init__(self, groups: list[KeyGroup]) -> None:
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        with ScrollPane(id="help-box", help_title="Keys") as box:
            box.border_title = "Keys"
            yield QuietStatic(id="help-text")

    def on_mount(self) -> None:
        view, plain = bindings_view(self.groups)
        self.query_one("#help-text", QuietStatic).show(view, key=plain, plain=plain)
        self.query_one("#help-box", ScrollPane).focus()

    def action_close(self) -> None:
        self.dismiss()
