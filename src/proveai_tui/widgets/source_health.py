"""The health of the metrics sources behind the agent, and which span metrics it found."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from proveai_tui import palette
from proveai_tui.format import mapping
from proveai_tui.widgets.quiet_static import QuietStatic

SOURCE_NAMES = {"prometheus": "Prometheus", "victoriametrics": "VictoriaMetrics"}
NOT_CONFIGURED = "not configured"
"""The agent's reason for a source it was not given: not a failure."""


def health_text(overview: dict[str, Any]) -> Text:
    """A line with spanmetrics and each source up, DOWN or not configured, then the error of
    each DOWN one."""
    text = Text()
    spanmetrics = overview.get("spanmetrics")
    if spanmetrics:
        text.append("spanmetrics ", style="dim")
        text.append(str(spanmetrics))
    else:
        text.append("no spanmetrics", style=palette.WARN)

    sources = mapping(overview.get("sources"))
    if not sources:
        text.append(" · no metrics source configured", style="dim")
    errors = []
    for key, health in sources.items():
        name = SOURCE_NAMES.get(key, key)
        health = mapping(health)
        text.append(" · ", style="dim")
        text.append(name + " ")
        if health.get("up"):
            text.append("up", style=palette.GOOD)
        elif health.get("error") == NOT_CONFIGURED:
            text.append(NOT_CONFIGURED, style="dim")
        else:
            text.append("DOWN", style=palette.ALARM)
            errors.append((name, str(health.get("error") or "no reason given")))

    for name, error in errors:
        text.append(f"\n{name}: ", style="dim")
        text.append(error)
    return text


class SourceHealth(QuietStatic):
    """Prometheus and VictoriaMetrics up or down, from `/api/overview` sources."""

    def show_overview(self, overview: dict[str, Any]) -> bool:
        return self.show(health_text(overview))
