"""PromQL access to Prometheus or VictoriaMetrics, off the event loop, with its reachability."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

logger = logging.getLogger(__name__)

Labels = tuple[str, ...]

_source_request = threading.local()
_URLLIB3_POOL = logging.getLogger("urllib3.connectionpool")
_BAD_QUERY = re.compile(r"HTTP Status Code (400|422)\b")
"""How prometheus-api-client reports a query the source refused as bad."""


def _refused(exc: BaseException) -> bool:
    """Whether a request failed because nothing listened (the connection was refused),
    found through the exceptions that requests and urllib3 wrap around it."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen or len(seen) > 32:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return True
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked += list(current.args)
        todo.extend(e for e in linked if isinstance(e, BaseException))
    return False


class _RetryWarnings(logging.Filter):
    """Lowers urllib3's warning of each retry to debug for the requests of a source.

    A source that is down fails every query of every cycle; urllib3 would warn of each
    retry, while the source's own line already said once that it is down.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not getattr(_source_request, "active", False):
            return True
        if not _URLLIB3_POOL.isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_URLLIB3_POOL.addFilter(_RetryWarnings())


def _as_source_request(fn: Any, *args: Any, **kwargs: Any) -> Any:
    _source_request.active = True
    try:
        return fn(*args, **kwargs)
    finally:
        _source_request.active = False


class SourceError(Exception):
    """A query that the source did not answer, with the query and the source's message."""

    def __init__(self, source: str, query: str, message: str) -> None:
        super().__init__(f"{source}: query {query!r} failed: {message}")
        self.source = source
        self.query = query
        self.message = message


class MetricsSource:
    """One Prometheus-compatible endpoint that the watcher reads through PromQL.

    Every request runs in a worker thread, so a slow or unreachable source never
    blocks the event loop. `up` and `error` describe the last request: `error` holds
    the exact query and the full message from the other side. A change of state is
    logged at info once; a source that stays down is not logged again.

    A source that fails is backed off: for `backoff_s` after a failure, then twice that
    after the next, up to `backoff_max_s`, queries fail at once (SourceError) without a
    request, so an outage is not made worse by a request per query per cycle. The first
    request after the wait probes it; one answer ends the back-off. A query the source
    refused as bad (400, 422) says nothing about the source and is not backed off; nor is
    a connection refused, which costs the source nothing, so that a source that is not
    listening yet (started after the agent) is used from its first answer on.

    Args:
        name: "prometheus" or "victoriametrics" (also how it is reported).
        url: the base URL, e.g. http://127.0.0.1:9090.
        timeout_s: the timeout of each request.
        headers: extra request headers, e.g. an API key for a source behind Envoy.
        victoriametrics: whether the source is VictoriaMetrics (its response cache is
            then skipped with `nocache=1`); by default, whether `name` says so.
        backoff_s: the first wait after a failure; 0 sends every query (no back-off).
        backoff_max_s: the longest wait, however long the outage.
        clock: monotonic seconds; replaceable so a test need not wait.
    """

    def __init__(
        self,
        name: str,
        url: str,
        timeout_s: float = 5,
        *,
        headers: Mapping[str, str] | None = None,
        victoriametrics: bool | None = None,
        backoff_s: float = 0.0,
        backoff_max_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.is_victoriametrics = (
            victoriametrics if victoriametrics is not None else "victoria" in name.lower()
        )
        self.up = False
        self.error: str | None = None
        self._known = False
        self._changed_by = -math.inf
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self._failures = 0
        """Failed tries in a row, counting one per back-off round."""
        self._retry_at = -math.inf
        self._backed_off_at = -math.inf
        self.skipped = 0
        """Queries failed without a request because the source was backed off."""
        self._client = PrometheusConnect(
            url=self.url,
            headers=dict(headers) if headers else None,
            retry=Retry(
                total=1, backoff_factor=0.1, status_forcelist=(), raise_on_status=False
            ),
            timeout=timeout_s,
        )

    def status(self) -> dict[str, Any]:
        """`{"up": bool, "error": str or None}` as the overview reports it."""
        return {"up": self.up, "error": self.error}

    def _params(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        params: dict[str, Any] = dict(extra or {})
        if self.is_victoriametrics:
            params["nocache"] = "1"
        return params

    async def query(self, promql: str, at: float) -> list[dict[str, Any]]:
        """An instant query evaluated at `at` (epoch seconds): the raw result vector."""
        params = self._params({"time": _ts(at)})
        return await self._call(promql, self._client.custom_query, promql, params=params)

    async def query_range(
        self, promql: str, start: float, end: float, step_s: float
    ) -> list[dict[str, Any]]:
        """A range query from `start` to `end` (epoch seconds): the raw result matrix."""
        return await self._call(
            promql,
            self._client.custom_query_range,
            promql,
            start_time=datetime.fromtimestamp(start, UTC),
            end_time=datetime.fromtimestamp(end, UTC),
            step=_ts(step_s),
            params=self._params(),
        )

    async def metric_names(self, match: str, start: float, end: float) -> list[str]:
        """Names of the metrics matching the series selector `match` between start and end."""
        params = self._params({"match[]": match, "start": _ts(start), "end": _ts(end)})
        described = f"label __name__ values, match[]={match}"
        names = await self._call(
            described, self._client.get_label_values, label_name="__name__", params=params
        )
        return [str(n) for n in names]

    async def _call(self, described: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        started = self._clock()
        if started < self._retry_at:
            self.skipped += 1
            wait = self._retry_at - started
            raise SourceError(
                self.name, described, f"not sent: the source is down, next try in {wait:.1f} s"
            )
        try:
            result = await asyncio.to_thread(_as_source_request, fn, *args, **kwargs)
        except (requests.RequestException, PrometheusApiClientException, ValueError) as exc:
            self._mark_down(described, f"{type(exc).__name__}: {exc}", started)
            if not _BAD_QUERY.search(str(exc)) and not _refused(exc):
                self._back_off(started)
            raise SourceError(self.name, described, str(exc)) from exc
        except (KeyError, TypeError) as exc:
            message = f"unexpected answer: {type(exc).__name__}: {exc}"
            self._mark_down(described, message, started)
            self._back_off(started)
            raise SourceError(self.name, described, f"unexpected answer: {exc}") from exc
        self._mark_up(started)
        return result

    def _back_off(self, started: float) -> None:
        """Wait longer before the next try; requests sent before the last decision (in
        flight together with the one that made it) do not lengthen the wait again."""
        if self.backoff_s <= 0 or started < self._backed_off_at:
            return
        now = self._clock()
        self._failures += 1
        wait = min(self.backoff_s * 2 ** min(self._failures - 1, 60), self.backoff_max_s)
        self._retry_at, self._backed_off_at = now + wait, now
        logger.debug("%s: next try in %.1f s", self.name, wait)

    def _mark_down(self, described: str, message: str, started: float) -> None:
        """A failed request marks the source down, unless it was sent before the request
        that last found it up: a query still timing out from an outage that is over says
        nothing new, and would make the state flap."""
        error = f"query {described!r} failed: {message}"
        if self.up and started < self._changed_by:
            logger.debug("%s: a request sent before it was up failed: %s", self.name, error)
            return
        if self.up or not self._known:
            logger.info("%s at %s is down: %s", self.name, self.url, error)
            self._changed_by = started
        else:
            logger.debug("%s at %s still down: %s", self.name, self.url, error)
        self.up, self.error, self._known = False, error, True

    def _mark_up(self, started: float) -> None:
        if started >= self._backed_off_at:
            self._failures, self._retry_at = 0, -math.inf
        if not self.up and started < self._changed_by:
            return  # sent before the request that found the source down
        if not self.up:
            logger.info("%s at %s is up", self.name, self.url)
            self._changed_by = started
        self.up, self.error, self._known = True, None, True

    def close(self) -> None:
        self._client.close()


def _ts(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def to_float(value: Any) -> float | None:
    """A sample value as a float, None for NaN or infinities (no data, never zero)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def vector(result: Iterable[dict[str, Any]], labels: Labels) -> dict[Labels, float | None]:
    """An instant result keyed by the values of `labels` (missing labels are "")."""
    return {
        tuple(item["metric"].get(name, "") for name in labels): to_float(item["value"][1])
        for item in result
    }


def matrix(
    result: Iterable[dict[str, Any]], labels: Labels
) -> dict[Labels, list[tuple[float, float]]]:
    """A range result keyed by the values of `labels`, NaN points left out."""
    out: dict[Labels, list[tuple[float, float]]] = {}
    for item in result:
        key = tuple(item["metric"].get(name, "") for name in labels)
        points = out.setdefault(key, [])
        for ts, raw in item["values"]:
            value = to_float(raw)
            if value is not None:
                points.append((float(ts), value))
    return out


def quote(value: str) -> str:
    """A label value as a PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
