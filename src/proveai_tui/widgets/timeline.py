"""A case's timeline: every event the agent recorded, oldest first, as time · kind · what."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.widgets.quiet_static import QuietStatic

MAX_WHAT = 2000
"""Characters of one event's text shown; a longer note is cut and says so."""
TRANSITION_FIELDS = (
    ("severity", "severity"),
    ("owner", "owner"),
    ("suggestion_id", "suggestion"),
    ("root_cause", "root cause"),
    ("fix", "fix"),
    ("reason", "reason"),
    ("duplicate_of", "duplicate of"),
)
KNOWN_KEYS = frozenset({"at", "type", "kind"})
KIND_STYLES = {
    "signal": palette.WARN,
    "verification": "bold",
    "ticket failed": palette.ALARM,
    "analysis": palette.ACCENT,
}


def cut(text: str, limit: int = MAX_WHAT) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def verification_spec(spec: dict[str, Any]) -> str:
    """`query <= 0.05 over 5 m`, or "" when the suggestion carried no query."""
    query = spec.get("query")
    if not isinstance(query, str) or not query:
        return ""
    comparator = spec.get("comparator") or "?"
    threshold = fmt.number(spec.get("threshold"))
    return f"{query} {comparator} {threshold} over {fmt.window(spec.get('window_s'))}"


def transition_event(event: dict[str, Any], case: dict[str, Any]) -> tuple[str, str]:
    """A transition; the verification's start and its outcome are told as verification."""
    source, to = event.get("from"), event.get("to")
    note = str(event.get("note") or "")
    if to == "VERIFYING":
        spec = verification_spec(fmt.mapping(case.get("verification")))
        what = "verifying the fix" + (f": {spec}" if spec else "")
        return "verification", f"{what} (by {event.get('actor') or fmt.DASH})"
    if source == "VERIFYING" and to in ("RESOLVED", "INVESTIGATING"):
        held = to == "RESOLVED"
        what = f"{'fix held' if held else 'fix did not hold'} → {to}"
        if note:
            what += f": {note}"
        resolution = fmt.mapping(case.get("resolution"))
        if held and resolution.get("verified_at") == event.get("at"):
            remediate = resolution.get("time_to_remediate_s")
            if fmt.is_number(remediate):
                what += f" · time to remediate {fmt.seconds(remediate)}"
        return "verification", what
    what = f"{fmt.state(source)} → {fmt.state(to)}" if source else f"→ {fmt.state(to)}"
    what += f" by {event.get('actor') or fmt.DASH}"
    for key, label in TRANSITION_FIELDS:
        if event.get(key):
            what += f" · {label} {event[key]}"
    if note:
        what += f" · note: {note}"
    return "transition", what


def ticket_event(event: dict[str, Any]) -> tuple[str, str]:
    name = event.get("number") if event.get("number") is not None else event.get("key")
    system = str(event.get("system") or "ticket")
    what = f"{event.get('actor') or fmt.DASH} created {system} {fmt.number(name)}"
    if event.get("url"):
        what += f" {event['url']}"
    return "ticket", what


def other_event(kind: str, event: dict[str, Any]) -> tuple[str, str]:
    """An event this console does not know, with its plain fields as `key value`."""
    parts = [
        f"{key} {fmt.number(value)}"
        for key, value in event.items()
        if key not in KNOWN_KEYS and not isinstance(value, dict | list)
    ]
    return kind or "event", " · ".join(parts) or fmt.DASH


def describe(
    event: dict[str, Any], case: dict[str, Any], last_analysis: bool
) -> tuple[str, str]:
    """The kind and the words of one event."""
    kind = str(event.get("type") or event.get("kind") or "")
    actor = str(event.get("actor") or fmt.DASH)
    if kind == "signal":
        return "signal", str(event.get("summary") or fmt.DASH)
    if kind == "transition":
        return transition_event(event, case)
    if kind == "opened":
        return "opened", f"by {actor}"
    if kind == "analysis":
        what = str(event.get("summary") or fmt.DASH)
        suggestions = [s for s in fmt.items(case.get("remediation_suggestions")) if s]
        if last_analysis and suggestions:
            ids = ", ".join(str(fmt.mapping(s).get("id") or fmt.DASH) for s in suggestions)
            what += (
                f" · {len(suggestions)} suggestion{'' if len(suggestions) == 1 else 's'}: {ids}"
            )
        return "analysis", what
    if kind == "note":
        text = str(event.get("text") or "")
        return "note", f"{actor}: {text}" if text else actor
    if kind == "feedback":
        verdict = "helpful" if event.get("helpful") else "not helpful"
        what = f"{actor} marked {event.get('suggestion_id') or fmt.DASH} {verdict}"
        if event.get("note"):
            what += f": {event['note']}"
        return "feedback", what
    if kind == "ticket":
        return ticket_event(event)
    if kind == "ticket_failed":
        return "ticket failed", f"{actor}: {event.get('error') or fmt.DASH}"
    return other_event(kind, event)


def ordered_events(case: dict[str, Any]) -> list[tuple[datetime | None, dict[str, Any]]]:
    """Events oldest first; one without a time keeps its place after the one before it."""
    events = [e for e in fmt.items(case.get("timeline")) if isinstance(e, dict)]
    keyed = []
    carried: datetime | None = None
    for index, event in enumerate(events):
        at = fmt.parse_time(event.get("at"))
        carried = at or carried
        keyed.append((carried.timestamp() if carried else float("-inf"), index, at, event))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [(at, event) for _, _, at, event in keyed]


def timeline_rows(case: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(date, time, kind, what) per event, oldest first."""
    events = ordered_events(case)
    last = max(
        (
            i
            for i, (_, e) in enumerate(events)
            if (e.get("type") or e.get("kind")) == "analysis"
        ),
        default=-1,
    )
    rows = []
    for index, (at, event) in enumerate(events):
        kind, what = describe(event, case, index == last)
        date = at.strftime("%Y-%m-%d") if at else ""
        clock = at.strftime("%H:%M:%S") if at else fmt.DASH
        rows.append((date, clock, kind, cut(what)))
    return rows


def timeline_view(case: dict[str, Any]) -> tuple[Group, str]:
    """The rows in a grid that wraps only the words, under a date line per day."""
    rows = timeline_rows(case)
    heading = Text(f"Timeline ({len(rows)} events, oldest first)", style="bold")
    parts: list[Any] = [heading]
    plain = [heading.plain]
    if not rows:
        parts.append(Text("  no events recorded", style="dim"))
        plain.append("  no events recorded")
    grid: Table | None = None
    day = None
    for date, clock, kind, what in rows:
        if grid is None or (date and date != day):
            day = date or day
            if date:
                parts.append(Text(date, style="dim"))
                plain.append(date)
            grid = Table.grid(padding=(0, 1, 0, 0), expand=True)
            grid.add_column(no_wrap=True, style="dim")
            grid.add_column(no_wrap=True, style="dim")
            grid.add_column(no_wrap=True)
            grid.add_column(no_wrap=True, style="dim")
            grid.add_column(ratio=1, overflow="fold")
            parts.append(grid)
        kind_text = Text(kind, style=KIND_STYLES.get(kind, "bold"))
        grid.add_row(clock, "·", kind_text, "·", Text(what))
        plain.append(f"{clock} · {kind} · {what}")
    return Group(*parts), "\n".join(plain)


class Timeline(QuietStatic):
    """What happened to the case, from its first signal to now."""

    def show_case(self, case: dict[str, Any]) -> bool:
        view, plain = timeline_view(case)
        return self.show(view, key=plain, plain=plain)
