"""The changes before a case's first signal, the ones the agent correlated marked in words."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.padding import Padding
from rich.text import Text

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.widgets.quiet_static import QuietStatic

MAX_SUMMARY = 500


def change_mark(change: dict[str, Any]) -> str:
    """`correlated 0.82`, `not correlated`, or "" when the agent did not say."""
    if change.get("correlated") is True:
        score = change.get("correlation")
        return f"correlated {score:.2f}" if fmt.is_number(score) else "correlated"
    if change.get("correlated") is False:
        return "not correlated"
    return ""


def change_line(change: dict[str, Any]) -> Text:
    """Mark, time, kind, service and summary of one change."""
    text = Text()
    mark = change_mark(change)
    if mark:
        style = palette.WARN if change.get("correlated") else "dim"
        text.append(f"{mark}  ", style=style)
    text.append(fmt.clock(change.get("at")).removesuffix(" UTC"), style="dim")
    text.append(f"  {change.get('kind') or fmt.DASH}", style="bold")
    text.append(f"  {change.get('service') or fmt.DASH}")
    text.append(f"  {str(change.get('summary') or fmt.DASH)[:MAX_SUMMARY]}")
    if change.get("before") or change.get("after"):
        text.append(
            f"  ({change.get('before') or fmt.DASH} → {change.get('after') or fmt.DASH})",
            style="dim",
        )
    return text


def changes_view(changes: list[Any]) -> tuple[Group, str]:
    """Correlated changes first, in the agent's order, then the others."""
    found = [c for c in changes if isinstance(c, dict)]
    found.sort(key=lambda c: c.get("correlated") is not True)
    heading = Text(f"Recent changes ({len(found)})", style="bold")
    parts: list[Any] = [heading]
    plain = [heading.plain]
    if not found:
        parts.append(Padding(Text("none recorded before the case", style="dim"), (0, 0, 0, 2)))
        plain.append("none recorded before the case")
    for change in found:
        line = change_line(change)
        parts.append(Padding(line, (0, 0, 0, 2)))
        plain.append(line.plain)
    return Group(*parts), "\n".join(plain)


class CaseChanges(QuietStatic):
    """Deploys, file edits and attribute changes that may have caused the case."""

    def show_changes(self, changes: list[Any]) -> bool:
        view, plain = changes_view(changes)
        return self.show(view, key=plain, plain=plain)
