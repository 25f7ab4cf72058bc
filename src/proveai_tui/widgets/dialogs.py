"""Modal dialogs of the case actions: ask for a line of text, pick from a list, confirm.

Each dialog gives back what was chosen through `dismiss`, or None (False for a
confirmation) when the user cancels, so that a cancelled action sends nothing.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from proveai_tui.widgets.quiet_static import QuietStatic

TextCheck = Callable[[str], str | None]
"""A further rule for a dialog's text: the problem in words, or None when it is fine."""


def text_problem(value: str, what: str, limit: int, required: bool) -> str | None:
    """Why `value` cannot be sent as `what`, or None when it can.

    The agent refuses empty and over-long fields with a 400; saying so before anything is
    sent keeps the dialog open with the text still in it. Control characters are refused
    because a terminal would act on them wherever the text is shown again.
    """
    for position, char in enumerate(value, start=1):
        if unicodedata.category(char) == "Cc":
            return (
                f"{what} has a control character (U+{ord(char):04X}) at position "
                f"{position}; only printable text can be sent"
            )
    length = len(value.strip())
    if required and not length:
        return f"{what} cannot be empty"
    if length > limit:
        return f"{what} is {length:,} characters long; the agent takes at most {limit:,}"
    return None


def printable(text: str) -> str:
    """Text from the agent as it can be shown: control characters but the newline as \ufffd."""
    return "".join(
        "\ufffd" if char != "\n" and unicodedata.category(char) == "Cc" else char
        for char in text
    )


class Choice(NamedTuple):
    """One entry of a ChoiceDialog: what it gives back, its line, and more about it."""

    value: str
    label: str
    detail: str = ""


class DialogKeys(QuietStatic):
    """The line at the foot of a dialog that says which keys do what."""


class TextDialog(ModalScreen[str | None]):
    """Asks for one line of text and gives it back stripped; "" for an empty optional one.

    Args:
        title: what is being asked for, on the dialog's border.
        prompt: the question, with what the text is used for.
        limit: the most characters the agent takes for this field.
        required: whether an empty answer is refused.
        value: the text the input starts with.
        check: a further rule, e.g. the form of a case id.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "escape", "cancel", "Cancel", tooltip="Close, sending nothing", id="dialog.cancel"
        ),
    ]

    def __init__(
        self,
        title: str,
        prompt: str,
        *,
        limit: int,
        required: bool,
        value: str = "",
        check: TextCheck | None = None,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.prompt = prompt
        self.limit = limit
        self.required = required
        self.value = value
        self.check = check

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box") as box:
            box.border_title = self.title_text
            yield QuietStatic(Text(self.prompt), classes="dialog-prompt")
            yield Input(self.value, id="dialog-input")
            yield QuietStatic("", id="dialog-problem", classes="dialog-problem")
            needed = "needed" if self.required else "may stay empty"
            yield DialogKeys(
                f"⏎ accept · esc cancel · {needed}, at most {self.limit:,} characters",
                classes="dialog-keys",
            )

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @property
    def problem(self) -> str:
        """The message shown under the input, "" while there is none."""
        return self.query_one("#dialog-problem", QuietStatic).plain

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value
        what = self.title_text.lower()
        problem = text_problem(value, what, self.limit, self.required)
        if problem is None and value.strip() and self.check is not None:
            problem = self.check(value.strip())
        if problem is not None:
            self.query_one("#dialog-problem", QuietStatic).show(Text(problem))
            return
        self.dismiss(value.strip())

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#dialog-problem", QuietStatic).show("")

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChoiceDialog(ModalScreen[str | None]):
    """Picks one of a few choices; the highlighted one's detail is shown under the list.

    Args:
        title: what is being chosen, on the dialog's border.
        prompt: the question.
        choices: the entries, in order.
        chosen: the value highlighted first, when it is one of the choices.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "escape", "cancel", "Cancel", tooltip="Close, sending nothing", id="dialog.cancel"
        ),
        Binding("j", "move(1)", "Next", tooltip="Next choice", show=False, id="dialog.down"),
        Binding(
            "k", "move(-1)", "Previous", tooltip="Previous choice", show=False, id="dialog.up"
        ),
    ]

    def __init__(
        self, title: str, prompt: str, choices: Sequence[Choice], chosen: str | None = None
    ) -> None:
        super().__init__()
        self.title_text = title
        self.prompt = prompt
        self.choices = list(choices)
        self.chosen = chosen

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box") as box:
            box.border_title = self.title_text
            yield QuietStatic(Text(self.prompt), classes="dialog-prompt")
            yield OptionList(
                *(Option(Text(choice.label)) for choice in self.choices), id="dialog-choices"
            )
            yield QuietStatic("", id="dialog-detail", classes="dialog-detail")
            yield DialogKeys("↑↓ j k choose · ⏎ pick · esc cancel", classes="dialog-keys")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        values = [choice.value for choice in self.choices]
        options.highlighted = values.index(self.chosen) if self.chosen in values else 0
        options.focus()
        self._show_detail(options.highlighted)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        self._show_detail(event.option_index)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.choices[event.option_index].value)

    def _show_detail(self, index: int | None) -> None:
        detail = self.choices[index].detail if index is not None and self.choices else ""
        shown = self.query_one("#dialog-detail", QuietStatic)
        shown.show(Text(detail))
        shown.display = bool(detail)

    def action_move(self, step: int) -> None:
        options = self.query_one(OptionList)
        if step > 0:
            options.action_cursor_down()
        else:
            options.action_cursor_up()

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """Shows what is about to be sent to the agent and asks whether to send it.

    Args:
        title: the action, on the dialog's border.
        lines: what will be sent, one fact a line.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "y,enter", "answer(True)", "Send", tooltip="Send it to the agent", id="dialog.send"
        ),
        Binding(
            "n,escape",
            "answer(False)",
            "Cancel",
            tooltip="Close, sending nothing",
            id="dialog.cancel",
        ),
    ]

    def __init__(self, title: str, lines: Sequence[str]) -> None:
        super().__init__()
        self.title_text = title
        self.lines = list(lines)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box") as box:
            box.border_title = self.title_text
            with VerticalScroll(classes="dialog-facts"):
                yield QuietStatic(Text("\n".join(self.lines)), id="dialog-facts")
            yield DialogKeys("y or ⏎ send it · n or esc cancel", classes="dialog-keys")

    def action_answer(self, send: bool) -> None:
        self.dismiss(send)
