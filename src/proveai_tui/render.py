"""Rich renderables the widgets share: label-value pairs that wrap whole, text cut short."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console, ConsoleOptions, RenderResult
from rich.containers import Lines
from rich.measure import Measurement
from rich.text import Text

SEPARATOR = " · "


class Pairs:
    """`label value · label value …` that breaks between pairs, never inside one.

    A pair wider than the line is wrapped on its own lines. Labels are dim.

    Args:
        pairs: (label, value); an empty label writes the value alone.
        style: the style of the values.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]], style: str = "") -> None:
        self.pairs = [(label, value) for label, value in pairs]
        self.style = style

    @property
    def plain(self) -> str:
        return SEPARATOR.join(f"{label} {value}".strip() for label, value in self.pairs)

    def _pair(self, label: str, value: str) -> Text:
        text = Text()
        if label:
            text.append(f"{label} ", style="dim")
        text.append(value, style=self.style)
        return text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        lines: list[Text] = []
        line = Text()
        for label, value in self.pairs:
            pair = self._pair(label, value)
            if line.cell_len and line.cell_len + len(SEPARATOR) + pair.cell_len <= width:
                line.append(SEPARATOR, style="dim")
                line.append_text(pair)
                continue
            if line.cell_len:
                lines.append(line)
            wrapped = list(pair.wrap(console, width, overflow="fold"))
            lines += wrapped[:-1]
            line = wrapped[-1] if wrapped else Text()
        if line.cell_len or not lines:
            lines.append(line)
        yield Lines(lines)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = max((self._pair(*p).cell_len for p in self.pairs), default=0)
        return Measurement(min(widest, options.max_width), len(self.plain))


class Clipped:
    """Text wrapped to the width it is given and cut after `lines` lines, marked with "…"."""

    def __init__(self, text: Text, lines: int) -> None:
        self.text = text
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        wrapped = list(self.text.wrap(console, width, overflow="fold"))
        if len(wrapped) > self.lines:
            wrapped = wrapped[: self.lines]
            last = wrapped[-1]
            last.rstrip()
            last.truncate(width - 1)
            last.append("…")
        yield Lines(wrapped)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.text)
