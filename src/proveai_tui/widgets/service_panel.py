"""A service's panel: traffic, errors, latency and GenAI quality, with their trends.

On a short screen (under 40 rows) a panel has two rows: rate, error, p95 with p50 and p99,
time to first token and output tokens a second, and the mean score of each evaluation in
its top border. On a tall one it has four, and every number that has a series has a trend
line beside it, the scores included.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Container
from textual.events import Resize

from proveai_tui import format as fmt
from proveai_tui import palette
from proveai_tui.widgets.metric import Metric, metric_text, score, tokens_rate
from proveai_tui.widgets.quiet_static import QuietStatic
from proveai_tui.widgets.spark import Spark, series_values, spark_line

PANEL_HEIGHT = 4
"""Rows of one panel on a short screen, borders included; the stylesheet agrees."""
TALL_PANEL_HEIGHT = 6
"""Rows of one panel on a tall screen (40 rows or more), borders included."""
SCORE_SPARK = 8
"""Cells of the trend after each score on the quality row."""
SPARK_FIELDS = {
    "rate": "rate_rps",
    "error": "error_ratio",
    "p95": "p95_s",
    "ttft": "ttft_p95_s",
    "tokens": "output_tokens_per_s",
}
"""Each trend line's class prefix and the series it draws."""


def case_note(cases: list[dict[str, Any]]) -> str:
    """The panel's subtitle: the service's most severe open case, or how many there are."""
    if not cases:
        return ""
    worst = min(cases, key=lambda c: fmt.SEVERITY_RANK.get(fmt.severity(c.get("severity")), 9))
    if len(cases) == 1:
        return f"{worst.get('id', fmt.DASH)} {fmt.severity(worst.get('severity'))}"
    return f"{len(cases)} open cases, worst {fmt.severity(worst.get('severity'))}"


def quality_pairs(numbers: dict[str, Any]) -> list[tuple[str, str]]:
    """(evaluation name, mean score) by name; one "quality no data" without evaluations."""
    quality = fmt.mapping(numbers.get("quality"))
    if not quality:
        return [("quality", fmt.NO_DATA)]
    return [(str(name), score(quality[name])) for name in sorted(quality)]


def quality_text(numbers: dict[str, Any], spark_width: int = SCORE_SPARK) -> Text:
    """The quality row: each evaluation's mean score followed by its trend."""
    quality = fmt.mapping(numbers.get("quality"))
    series = fmt.mapping(fmt.mapping(numbers.get("series")).get("quality"))
    text = metric_text([("quality", "")] if quality else [("quality", fmt.NO_DATA)])
    for index, name in enumerate(sorted(quality)):
        if index:
            text.append(" · ", style="dim")
        text.append_text(metric_text([(str(name), score(quality[name]))]))
        values = series_values(series.get(name))
        if any(v is not None for v in values):
            text.append(" " + spark_line(values, spark_width).strip(), style=palette.ACCENT)
    return text


def title_text(service: str, numbers: dict[str, Any] | None, with_quality: bool) -> Text:
    """The top border: the service, then its scores when the panel has no quality row."""
    text = Text(service, style="bold")
    if with_quality and numbers is not None:
        text.append("  ")
        text.append_text(metric_text(quality_pairs(numbers)))
    return text


class ServicePanel(Container):
    """Numbers from one entry of `/api/overview` services; nulls read "no data"."""

    def __init__(self, service: str) -> None:
        super().__init__(classes="service-panel")
        self.service = service
        self._numbers: dict[str, Any] | None = None
        self._title = Text()
        self._show_title()

    def compose(self) -> ComposeResult:
        yield Metric(classes="metric rate")
        yield Spark(classes="spark rate-spark")
        yield Metric(classes="metric tail error")
        yield Spark(classes="spark error-spark tall-only")
        yield Metric(classes="metric side ttft-side short-only")
        yield Metric(classes="metric p95")
        yield Spark(classes="spark p95-spark")
        yield Metric(classes="metric tail quantiles")
        yield Metric(classes="metric side tokens-side short-only")
        yield Metric(classes="metric ttft tall-only")
        yield Spark(classes="spark ttft-spark tall-only")
        yield Metric(classes="metric tail tokens tall-only")
        yield Spark(classes="spark tokens-spark tall-only")
        yield QuietStatic("", classes="quality tall-only")

    @property
    def tall(self) -> bool:
        """Whether the screen gives panels their tall layout."""
        return self.is_attached and self.screen.has_class("-tall")

    def show(self, numbers: dict[str, Any], cases: list[dict[str, Any]]) -> None:
        """Show one service's numbers and a note of its open cases."""
        self._numbers = numbers
        series = fmt.mapping(numbers.get("series"))

        def values(name: str, pairs: list[tuple[str, str]]) -> None:
            for widget in self.query(f".{name}").results(Metric):
                widget.show_values(pairs)

        ttft = [("ttft", fmt.seconds(numbers.get("ttft_p95_s")))]
        tokens = [("out", tokens_rate(numbers.get("output_tokens_per_s")))]
        values("rate", [("rate", fmt.rate(numbers.get("rate_rps")))])
        values("error", [("error", fmt.percent(numbers.get("error_ratio")))])
        values("p95", [("p95", fmt.seconds(numbers.get("p95_s")))])
        values(
            "quantiles",
            [
                ("p50", fmt.seconds(numbers.get("p50_s"))),
                ("p99", fmt.seconds(numbers.get("p99_s"))),
            ],
        )
        values("ttft-side", ttft)
        values("ttft", ttft)
        values("tokens-side", tokens)
        values("tokens", tokens)
        for name, field in SPARK_FIELDS.items():
            self.query_one(f".{name}-spark", Spark).set_values(series_values(series.get(field)))
        self.query_one(".quality", QuietStatic).show(quality_text(numbers))
        self._show_title()

        note = case_note(cases)
        if note != self.border_subtitle:
            self.border_subtitle = note

    def on_resize(self, event: Resize) -> None:
        self._show_title()

    def _show_title(self) -> None:
        """Set the top border only when it changes: every set repaints the panel."""
        title = title_text(self.service, self._numbers, with_quality=not self.tall)
        if title != self._title:
            self._title = title
            self.border_title = title
