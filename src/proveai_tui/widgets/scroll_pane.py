"""A pane of text that takes focus with Tab and scrolls with the arrows or j/k."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widget import Widget


class ScrollPane(VerticalScroll, inherit_bindings=False):
    """A focusable, vertically scrolling pane; scrolls at once, without animation.

    Args:
        help_title: the pane's name in the keys screen.
        step: lines per press of an arrow, j or k (a panel's height in a pane of panels).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "line_down", "Scroll down", show=False, id="pane.down"),
        Binding("up,k", "line_up", "Scroll up", show=False, id="pane.up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="pane.page_down"),
        Binding("pageup", "page_up", "Page up", show=False, id="pane.page_up"),
        Binding("home,g", "top", "Top", show=False, id="pane.top"),
        Binding("end,G", "bottom", "Bottom", show=False, id="pane.bottom"),
    ]

    def __init__(
        self, *children: Widget, help_title: str = "Pane", step: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(*children, **kwargs)
        self.help_title = help_title
        self.step = step

    def action_line_down(self) -> None:
        here = round(self.scroll_target_y)
        self._move((here // self.step + 1) * self.step)

    def action_line_up(self) -> None:
        here = round(self.scroll_target_y)
        self._move((-(-here // self.step) - 1) * self.step)

    def action_page_down(self) -> None:
        self._move(self.scroll_target_y + self.scrollable_content_region.height)

    def action_page_up(self) -> None:
        self._move(self.scroll_target_y - self.scrollable_content_region.height)

    def action_top(self) -> None:
        self._move(0)

    def action_bottom(self) -> None:
        self._move(self.max_scroll_y)

    def _move(self, y: float) -> None:
        """Scroll to `y` now, so that keys that arrive together each count."""
        self.scroll_to(y=max(0, min(y, self.max_scroll_y)), animate=False, immediate=True)
