"""The per-service overview (traffic, errors, latency, GenAI quality) of GET /api/overview."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime
from typing import Any

from proveai_agent.config import Config
from proveai_agent.watch import schemes
from proveai_agent.watch.promql import Labels, MetricsSource, SourceError, matrix, vector
from proveai_agent.watch.schemes import Scheme

logger = logging.getLogger(__name__)

WINDOW_S = 300
# The request rate is over the last minute: over 5 minutes it would ramp up for the first
# five minutes of a new service, since rate() divides what it saw by the whole window.
RATE_WINDOW_S = 60
QUANTILES = (("p50_s", 0.5), ("p95_s", 0.95), ("p99_s", 0.99))
SERIES_POINTS = 120
MIN_STEP_S = 15
PROMETHEUS_RETENTION_S = Config.prometheus_retention_s

TTFT = "llm_gen_ai_time_to_first_token_seconds"
TOKENS = "llm_gen_ai_tokens_total"
SCORE = "llm_gen_ai_evaluation_score"
EVALUATION_LABEL = "gen_ai_evaluation_name"
SERIES_FIELDS = ("rate_rps", "error_ratio", "p95_s", "ttft_p95_s", "output_tokens_per_s")
"""The fields that come with a series, in the order they are asked for."""


def rfc3339(ts: float) -> str:
    """Epoch seconds as an RFC 3339 UTC timestamp, e.g. 2025-01-31T12:00:00.000Z."""
    return (
        datetime.fromtimestamp(ts, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _status(source: MetricsSource | None) -> dict[str, Any]:
    if source is None:
        return {"up": False, "error": "not configured"}
    return source.status()


def _reading_order(
    prometheus: MetricsSource | None,
    victoriametrics: MetricsSource | None,
    range_s: int,
    retention_s: int,
) -> list[MetricsSource]:
    """Prometheus first, unless the range reaches past its retention."""
    if range_s > retention_s:
        order = [victoriametrics, prometheus]
    else:
        order = [prometheus, victoriametrics]
    return [s for s in order if s is not None]


async def overview(
    prometheus: MetricsSource | None,
    victoriametrics: MetricsSource | None,
    now: float,
    range_s: int = 1800,
    *,
    retention_s: int = PROMETHEUS_RETENTION_S,
) -> dict[str, Any]:
    """Traffic, errors, latency and GenAI quality per service over the last 5 minutes,
    with series over `range_s` for trend lines.

    The numbers are read from Prometheus; from VictoriaMetrics when `range_s` reaches
    past Prometheus' retention, when Prometheus is down, or when it holds no span
    metrics. Both sources are asked which spanmetrics naming they hold, so that the
    answer reports the state of each. None means no data, never zero: a service with
    traffic and no error series has an error ratio of 0.0, one without traffic has none;
    a service that reported no time to first token, no tokens or no scores has None there.

    Args:
        prometheus: the Prometheus source, or None when there is none.
        victoriametrics: the VictoriaMetrics source, or None when there is none.
        now: the time the overview is for, epoch seconds.
        range_s: how far back the series reach.
        retention_s: Prometheus' retention.

    Returns:
        The /api/overview document: `at`, `sources`, `spanmetrics`, `read_from` (the
        source that answered), `range_s`, `step_s` (seconds between series points) and
        `services`. Each service has `rate_rps`, `error_ratio`, `p50_s`, `p95_s`,
        `p99_s`, `ttft_p95_s`, `output_tokens_per_s`, `quality` ({evaluation name: mean
        score}, empty without evaluations) and `series` (`[[ts, x], ...]` for
        rate_rps, error_ratio, p95_s, ttft_p95_s, output_tokens_per_s, and
        `quality`: {evaluation name: points}).
    """
    order = _reading_order(prometheus, victoriametrics, range_s, retention_s)
    found = await asyncio.gather(
        *(schemes.detect(s, now, lookback_s=max(range_s, 300)) for s in order),
        return_exceptions=True,
    )
    scheme: Scheme | None = None
    read_from: str | None = None
    services: list[dict[str, Any]] = []
    for source, detected in zip(order, found, strict=True):
        if not isinstance(detected, Scheme):
            continue
        try:
            services = await _services(source, detected, now, range_s)
        except SourceError as exc:
            logger.debug("overview from %s failed: %s", source.name, exc)
            continue
        scheme, read_from = detected, source.name
        break
    return {
        "at": rfc3339(now),
        "sources": {
            "prometheus": _status(prometheus),
            "victoriametrics": _status(victoriametrics),
        },
        "spanmetrics": scheme.name if scheme else None,
        "read_from": read_from,
        "range_s": range_s,
        "step_s": series_step(range_s),
        "services": services,
    }


def series_step(range_s: int) -> int:
    """Seconds between two points of a series: about SERIES_POINTS points whatever the range,
    never closer than MIN_STEP_S (a 15 m range has a point every 15 s, 7 d one every 84 m)."""
    return max(MIN_STEP_S, math.ceil(range_s / SERIES_POINTS))


ENTRY_KINDS = 'span_kind=~"SPAN_KIND_SERVER|SPAN_KIND_CONSUMER"'


def _duration(seconds: int) -> str:
    """Seconds as PromQL writes a duration, in its largest whole unit: 300 is `5m`, as the
    recording rules write it, so that a rule and the query it records read the same."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _queries(scheme: Scheme, rate_window_s: int, window_s: int) -> dict[str, str]:
    """Per service: its requests are its entry spans (server or consumer kind); a service
    without any, such as a batch job or an agent started in-process, counts all its spans.

    The GenAI fields read the agent's own series (`llm_gen_ai_*`), whichever naming the
    span metrics have: time to first token as the p95 of its histogram, output tokens per
    second summed over the service's models, and the mean score of each evaluation name.
    """
    by = scheme.service_label
    entry = f"{scheme.calls}{{{ENTRY_KINDS}}}"
    window, rate_window = _duration(window_s), _duration(rate_window_s)

    def per_service(metric: str, entry_metric: str, extra_by: str = "", w: str = window) -> str:
        group = f"{by}{extra_by}"
        return (
            f"sum by ({group}) (rate({entry_metric}[{w}]))"
            f" or sum by ({group}) (rate({metric}[{w}]))"
        )

    # A service with entry spans but no error series among them has 0 errors there.
    errors = (
        f"sum by ({by}) (rate({scheme.errors(ENTRY_KINDS)}[{window}]))"
        f" or 0 * sum by ({by}) (rate({entry}[{window}]))"
        f" or sum by ({by}) (rate({scheme.errors()}[{window}]))"
    )
    calls = per_service(scheme.calls, entry)
    out = {
        "rate_rps": per_service(scheme.calls, entry, w=rate_window),
        "calls_rps": calls,
        "errors_rps": errors,
        "error_ratio": f"({errors}) / ({calls})",
    }
    if scheme.duration_bucket:
        bucket = scheme.duration_bucket
        for field, q in QUANTILES:
            out[field] = (
                f"histogram_quantile({q}, "
                f"{per_service(bucket, f'{bucket}{{{ENTRY_KINDS}}}', ', le')})"
            )
    out["ttft_p95_s"] = (
        f"histogram_quantile(0.95, sum by (service_name, le) (rate({TTFT}_bucket[{window}])))"
    )
    out["output_tokens_per_s"] = (
        f'sum by (service_name) (rate({TOKENS}{{gen_ai_token_type="output"}}[{window}]))'
    )
    scores = f"service_name, {EVALUATION_LABEL}"
    out["quality"] = (
        f"sum by ({scores}) (increase({SCORE}_sum[{window}]))"
        f" / sum by ({scores}) (increase({SCORE}_count[{window}]))"
    )
    return out


async def _services(
    source: MetricsSource, scheme: Scheme, now: float, range_s: int
) -> list[dict[str, Any]]:
    """Every service seen in the instant numbers or in the series, sorted by name.

    The numbers cover the last 5 minutes (the request rate the last minute). Each point of
    a series covers the step before it, or those windows when the step is shorter, so that
    a 7-day trend with a point every 84 minutes shows the mean of each 84 minutes.
    """
    labels = (scheme.service_label,)
    step = series_step(range_s)
    instant_q = _queries(scheme, RATE_WINDOW_S, WINDOW_S)
    del instant_q["error_ratio"]  # the number is errors over calls, 0 errors without series
    ranged_q = _queries(scheme, max(RATE_WINDOW_S, step), max(WINDOW_S, step))
    series_fields = [f for f in SERIES_FIELDS if f in ranged_q]
    start = now - range_s

    instant, ranged, score_series = await asyncio.gather(
        asyncio.gather(*(source.query(q, now) for q in instant_q.values())),
        asyncio.gather(
            *(source.query_range(ranged_q[f], start, now, step) for f in series_fields)
        ),
        source.query_range(ranged_q["quality"], start, now, step),
    )
    answers = dict(zip(instant_q, instant, strict=True))
    quality_labels = ("service_name", EVALUATION_LABEL)
    quality = vector(answers.pop("quality"), quality_labels)
    quality_series = matrix(score_series, quality_labels)
    values = {f: vector(r, labels) for f, r in answers.items()}
    series = {f: matrix(r, labels) for f, r in zip(series_fields, ranged, strict=True)}

    keys = set(values["rate_rps"]) | set(values["calls_rps"])
    for field in ("ttft_p95_s", "output_tokens_per_s"):
        keys.update(values[field])
    for by_key in series.values():
        keys.update(by_key)
    keys.update((service,) for service, _ in (*quality, *quality_series))

    services = []
    for key in sorted(keys):
        calls = values["calls_rps"].get(key)
        errors = values["errors_rps"].get(key)
        entry: dict[str, Any] = {
            "service": key[0],
            "rate_rps": values["rate_rps"].get(key),
            "error_ratio": (errors or 0.0) / calls if calls else None,
        }
        for field, _ in QUANTILES:
            entry[field] = _seconds(values.get(field, {}).get(key), scheme)
        entry["ttft_p95_s"] = values["ttft_p95_s"].get(key)
        entry["output_tokens_per_s"] = values["output_tokens_per_s"].get(key)
        names = sorted(
            {name for service, name in (*quality, *quality_series) if service == key[0]}
        )
        entry["quality"] = {name: quality.get((key[0], name)) for name in names}
        entry["series"] = _series(series, key, scheme)
        entry["series"]["quality"] = {
            name: _points(quality_series.get((key[0], name), [])) for name in names
        }
        services.append(entry)
    return services


def _series(
    series: dict[str, dict[Labels, list[tuple[float, float]]]], key: Labels, scheme: Scheme
) -> dict[str, Any]:
    """The service's series; span latencies in seconds whatever unit the histogram has."""
    out: dict[str, Any] = {}
    for field in SERIES_FIELDS:
        scale = scheme.to_seconds if field == "p95_s" else 1.0
        out[field] = _points(series.get(field, {}).get(key, []), scale)
    return out


def _points(points: list[tuple[float, float]], scale: float = 1.0) -> list[list[float]]:
    return [[ts, x * scale] for ts, x in points]


def _seconds(value: float | None, scheme: Scheme) -> float | None:
    return None if value is None else value * scheme.to_seconds
