"""The signals of a case: what each detector saw, in its own words and with its numbers."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.padding import Padding
from rich.text import Text

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.render import Pairs
from proveai_tui.widgets.quiet_static import QuietStatic

INDENT = 4

NAMED = ("current", "baseline_median", "baseline", "threshold")
"""Evidence values in the unit of the signal's statistic, in this order."""
LABELS = {"baseline_median": "baseline median"}
LEFT_OUT = frozenset(
    {
        "statistic",
        "window_s",
        "traffic",
        "query",
        "queries",
        "statistics",
        "baseline_mad",
        "baseline_points",
        "ratio_to_threshold",
        "baseline_s",
        "baseline_start",
        "baseline_end",
        "source",
        "spanmetrics",
    }
)
"""Evidence keys that are shown otherwise, or that only the agent's own reasoning needs."""


def statistic_value(statistic: str, value: Any) -> str:
    """A value of the statistic in its unit: seconds for `*_s`, a percentage for ratios."""
    if not fmt.is_number(value):
        return fmt.number(value)
    if statistic.endswith("_s"):
        return fmt.seconds(value, missing=fmt.DASH)
    if statistic.endswith("ratio"):
        return fmt.percent(value, missing=fmt.DASH)
    return fmt.number(value)


def traffic_text(traffic: dict[str, Any]) -> str:
    """Calls, rate and errors in the current window, e.g. "252 calls, 4.2 rps, 30 errors"."""
    parts = []
    if fmt.is_number(traffic.get("calls")):
        parts.append(f"{fmt.count(traffic['calls'])} calls")
    if fmt.is_number(traffic.get("rps")):
        parts.append(fmt.rate(traffic["rps"]))
    if fmt.is_number(traffic.get("errors")):
        parts.append(f"{fmt.count(traffic['errors'])} errors")
    return ", ".join(parts)


def evidence_numbers(evidence: dict[str, Any]) -> Pairs:
    """The numbers that matter, as `label value` pairs that wrap between pairs.

    Nested values are never written out; plain values the console does not know are added
    after the known ones as `key value`.
    """
    statistic = str(evidence.get("statistic") or "")
    pairs = [("statistic", statistic)] if statistic else []
    for key in NAMED:
        if key in evidence:
            pairs.append((LABELS.get(key, key), statistic_value(statistic, evidence[key])))
    if "window_s" in evidence:
        pairs.append(("window", fmt.window(evidence["window_s"])))
    if traffic := traffic_text(fmt.mapping(evidence.get("traffic"))):
        pairs.append(("traffic", traffic))
    for key, value in evidence.items():
        if key in LEFT_OUT or key in NAMED or isinstance(value, dict | list):
            continue
        pairs.append((key, fmt.number(value)))
    return Pairs(pairs)


def evidence_query(evidence: dict[str, Any]) -> str:
    """The PromQL that verifies the signal (and later its fix), or "" without one."""
    query = evidence.get("query")
    return f"query {query}" if isinstance(query, str) and query else ""


def signal_head(signal: dict[str, Any]) -> Text:
    """Severity, kind, class and where; wraps rather than cut any of them."""
    severity = fmt.severity(signal.get("severity"))
    where = str(signal.get("service") or fmt.DASH)
    if signal.get("span_name"):
        where += f" / {signal['span_name']}"
    text = Text()
    text.append(severity, style=palette.SEVERITY.get(severity, ""))
    text.append(f"  {signal.get('kind') or fmt.DASH}", style="bold")
    if signal.get("failure_class"):
        text.append(f"  {signal['failure_class']}")
    text.append(f"  {where}", style="dim")
    return text


def signals_view(signals: list[dict[str, Any]]) -> tuple[Group, str]:
    """Each signal: a head line, its summary, its numbers, and its query cut to one line."""
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
        numbers, query = evidence_numbers(evidence), evidence_query(evidence)
        if numbers.pairs:
            parts.append(Padding(numbers, (0, 0, 0, INDENT)))
            lines.append(numbers.plain)
        if query:
            cut = Text(query, style="dim", no_wrap=True, overflow="ellipsis")
            parts.append(Padding(cut, (0, 0, 0, INDENT)))
            lines.append(query)
    return Group(*parts), "\n".join(lines)


class SignalList(QuietStatic):
    """Every signal that opened or joined the case."""

    def show_signals(self, signals: list[dict[str, Any]]) -> bool:
        view, plain = signals_view(signals)
        return self.show(view, key=plain, plain=plain)
