"""The per-service overview (traffic, errors, latency) that GET /api/overview returns."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime
from typing import Any

from proveai_agent.config import Config
from proveai_agent.watch import schemes
from proveai_agent.watch.promql import MetricsSource, SourceError, matrix, vector
from proveai_agent.watch.schemes import Scheme

logger = logging.getLogger(__name__)

WINDOW = "5m"
# The request rate is over the last minute: over 5 minutes it would ramp up for the first
# five minutes of a new service, since rate() divides what it saw by the whole window.
RATE_WINDOW = "1m"
QUANTILES = (("p50_s", 0.5), ("p95_s", 0.95), ("p99_s", 0.99))
SERIES_POINTS = 120
MIN_STEP_S = 15
PROMETHEUS_RETENTION_S = Config.prometheus_retention_s


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
    """Traffic, error ratio and latency per service over the last 5 minutes, with series.

    The numbers are read from Prometheus; from VictoriaMetrics when `range_s` reaches
    past Prometheus' retention, when Prometheus is down, or when it holds no span
    metrics. Both sources are asked which spanmetrics naming they hold, so that the
    answer reports the state of each. None means no data, never zero: a service with
    traffic and no error series has an error ratio of 0.0, one without traffic has none.

    Args:
        prometheus: the Prometheus source, or None when there is none.
        victoriametrics: the VictoriaMetrics source, or None when there is none.
        now: the time the overview is for, epoch seconds.
        range_s: how far back the series reach.
        retention_s: Prometheus' retention.

    Returns:
        The /api/overview document: `at`, `sources`, `spanmetrics`, `services`.
    """
    order = _reading_order(prometheus, victoriametrics, range_s, retention_s)
    found = await asyncio.gather(
        *(schemes.detect(s, now, lookback_s=max(range_s, 300)) for s in order),
        return_exceptions=True,
    )
    scheme: Scheme | None = None
    services: list[dict[str, Any]] = []
    for source, detected in zip(order, found, strict=True):
        if not isinstance(detected, Scheme):
            continue
        try:
            services = await _services(source, detected, now, range_s)
        except SourceError as exc:
            logger.debug("overview from %s failed: %s", source.name, exc)
            continue
        scheme = detected
        break
    return {
        "at": rfc3339(now),
        "sources": {
            "prometheus": _status(prometheus),
            "victoriametrics": _status(victoriametrics),
        },
        "spanmetrics": scheme.name if scheme else None,
        "services": services,
    }


ENTRY_KINDS = 'span_kind=~"SPAN_KIND_SERVER|SPAN_KIND_CONSUMER"'


def _queries(scheme: Scheme) -> dict[str, str]:
    """Per service: its requests are its entry spans (server or consumer kind); a service
    without any, such as a batch job or an agent started in-process, counts all its spans."""
    by = scheme.service_label
    entry = f"{scheme.calls}{{{ENTRY_KINDS}}}"

    def per_service(
        metric: str, entry_metric: str, extra_by: str = "", window: str = WINDOW
    ) -> str:
        group = f"{by}{extra_by}"
        return (
            f"sum by ({group}) (rate({entry_metric}[{window}]))"
            f" or sum by ({group}) (rate({metric}[{window}]))"
        )

    out = {
        "rate_rps": per_service(scheme.calls, entry, window=RATE_WINDOW),
        "calls_rps": per_service(scheme.calls, entry),
        # A service with entry spans but no error series among them has 0 errors there.
        "errors_rps": (
            f"sum by ({by}) (rate({scheme.errors(ENTRY_KINDS)}[{WINDOW}]))"
            f" or 0 * sum by ({by}) (rate({entry}[{WINDOW}]))"
            f" or sum by ({by}) (rate({scheme.errors()}[{WINDOW}]))"
        ),
    }
    if scheme.duration_bucket:
        bucket = scheme.duration_bucket
        for field, q in QUANTILES:
            out[field] = (
                f"histogram_quantile({q}, "
                f"{per_service(bucket, f'{bucket}{{{ENTRY_KINDS}}}', ', le')})"
            )
    return out


async def _services(
    source: MetricsSource, scheme: Scheme, now: float, range_s: int
) -> list[dict[str, Any]]:
    labels = (scheme.service_label,)
    queries = _queries(scheme)
    step = max(MIN_STEP_S, math.ceil(range_s / SERIES_POINTS))
    start = now - range_s
    series_fields = [f for f in ("rate_rps", "p95_s") if f in queries]

    instant, ranged = await asyncio.gather(
        asyncio.gather(*(source.query(q, now) for q in queries.values())),
        asyncio.gather(
            *(source.query_range(queries[f], start, now, step) for f in series_fields)
        ),
    )
    values = {f: vector(r, labels) for f, r in zip(queries, instant, strict=True)}
    series = {f: matrix(r, labels) for f, r in zip(series_fields, ranged, strict=True)}

    keys = set(values["rate_rps"]) | set(values["calls_rps"])
    for by_key in series.values():
        keys.update(by_key)

    services = []
    for key in sorted(keys):
        rate = values["rate_rps"].get(key)
        errors = values["errors_rps"].get(key)
        calls = values["calls_rps"].get(key)
        entry: dict[str, Any] = {
            "service": key[0],
            "rate_rps": rate,
            "error_ratio": (errors or 0.0) / calls if calls else None,
        }
        for field, _ in QUANTILES:
            entry[field] = _seconds(values.get(field, {}).get(key), scheme)
        entry["series"] = {
            "rate_rps": [[ts, x] for ts, x in series["rate_rps"].get(key, [])],
            "p95_s": [
                [ts, x * scheme.to_seconds] for ts, x in series.get("p95_s", {}).get(key, [])
            ],
        }
        services.append(entry)
    return services


def _seconds(value: float | None, scheme: Scheme) -> float | None:
    return None if value is None else value * scheme.to_seconds
