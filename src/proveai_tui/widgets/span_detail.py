"""The highlighted span in full: kind, status message, model, provider, tokens, scores."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.span_tree import span_model


def detail_text(span: dict[str, Any] | None) -> Text:
    """Two lines about a span; fields the span did not carry are left out."""
    if not span:
        return Text("move to a span to see its details", style="dim")
    status = fmt.span_status(span.get("status"))
    text = Text()
    text.append(str(span.get("name") or fmt.DASH), style="bold")
    kind = str(span.get("kind") or "").removeprefix("SPAN_KIND_").lower()
    head = [kind, fmt.span_duration(span.get("start_ns"), span.get("end_ns"))]
    text.append("  " + "  ".join(part for part in head if part), style="dim")
    text.append("  ")
    text.append(status, style=palette.ALARM if status == "ERROR" else "")
    if span.get("status_message"):
        text.append(f": {span['status_message']}")

    facts = [("service", span.get("service"))]
    model, requested = span_model(span), span.get("model")
    if model and requested and requested != model:
        model = f"{requested} → {model}"
    facts += [
        ("model", model),
        ("operation", span.get("operation")),
        ("provider", span.get("provider")),
        ("tokens", fmt.tokens(span.get("input_tokens"), span.get("output_tokens"))),
    ]
    if fmt.is_number(span.get("ttft_s")):
        facts.append(("first token", fmt.seconds(span["ttft_s"])))
    scores = fmt.mapping(span.get("scores"))
    facts += [(name, fmt.number(value)) for name, value in scores.items()]

    text.append("\n")
    shown = [(label, value) for label, value in facts if value]
    for index, (label, value) in enumerate(shown):
        if index:
            text.append("  ")
        text.append(f"{label} ", style="dim")
        text.append(str(value))
    return text


class SpanDetail(QuietStatic):
    """Details of the span under the cursor in the span tree."""

    def show_span(self, span: dict[str, Any] | None) -> bool:
        return self.show(detail_text(span))
