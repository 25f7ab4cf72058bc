"""A service's live panel: request rate, error ratio and latency, with their recent trend."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from proveai_tui import format as fmt
from proveai_tui.widgets.metric import Metric
from proveai_tui.widgets.spark import Spark, series_values

PANEL_HEIGHT = 4
"""Rows of one panel, borders included; the stylesheet gives panels this height."""


def case_note(cases: list[dict[str, Any]]) -> str:
    """The panel's subtitle: the service's most severe open case, or how many there are."""
    if not cases:
        return ""
    worst = min(cases, key=lambda c: fmt.SEVERITY_RANK.get(fmt.severity(c.get("severity")), 9))
    if len(cases) == 1:
        return f"{worst.get('id', fmt.DASH)} {fmt.severity(worst.get('severity'))}"
    return f"{len(cases)} open cases, worst {fmt.severity(worst.get('severity'))}"


class ServicePanel(Vertical):
    """Numbers from one entry of `/api/overview` services; nulls read "no data"."""

    def __init__(self, service: str) -> None:
        super().__init__(classes="service-panel")
        self.service = service
        self.border_title = service

    def compose(self) -> ComposeResult:
        with Horizontal(classes="panel-row"):
            yield Metric(classes="metric rate")
            yield Spark(classes="spark rate-spark")
            yield Metric(classes="metric tail error")
        with Horizontal(classes="panel-row"):
            yield Metric(classes="metric p95")
            yield Spark(classes="spark p95-spark")
            yield Metric(classes="metric tail quantiles")

    def show(self, numbers: dict[str, Any], cases: list[dict[str, Any]]) -> None:
        """Show one service's numbers and a note of its open cases."""
        series = fmt.mapping(numbers.get("series"))
        self.query_one(".rate", Metric).show_values(
            [("rate", fmt.rate(numbers.get("rate_rps")))]
        )
        self.query_one(".error", Metric).show_values(
            [("error", fmt.percent(numbers.get("error_ratio")))]
        )
        self.query_one(".p95", Metric).show_values([("p95", fmt.seconds(numbers.get("p95_s")))])
        self.query_one(".quantiles", Metric).show_values(
            [
                ("p50", fmt.seconds(numbers.get("p50_s"))),
                ("p99", fmt.seconds(numbers.get("p99_s"))),
            ]
        )
        self.query_one(".rate-spark", Spark).set_values(series_values(series.get("rate_rps")))
        self.query_one(".p95-spark", Spark).set_values(series_values(series.get("p95_s")))

        note = case_note(cases)
        if note != self.border_subtitle:
            self.border_subtitle = note
