"""A one-line trend of a series, drawn with block characters in one colour."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.events import Resize

from proveai_tui.format import is_number
from proveai_tui.widgets.quiet_static import QuietStatic

BLOCKS = "▁▂▃▄▅▆▇█"
GAP = " "


def series_values(points: Any) -> list[float | None]:
    """The values of an API series `[[ts, x], ...]`; a null or malformed point is None."""
    if not isinstance(points, list):
        return []
    values: list[float | None] = []
    for point in points:
        value = point[1] if isinstance(point, list | tuple) and len(point) >= 2 else None
        values.append(float(value) if value is not None and is_number(value) else None)
    return values


def spark_line(values: Sequence[float | None], width: int) -> str:
    """The last `width` values as block characters, scaled from their lowest to their highest.

    The newest value is at the right edge; a missing value is a gap, never a zero bar. Zero is
    the lowest block (in a series that never goes below it), so that a dead service lies flat
    at the bottom; a flat series above zero is a flat line at half height.
    """
    if width <= 0:
        return ""
    recent = list(values[-width:])
    known = [v for v in recent if v is not None]
    low, high = min(known, default=0.0), max(known, default=0.0)
    span = high - low
    cells = []
    for value in recent:
        if value is None:
            cells.append(GAP)
        elif value == 0 and low >= 0:
            cells.append(BLOCKS[0])
        elif span <= abs(high) * 1e-9:
            cells.append(BLOCKS[len(BLOCKS) // 2 - 1])
        else:
            cells.append(BLOCKS[round((value - low) / span * (len(BLOCKS) - 1))])
    return "".join(cells).rjust(width, GAP)


class Spark(QuietStatic):
    """A trend line that fills its width; cheaper to send than Textual's Sparkline."""

    FIXED_SIZE = True

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self._values: list[float | None] = []

    def set_values(self, values: Sequence[float | None]) -> None:
        self._values = list(values)
        self._draw()

    def on_resize(self, event: Resize) -> None:
        self._draw()

    def _draw(self) -> None:
        width = self.content_size.width
        if width > 0:
            self.show(spark_line(self._values, width))
