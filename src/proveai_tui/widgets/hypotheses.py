"""The engine's hypotheses ranked with confidence bars, and what it lacked to decide."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.padding import Padding
from rich.text import Text

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.widgets.quiet_static import QuietStatic

BAR_WIDTH = 10
FULL, EMPTY = "█", "░"
UNABLE = "unable to determine root cause"
MAX_TEXT = 2000


def confidence_bar(value: Any, width: int = BAR_WIDTH) -> str:
    """`██████░░░░ 0.62`: floor(value × width + 0.5) full cells, then the number.

    A value outside 0 to 1 is drawn at the nearest end; one that is not a number draws an
    empty bar and a dash.
    """
    if not fmt.is_number(value):
        return f"{EMPTY * width} {fmt.DASH}"
    full = math.floor(min(max(value, 0.0), 1.0) * width + 0.5)
    return f"{FULL * full}{EMPTY * (width - full)} {value:.2f}"


def confidence_of(item: dict[str, Any]) -> float:
    value = item.get("confidence")
    return float(value) if isinstance(value, int | float) and fmt.is_number(value) else -1.0


def ranked(items: list[Any]) -> list[dict[str, Any]]:
    """The objects among items, highest confidence first; those without one last."""
    found = [item for item in items if isinstance(item, dict)]
    return sorted(found, key=confidence_of, reverse=True)


def bar_text(value: Any) -> Text:
    bar = confidence_bar(value)
    cells, _, number = bar.partition(" ")
    text = Text(no_wrap=True)
    full = cells.count(FULL)
    text.append(cells[:full], style=palette.ACCENT)
    text.append(cells[full:], style="dim")
    text.append(f" {number}", style="bold")
    return text


def model_words(model: dict[str, Any]) -> str:
    """What the local model did for this analysis, in words; "" when not said."""
    if not model:
        return ""
    if not model.get("used"):
        return "model not consulted: the ranking is the evidence's alone"
    if not model.get("answered"):
        reason = str(model.get("reason") or "no reason given")
        return f"model did not answer ({reason}): the evidence ranking stands"
    if model.get("choice"):
        return f"model chose {model['choice']}"
    return "model answered without a choice"


def hypotheses_view(case: dict[str, Any]) -> tuple[Group, str]:
    """The verdict, the missing evidence, the class scores and every hypothesis ranked."""
    analysis = fmt.mapping(case.get("analysis"))
    hypotheses = ranked(fmt.items(case.get("hypotheses")))
    parts: list[Any] = []
    plain: list[str] = []

    def add(renderable: Any, text: str, indent: int = 0) -> None:
        parts.append(Padding(renderable, (0, 0, 0, indent)) if indent else renderable)
        plain.append(" " * indent + text)

    verdict = Text("Analysis: ", style="bold")
    if analysis.get("unable"):
        verdict.append(UNABLE, style=palette.WARN)
    elif analysis.get("verdict"):
        verdict.append(str(analysis["verdict"]))
    elif hypotheses:
        verdict.append("no verdict recorded", style="dim")
    else:
        verdict.append("not analysed yet", style="dim")
    add(verdict, verdict.plain)
    missing = [str(m) for m in fmt.items(analysis.get("missing_evidence")) if m]
    if missing:
        add(Text("missing evidence that would decide:"), "missing evidence that would decide:")
        for lack in missing:
            add(Text(f"- {lack}"), f"- {lack}", 2)
    if words := model_words(fmt.mapping(analysis.get("model"))):
        add(Text(words, style="dim"), words)
    narrative = str(case.get("narrative") or "")
    if narrative:
        add(Text(narrative[:MAX_TEXT]), narrative[:MAX_TEXT])

    scores = fmt.mapping(case.get("class_scores"))
    if scores:
        add(Text("Classes", style="bold"), "Classes")
        for class_name, value in sorted(
            scores.items(), key=lambda kv: -confidence_of({"confidence": kv[1]})
        ):
            bar = bar_text(value)
            bar.append(f"  {class_name}")
            add(bar, bar.plain, 2)

    heading = Text(f"Hypotheses ({len(hypotheses)})", style="bold")
    add(heading, heading.plain)
    if not hypotheses:
        add(Text("none", style="dim"), "none", 2)
    for rank, item in enumerate(hypotheses, 1):
        head = Text(f"{rank}. ", style="bold", no_wrap=False)
        head.append_text(bar_text(item.get("confidence")))
        head.append(f"  {item.get('cause_id') or fmt.DASH}", style="bold")
        if item.get("failure_class"):
            head.append(f"  {item['failure_class']}")
        add(head, head.plain)
        words = str(item.get("hypothesis") or fmt.DASH)[:MAX_TEXT]
        add(Text(words), words, 3)
        evidence = [str(e) for e in fmt.items(item.get("evidence")) if e]
        if evidence:
            said = ("evidence: " + " · ".join(evidence))[:MAX_TEXT]
            add(Text(said, style="dim"), said, 3)
    return Group(*parts), "\n".join(plain)


class HypothesisList(QuietStatic):
    """What the engine thinks caused the case, and how sure it is."""

    def show_case(self, case: dict[str, Any]) -> bool:
        view, plain = hypotheses_view(case)
        return self.show(view, key=plain, plain=plain)
