"""A Static that repaints only when what it shows has changed."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.text import Text
from textual.widgets import Static


class QuietStatic(Static):
    """A Static whose `show()` skips the repaint when the content is the same as before.

    A repaint costs bytes on every SSH hop even when nothing changed, so widgets fed by a
    poll call `show()` with what they would draw and let this decide.
    """

    FIXED_SIZE = False
    """True when the size never depends on the text: such widgets repaint without a layout."""

    def __init__(self, content: str | Text = "", **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        super().__init__(content, **kwargs)
        self._key: Any = (type(content), content)
        self._plain = content.plain if isinstance(content, Text) else str(content)

    @property
    def plain(self) -> str:
        """The text shown, without styles."""
        return self._plain

    def show(
        self, content: str | RenderableType, key: Any = None, plain: str | None = None
    ) -> bool:
        """Show content; returns False, drawing nothing, when it is what is already shown.

        Args:
            content: a string, a Text, or any Rich renderable.
            key: what identifies the content when it is not a string or a Text (a table, a
                group): equal keys mean equal content.
            plain: the content as plain text, for renderables that are not a Text.
        """
        identity = (type(content), content) if key is None else ("key", key)
        if identity == self._key:
            return False
        self._key = identity
        if plain is not None:
            self._plain = plain
        else:
            self._plain = content.plain if isinstance(content, Text) else str(content)
        self.update(content, layout=not self.FIXED_SIZE)
        return True
