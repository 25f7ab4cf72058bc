"""`proveai-agent report`: the compliance report of a period, as Markdown.

Requests processed, quality scores, incidents by failure class, time to remediate (mean,
p50, p90), fixes verified, every endpoint the agent was configured to send to or read from
(all on the site's own machines), and the audit chain's head hash, so that the report and
the audit log can be checked against each other.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from .config import Config


def parse_day(text: str) -> float:
    """A date (YYYY-MM-DD, UTC midnight) or an RFC 3339 time as epoch seconds."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile by linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def endpoints(config: Config) -> list[tuple[str, str]]:
    """What the agent talks to: (role, URL), from its configuration."""
    found = [("agent API and OTLP/HTTP (listens)", f"http://{config.listen}")]
    if config.prometheus_url:
        found.append(("Prometheus (reads)", config.prometheus_url))
    if config.victoriametrics_url:
        found.append(("VictoriaMetrics (reads)", config.victoriametrics_url))
    return found


def render(
    since: float,
    until: float,
    requests: dict[str, int],
    spans: int,
    scores: dict[tuple[str, str], tuple[float, int]],
    cases: list[dict[str, Any]],
    head: dict[str, Any] | None,
    config: Config,
) -> str:
    """The report's Markdown from the period's figures."""
    lines = [
        "# Prove AI compliance report",
        "",
        f"Period: {_day(since)} to {_day(until)}. "
        f"Generated {_day(datetime.now(UTC).timestamp())}.",
        "",
        "## Requests processed",
        "",
        "| service | requests |",
        "| --- | ---: |",
    ]
    lines += [f"| {service} | {count} |" for service, count in requests.items()]
    lines += [f"| all | {sum(requests.values())} |", "", f"Spans stored: {spans}.", ""]

    lines += ["## Quality scores", "", "| service | evaluation | mean | scores |"]
    lines += ["| --- | --- | ---: | ---: |"]
    lines += [
        f"| {service} | {name} | {mean:.3f} | {count} |"
        for (service, name), (mean, count) in scores.items()
    ] or ["| – | – | – | 0 |"]

    opened = [c for c in cases if since <= parse_day(c["opened_at"]) < until]
    by_class = Counter(c.get("failure_class") or "unclassified" for c in opened)
    lines += ["", "## Incidents by failure class", "", "| class | cases |", "| --- | ---: |"]
    lines += [f"| {name} | {count} |" for name, count in sorted(by_class.items())] or [
        "| – | 0 |"
    ]

    resolved = [
        c
        for c in cases
        if c.get("resolution")
        and c["resolution"].get("verified_at")
        and since <= parse_day(c["resolution"]["verified_at"]) < until
    ]
    times = [
        float(c["resolution"]["time_to_remediate_s"])
        for c in resolved
        if c["resolution"].get("time_to_remediate_s") is not None
    ]
    lines += ["", "## Time to remediate", ""]
    if times:
        lines += [
            f"Fixes verified: {len(resolved)}. Time to remediate: mean "
            f"{statistics.fmean(times) / 60:.1f} min, "
            f"p50 {percentile(times, 50) / 60:.1f} min, "
            f"p90 {percentile(times, 90) / 60:.1f} min.",
        ]
    else:
        lines += ["Fixes verified: 0."]
    lines += [
        "",
        "| case | class | root cause | verified | minutes |",
        "| --- | --- | --- | --- | ---: |",
    ]
    lines += [
        f"| {c['id']} | {c.get('failure_class')} | {c['resolution'].get('root_cause')} | "
        f"{c['resolution']['verified_at']} | "
        f"{(c['resolution'].get('time_to_remediate_s') or 0) / 60:.1f} |"
        for c in resolved
    ]

    lines += ["", "## Where telemetry went", "", "| endpoint | URL |", "| --- | --- |"]
    lines += [f"| {role} | {url} |" for role, url in endpoints(config)]
    lines += [
        "",
        "Nothing else: the agent sends no telemetry, checks for no updates and downloads no",
        "models.",
        "",
        "## Audit log",
        "",
    ]
    if head is None:
        lines.append("The audit log is empty.")
    else:
        lines.append(
            f"Head: record {head['seq']}, hash `{head['hash']}` "
            "(`proveai-agent audit verify` checks the chain up to it)."
        )
    return "\n".join(lines) + "\n"
