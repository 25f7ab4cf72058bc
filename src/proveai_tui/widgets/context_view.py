"""The case's context snapshot in full: scores, prompts, model outputs, retrieved chunks.

Texts are shown as the agent sent them (redacted where it redacts); a very long one is cut
after `MAX_TEXT` characters and says how much was left out.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.padding import Padding
from rich.text import Text

from proveai_tui import format as fmt
from proveai_tui.render import Pairs
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.span_detail import message_role, message_text

MAX_TEXT = 4000
MAX_ITEMS = 50
INDENT = 2


def cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}\n… {len(text) - MAX_TEXT:,} more characters not shown"


def span_names(case: dict[str, Any]) -> dict[str, str]:
    names = {}
    for trace in fmt.items(fmt.mapping(case.get("context_snapshot")).get("traces")):
        for span in fmt.items(fmt.mapping(trace).get("spans")):
            if isinstance(span, dict) and span.get("span_id"):
                names[str(span["span_id"])] = str(span.get("name") or fmt.DASH)
    return names


def trace_content(case: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    """Prompts, outputs and chunks carried by the snapshot's traces, for a snapshot that
    lists none of its own."""
    prompts: list[dict] = []
    outputs: list[dict] = []
    chunks: list[dict] = []
    for trace in fmt.items(fmt.mapping(case.get("context_snapshot")).get("traces")):
        for span in fmt.items(fmt.mapping(trace).get("spans")):
            if not isinstance(span, dict):
                continue
            for message in fmt.items(span.get("messages")):
                if isinstance(message, dict):
                    target = outputs if message.get("direction") == "output" else prompts
                    target.append({"span_id": span.get("span_id"), **message})
            for chunk in fmt.items(span.get("chunks")):
                if isinstance(chunk, dict):
                    chunks.append({"span_id": span.get("span_id"), **chunk})
    return prompts, outputs, chunks


def section(title: str, items: list[Any]) -> tuple[Text, str]:
    more = f", first {MAX_ITEMS} shown" if len(items) > MAX_ITEMS else ""
    heading = Text(f"{title} ({len(items)}{more})", style="bold")
    return heading, heading.plain


def context_view(case: dict[str, Any]) -> tuple[Group, str]:
    snapshot = fmt.mapping(case.get("context_snapshot"))
    names = span_names(case)
    prompts = [m for m in fmt.items(snapshot.get("prompts")) if isinstance(m, dict)]
    outputs = [m for m in fmt.items(snapshot.get("model_outputs")) if isinstance(m, dict)]
    chunks = [c for c in fmt.items(snapshot.get("retrieved_chunks")) if isinstance(c, dict)]
    if not (prompts or outputs or chunks):
        prompts, outputs, chunks = trace_content(case)
    parts: list[Any] = []
    plain: list[str] = []

    def add(renderable: Any, text: str, indent: int = 0) -> None:
        parts.append(Padding(renderable, (0, 0, 0, indent)) if indent else renderable)
        plain.append(text)

    scores = fmt.mapping(snapshot.get("eval_scores"))
    heading = Text("Scores", style="bold")
    add(heading, heading.plain)
    if scores:
        pairs = Pairs((str(k), fmt.number(v)) for k, v in scores.items())
        add(pairs, pairs.plain, INDENT)
    else:
        add(Text("none in the snapshot", style="dim"), "none in the snapshot", INDENT)

    for title, messages in (("Prompts", prompts), ("Model outputs", outputs)):
        heading, words = section(title, messages)
        add(heading, words)
        if not messages:
            add(Text("none in the snapshot", style="dim"), "none in the snapshot", INDENT)
        for message in messages[:MAX_ITEMS]:
            where = names.get(str(message.get("span_id")), "")
            head = Text(message_role(message), style="bold")
            if where:
                head.append(f" · span {where}", style="dim")
            add(head, head.plain, INDENT)
            text = cut(message_text(message)) or fmt.DASH
            add(Text(text), text, INDENT * 2)

    heading, words = section("Retrieved chunks", chunks)
    add(heading, words)
    if not chunks:
        add(Text("none in the snapshot", style="dim"), "none in the snapshot", INDENT)
    for chunk in chunks[:MAX_ITEMS]:
        head = Text(str(chunk.get("id") or fmt.DASH), style="bold")
        head.append(f" · score {fmt.number(chunk.get('score'))}")
        if chunk.get("source"):
            head.append(f" · {chunk['source']}", style="dim")
        where = names.get(str(chunk.get("span_id")), "")
        if where:
            head.append(f" · span {where}", style="dim")
        add(head, head.plain, INDENT)
        text = cut(str(chunk.get("content") or "")) or fmt.DASH
        add(Text(text), text, INDENT * 2)
    return Group(*parts), "\n".join(plain)


class ContextView(QuietStatic):
    """Everything the snapshot kept of what the model was asked, given and answered."""

    def show_case(self, case: dict[str, Any]) -> bool:
        view, plain = context_view(case)
        return self.show(view, key=plain, plain=plain)
