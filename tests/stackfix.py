"""Pytest fixtures that run real VictoriaMetrics and Prometheus for the integration tests.

Fixtures:
    vm: a running VictoriaMetrics (latency offset 1 s) as a `VMHandle`: `url`,
        `import_prometheus(text, timestamp_ms=None)` (returns once the data is
        queryable), `query(promql, at=None)` and `source()` (a MetricsSource).
    vm_factory: `vm_factory(latency_offset_s=1.0)` starts another VictoriaMetrics.
    prometheus_factory: `prometheus_factory(target, interval_s=1.0, key_file=None,
        remote_write_url=None, extra_targets=())` starts a Prometheus that scrapes
        `target` and remote-writes to `remote_write_url` (for example
        f"{vm.url}/api/v1/write"; without one, to a port where nothing listens),
        returning a `PrometheusHandle` (`url`, `source()`).

Helpers build backfill data: `counter_samples` and `histogram_samples` turn piecewise
constant rates into counter samples, `exposition` turns samples into text for
`VMHandle.import_prometheus`.

Each test that uses the fixtures is skipped, with the reason, when a binary is missing,
and every fixture stops what it started.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from proveai_agent.stack.native import MissingBinary, Prometheus, VictoriaMetrics, find_binary
from proveai_agent.watch.promql import MetricsSource

Sample = tuple[str, Mapping[str, str], float, float]
Segment = tuple[float, float, float]
Mix = Sequence[tuple[float, float]]


def _require(name: str, env: str, package: str) -> None:
    try:
        find_binary(name, env, package)
    except MissingBinary as exc:
        pytest.skip(str(exc))


def exposition(samples: Iterable[Sample]) -> str:
    """Prometheus text, `name{labels} value timestamp_ms`, from (name, labels, value, ts_s)."""
    lines = []
    for name, labels, value, ts in samples:
        inner = ",".join(f"{k}={json.dumps(str(v))}" for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{inner}}} {float(value)!r} {round(ts * 1000)}")
    return "\n".join(lines) + "\n"


def counter_samples(
    name: str,
    labels: Mapping[str, str],
    segments: Sequence[Segment],
    step_s: float = 15.0,
    start_value: float = 0.0,
) -> list[Sample]:
    """A counter growing at piecewise constant rates: segments of (start, end, per second),
    sampled every `step_s` from the first start to the last end."""
    first, last = segments[0][0], segments[-1][1]
    samples = []
    for i in range(round((last - first) / step_s) + 1):
        t = first + i * step_s
        value = start_value + sum(
            r * max(0.0, min(t, end) - start) for start, end, r in segments
        )
        samples.append((name, labels, value, t))
    return samples


def histogram_samples(
    base: str,
    labels: Mapping[str, str],
    segments: Sequence[tuple[float, float, Mix]],
    buckets: Sequence[float],
    step_s: float = 15.0,
) -> list[Sample]:
    """`base`_bucket/_sum/_count for segments of (start, end, [(per second, latency), ...]),
    latencies and bucket bounds in the histogram's own unit."""
    samples: list[Sample] = []
    for le in [*buckets, math.inf]:
        rates = [(s, e, sum(r for r, lat in mix if lat <= le)) for s, e, mix in segments]
        bound = "+Inf" if le == math.inf else f"{le:g}"
        samples += counter_samples(f"{base}_bucket", {**labels, "le": bound}, rates, step_s)
    sums = [(s, e, sum(r * lat for r, lat in mix)) for s, e, mix in segments]
    counts = [(s, e, sum(r for r, _ in mix)) for s, e, mix in segments]
    samples += counter_samples(f"{base}_sum", labels, sums, step_s)
    samples += counter_samples(f"{base}_count", labels, counts, step_s)
    return samples


def _get_json(url: str, params: Mapping[str, Any] | None = None, timeout: float = 5) -> Any:
    if params:
        url = f"{url}?{urllib.parse.urlencode(params, doseq=True)}"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


@dataclass
class VMHandle:
    """A running VictoriaMetrics: its URL and helpers to backfill it and read it."""

    process: VictoriaMetrics

    @property
    def url(self) -> str:
        return self.process.url

    def source(self, name: str = "victoriametrics", timeout_s: float = 5) -> MetricsSource:
        """A MetricsSource on this VictoriaMetrics (reported under `name`)."""
        return MetricsSource(name, self.url, timeout_s, victoriametrics=True)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query without the response cache: the raw result."""
        params: dict[str, Any] = {"query": promql, "nocache": 1}
        if at is not None:
            params["time"] = at
        return _get_json(f"{self.url}/api/v1/query", params)["data"]["result"]

    def import_prometheus(
        self, text: str, timestamp_ms: int | None = None, timeout_s: float = 10
    ) -> None:
        """Import Prometheus text (lines may carry their own timestamps) and wait until the
        last line is queryable. `timestamp_ms` applies to lines without a timestamp."""
        url = f"{self.url}/api/v1/import/prometheus"
        if timestamp_ms is not None:
            url += f"?timestamp={timestamp_ms}"
        request = urllib.request.Request(url, data=text.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            assert resp.status in (200, 204), resp.read()
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=timeout_s):
            pass
        self._wait_visible(text, timestamp_ms, timeout_s)

    def _wait_visible(self, text: str, timestamp_ms: int | None, timeout_s: float) -> None:
        last = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not last:
            return
        series, _, rest = last[-1].rpartition("}")
        if series:
            series += "}"
            parts = rest.split()
        else:
            series, *parts = last[-1].split()
        ts_ms = int(parts[1]) if len(parts) > 1 else timestamp_ms
        at = ts_ms / 1000 if ts_ms is not None else None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.query(series, at):
                return
            time.sleep(0.05)
        raise AssertionError(f"{series} not queryable {timeout_s}s after import")


@dataclass
class PrometheusHandle:
    """A running Prometheus: its URL and the process."""

    process: Prometheus

    @property
    def url(self) -> str:
        return self.process.url

    def source(self, timeout_s: float = 5) -> MetricsSource:
        return MetricsSource("prometheus", self.url, timeout_s)


@pytest.fixture
def vm_factory(tmp_path: Path) -> Iterator[Callable[..., VMHandle]]:
    """Start VictoriaMetrics instances on free ports; all are stopped after the test."""
    _require("victoria-metrics", "PROVEAI_VM_BIN", "victoria-metrics")
    started: list[VictoriaMetrics] = []

    def start(latency_offset_s: float = 1.0) -> VMHandle:
        process = VictoriaMetrics(
            tmp_path / f"vm{len(started)}", latency_offset_s=latency_offset_s
        )
        started.append(process)
        return VMHandle(process.start())

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def vm(vm_factory: Callable[..., VMHandle]) -> VMHandle:
    """A running VictoriaMetrics with a latency offset of 1 s."""
    return vm_factory()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusHandle]]:
    """Start Prometheus instances that scrape a target; all are stopped after the test."""
    _require("prometheus", "PROVEAI_PROMETHEUS_BIN", "prometheus")
    started: list[Prometheus] = []

    def start(
        target: str | None,
        interval_s: float = 1.0,
        key_file: Path | None = None,
        remote_write_url: str | None = None,
        extra_targets: Sequence[str] = (),
    ) -> PrometheusHandle:
        process = Prometheus(
            tmp_path / f"prometheus{len(started)}",
            remote_write_url=remote_write_url or "http://127.0.0.1:9/api/v1/write",
            flush_deadline_s=5.0 if remote_write_url else 0.5,
            agent_target=target,
            agent_key_file=key_file,
            scrape_interval_s=interval_s,
            extra_targets=extra_targets,
        )
        started.append(process)
        return PrometheusHandle(process.start())

    yield start
    for process in reversed(started):
        process.stop()


def promql(base: str, query: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query against Prometheus or VictoriaMetrics (nocache for the latter)."""
    params: dict[str, str] = {"query": query, "nocache": "1"}
    if at is not None:
        params["time"] = f"{at:.3f}"
    response = requests.get(f"{base}/api/v1/query", params=params, timeout=5)
    response.raise_for_status()
    return response.json()["data"]["result"]


def promql_scalar(base: str, query: str, at: float | None = None) -> float | None:
    """The first sample's value of an instant query, or None when it returned nothing."""
    result = promql(base, query, at)
    return float(result[0]["value"][1]) if result else None


async def wait_promql(base: str, query: str, expected: float, timeout_s: float = 30) -> float:
    """Poll an instant query until it equals `expected` (to 1e-9), without blocking the loop."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(promql_scalar, base, query)
        if value is not None and abs(value - expected) < 1e-9:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"{query} on {base} stayed {value}, expected {expected}")
