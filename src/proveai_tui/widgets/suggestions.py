"""The engine's remediation suggestions: action, effort, confidence, precedent, verification."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.padding import Padding
from rich.text import Text

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.widgets.hypotheses import MAX_TEXT, bar_text, ranked
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.timeline import verification_spec

INDENT = 3


def feedback_of(case: dict[str, Any]) -> dict[str, list[str]]:
    """The engineers' verdicts on each suggestion, from the timeline, oldest first."""
    found: dict[str, list[str]] = {}
    for event in fmt.items(case.get("timeline")):
        if not isinstance(event, dict) or event.get("type") != "feedback":
            continue
        verdict = "helpful" if event.get("helpful") else "not helpful"
        words = f"{verdict} ({event.get('actor') or fmt.DASH})"
        if event.get("note"):
            words += f": {event['note']}"
        found.setdefault(str(event.get("suggestion_id")), []).append(words)
    return found


def suggestion_lines(
    suggestion: dict[str, Any], case: dict[str, Any], feedback: list[str]
) -> list[tuple[Text, int]]:
    """The lines of one suggestion with their indent."""
    head = Text(no_wrap=False)
    head.append(f"{suggestion.get('id') or fmt.DASH}  ", style="bold")
    head.append_text(bar_text(suggestion.get("confidence")))
    head.append(f"  effort {suggestion.get('effort') or fmt.DASH}")
    fix = fmt.mapping(case.get("fix"))
    if fix.get("suggestion_id") and fix.get("suggestion_id") == suggestion.get("id"):
        head.append("  fix applied", style=palette.GOOD)
    lines = [(head, 0)]
    action = str(suggestion.get("action") or fmt.DASH)[:MAX_TEXT]
    lines.append((Text(action, style="bold"), INDENT))
    cause = str(suggestion.get("cause_id") or "")
    because = str(suggestion.get("hypothesis") or "")[:MAX_TEXT]
    if cause or because:
        words = f"for {cause}: {because}" if cause and because else f"for {cause or because}"
        lines.append((Text(words, style="dim"), INDENT))
    similar = suggestion.get("similar_case")
    similar_words = f"similar past case {similar}" if similar else "no similar past case"
    lines.append((Text(similar_words), INDENT))
    spec = verification_spec(fmt.mapping(suggestion.get("verification")))
    verify = f"verify: {spec}" if spec else "verify: no query, an engineer has to judge the fix"
    lines.append((Text(verify), INDENT))
    for words in feedback:
        lines.append((Text(f"feedback: {words}", style="dim"), INDENT))
    return lines


def suggestions_view(case: dict[str, Any]) -> tuple[Group, str]:
    """Every suggestion, most confident first; why there is none when there is none."""
    suggestions = ranked(fmt.items(case.get("remediation_suggestions")))
    heading = Text(f"Suggestions ({len(suggestions)})", style="bold")
    parts: list[Any] = [heading]
    plain = [heading.plain]
    if not suggestions:
        unable = fmt.mapping(case.get("analysis")).get("unable")
        words = "none: the engine could not determine the root cause" if unable else "none yet"
        parts.append(Padding(Text(words, style="dim"), (0, 0, 0, 2)))
        plain.append(f"  {words}")
    feedback = feedback_of(case)
    for suggestion in suggestions:
        mine = feedback.get(str(suggestion.get("id")), [])
        for text, indent in suggestion_lines(suggestion, case, mine):
            parts.append(Padding(text, (0, 0, 0, indent)) if indent else text)
            plain.append(" " * indent + text.plain)
    return Group(*parts), "\n".join(plain)


class SuggestionList(QuietStatic):
    """What the engine suggests doing, and how the agent will tell that it worked."""

    def show_case(self, case: dict[str, Any]) -> bool:
        view, plain = suggestions_view(case)
        return self.show(view, key=plain, plain=plain)
