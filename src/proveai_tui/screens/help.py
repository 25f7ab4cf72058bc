"""The key bindings that work where you are, with their descriptions and ids."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen

from proveai_tui.widgets.quiet_static import QuietStatic

KEY_WIDTH = 14
DESCRIPTION_WIDTH = 18


def bindings_text(rows: list[tuple[str, str, str]]) -> Text:
    """A table of key, description and binding id."""
    text = Text()
    text.append("Key".ljust(KEY_WIDTH) + "Does".ljust(DESCRIPTION_WIDTH) + "Id\n", style="bold")
    for key, description, binding_id in rows:
        text.append(key.ljust(KEY_WIDTH), style="bold")
        text.append(description.ljust(DESCRIPTION_WIDTH))
        text.append(binding_id + "\n", style="dim")
    text.append("\nEscape or ? closes this list.", style="dim")
    return text


class HelpScreen(ModalScreen[None]):
    """Lists the bindings of the screen it was opened from."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark", "close", "Close", id="help.close"),
    ]

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = "Keys"
            yield QuietStatic(bindings_text(self.rows), id="help-text")

    def action_close(self) -> None:
        self.dismiss()
