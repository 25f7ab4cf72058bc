"""The signals of a case: what each detector saw, in its own words and with its numbers."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.padding import Padding
from rich.text import Text

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.widgets.quiet_static import QuietStatic

LONG_VALUE = 32
INDENT = 4


def evidence_lines(evidence: dict[str, Any]) -> list[str]:
    """Short evidence values together on one line; long ones (queries) each on their own."""
    short, long = [], []
    for key, value in evidence.items():
        written = (
            json.dumps(value, separators=(",", ":"))
            if isinstance(value, dict | list)
            else fmt.number(value)
        )
        if len(written) > LONG_VALUE:
            long.append(f"{key} {written}")
        else:
            short.append(f"{key} {written}")
    return ([" · ".join(short)] if short else []) + long


def signal_head(signal: dict[str, Any]) -> Text:
    severity = fmt.severity(signal.get("severity"))
    where = str(signal.get("service") or fmt.DASH)
    if signal.get("span_name"):
        where += f" / {signal['span_name']}"
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(severity, style=palette.SEVERITY.get(severity, ""))
    text.append(f"  {signal.get('kind') or fmt.DASH}", style="bold")
    text.append(f"  {where}", style="dim")
    if signal.get("failure_class"):
        text.append(f"  {signal['failure_class']}", style="dim")
    return text


def signals_view(signals: list[dict[str, Any]]) -> tuple[Group, str]:
    """Each signal: a head line, its summary, its evidence; long evidence is cut to one line."""
    heading = Text(f"Signals ({len(signals)})", style="bold")
    parts: list[Any] = [heading]
    lines = [heading.plain]
    if not signals:
        parts.append(Padding(Text("none recorded", style="dim"), (0, 0, 0, 2)))
        lines.append("none recorded")
    for signal in signals:
        head = signal_head(signal)
        summary = Text(str(signal.get("summary") or fmt.DASH))
        parts += [Padding(head, (0, 0, 0, 2)), Padding(summary, (0, 0, 0, INDENT))]
        lines += [head.plain, summary.plain]
        evidence = fmt.mapping(signal.get("evidence"))
        for line in evidence_lines(evidence):
            parts.append(
                Padding(
                    Text(line, style="dim", no_wrap=True, overflow="ellipsis"),
                    (0, 0, 0, INDENT),
                )
            )
            lines.append(line)
    return Group(*parts), "\n".join(lines)


class SignalList(QuietStatic):
    """Every signal that opened or joined the case."""

    def show_signals(self, signals: list[dict[str, Any]]) -> bool:
        view, plain = signals_view(signals)
        return self.show(view, key=plain, plain=plain)
