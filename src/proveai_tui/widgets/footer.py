"""The footer of keys, rebuilt only when the keys it shows change.

Textual's footer rebuilds all its key widgets whenever the screen's bindings are
refreshed, which happens at every change of focus, even when the keys it shows stay the
same: closing the case filter cost a rebuild of every footer key in the same frame as
the filter's answer. This one compares what it would show with what it shows.
"""

from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.widgets import Footer


class KeysFooter(Footer):
    """A Footer that skips rebuilds that would draw the same keys."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("show_command_palette", False)
        super().__init__(**kwargs)
        self._shown: tuple[Any, ...] | None = None

    def _signature(self) -> tuple[Any, ...]:
        return tuple(
            (binding.key, binding.action, binding.description, enabled, tooltip)
            for _, binding, enabled, tooltip in self.screen.active_bindings.values()
            if binding.show
        )

    def bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and screen is self.screen and screen.app.app_focus:
            shown = self._signature()
            if shown == self._shown:
                return
            self._shown = shown
        super().bindings_changed(screen)
