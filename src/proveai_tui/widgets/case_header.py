"""The head of a case: title, state, severity, trigger, class, service, opened, scores."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.render import Pairs
from proveai_tui.widgets.quiet_static import QuietStatic

LABEL_WIDTH = 8
MISSING_CHARS = 90
"""The most of the engine's missing evidence the header quotes: two lines at 80 columns."""


def _grid(columns: int) -> Table:
    grid = Table.grid(padding=(0, 2, 0, 0))
    for index in range(columns):
        if index % 2:
            grid.add_column(overflow="fold")
        else:
            grid.add_column(style="dim", no_wrap=True, min_width=LABEL_WIDTH)
    return grid


def header_parts(case: dict[str, Any], now: datetime) -> list[tuple[str, str, str]]:
    """The facts, as (label, value, style), in reading order."""
    severity = fmt.severity(case.get("severity"))
    opened = case.get("opened_at")
    return [
        ("state", fmt.state(case.get("state")), "bold"),
        ("severity", severity, palette.SEVERITY.get(severity, "")),
        ("trigger", str(case.get("trigger") or fmt.DASH), ""),
        ("class", str(case.get("failure_class") or fmt.DASH), "bold"),
        ("service", str(case.get("service") or fmt.DASH), ""),
        ("opened", f"{fmt.age(opened, now)} ago, {fmt.clock(opened)}", ""),
    ]


def header_view(case: dict[str, Any], now: datetime | None = None) -> tuple[Group, str]:
    """The header as a renderable, and the same as plain text."""
    now = now or datetime.now(UTC)
    title = Text(no_wrap=False)
    title.append(f"{case.get('id') or fmt.DASH}  ", style="bold")
    title.append(str(case.get("title") or "(untitled)"), style="bold")
    if case.get("advisory"):
        title.append("  advisory", style="italic")

    facts = _grid(4)
    parts = header_parts(case, now)
    for left, right in zip(parts[::2], parts[1::2], strict=True):
        facts.add_row(
            left[0], Text(left[1], style=left[2]), right[0], Text(right[1], style=right[2])
        )
    lines = [title.plain] + [f"{label} {value}" for label, value, _ in parts]

    renderables: list[Any] = [title, facts]
    scores = fmt.mapping(fmt.mapping(case.get("context_snapshot")).get("eval_scores"))
    if scores:
        written = Pairs((str(name), fmt.number(value)) for name, value in scores.items())
        row = _grid(2)
        row.add_row("scores", written)
        renderables.append(row)
        lines.append(f"scores {written.plain}")
    hypotheses = [h for h in case.get("hypotheses") or [] if isinstance(h, dict)]
    analysis = fmt.mapping(case.get("analysis"))
    if analysis.get("unable"):
        likely = _grid(2)
        value = Text("unable to determine root cause")
        missing = [str(m) for m in analysis.get("missing_evidence") or [] if m]
        if missing:  # the gist; the Hypotheses view has the whole of it
            value.append(
                f" ({fmt.ellipsize(missing[0].split(':')[0], MISSING_CHARS)})", style="dim"
            )
        likely.add_row("likely", value)
        renderables.append(likely)
        lines.append(f"likely {value.plain}")
    elif hypotheses:
        best = max(
            hypotheses,
            key=lambda h: h["confidence"] if fmt.is_number(h.get("confidence")) else 0,
        )
        likely = _grid(2)
        value = Text(str(best.get("hypothesis") or fmt.DASH))
        value.append(f" (confidence {fmt.number(best.get('confidence'))})", style="dim")
        likely.add_row("likely", value)
        renderables.append(likely)
        lines.append(f"likely {value.plain}")
    return Group(*renderables), "\n".join(lines)


class CaseHeader(QuietStatic):
    """What the case is and where it stands."""

    def show_case(self, case: dict[str, Any]) -> bool:
        view, plain = header_view(case)
        return self.show(view, key=plain, plain=plain)
