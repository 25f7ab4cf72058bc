"""Labelled numbers on one line, such as "rate 4.2 rps" or "p50 0.31 s · p99 1.9 s"."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from proveai_tui.format import DASH, NO_DATA, is_number
from proveai_tui.widgets.quiet_static import QuietStatic

SEPARATOR = " · "


def tokens_rate(per_s: Any, missing: str = NO_DATA) -> str:
    """Output tokens a second: one decimal below 10, whole tokens with separators above."""
    if not is_number(per_s):
        return missing
    if 0 < per_s < 0.05:
        return "<0.1 tok/s"
    if round(per_s, 1) < 10:
        return f"{per_s:.1f} tok/s"
    return f"{round(per_s):,} tok/s"


def score(value: Any, missing: str = NO_DATA) -> str:
    """A mean evaluation score to two decimals: 0.8167 is 0.82."""
    return f"{value:.2f}" if is_number(value) else missing


def is_missing(value: str) -> bool:
    return value in (NO_DATA, DASH)


def metric_text(pairs: list[tuple[str, str]]) -> Text:
    """Label dim, value bold; an unknown value reads "no data", dim, never a number."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for index, (label, value) in enumerate(pairs):
        if index:
            text.append(SEPARATOR, style="dim")
        text.append(f"{label} ", style="dim")
        text.append(value, style="dim italic" if is_missing(value) else "bold")
    return text


class Metric(QuietStatic):
    """Labelled values whose box does not change size with them."""

    FIXED_SIZE = True

    def show_values(self, pairs: list[tuple[str, str]]) -> bool:
        return self.show(metric_text(pairs))
