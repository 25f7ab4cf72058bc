"""Labelled numbers on one line, such as "rate 4.2 rps" or "p50 0.31 s · p99 1.9 s"."""

from __future__ import annotations

from rich.text import Text

from proveai_tui.format import DASH, NO_DATA
from proveai_tui.widgets.quiet_static import QuietStatic

SEPARATOR = " · "


def metric_text(pairs: list[tuple[str, str]]) -> Text:
    """Label dim, value bold; an unknown value reads "no data", dim, never a number."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for index, (label, value) in enumerate(pairs):
        if index:
            text.append(SEPARATOR, style="dim")
        text.append(f"{label} ", style="dim")
        missing = value in (NO_DATA, DASH)
        text.append(value, style="dim italic" if missing else "bold")
    return text


class Metric(QuietStatic):
    """Labelled values whose box does not change size with them."""

    FIXED_SIZE = True

    def show_values(self, pairs: list[tuple[str, str]]) -> bool:
        return self.show(metric_text(pairs))
