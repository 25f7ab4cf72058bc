"""Time to first metric: seconds from a span's emission to its series in Prometheus.

Starts the agent and the native Prometheus (10 s scrape, as in production) and
VictoriaMetrics, then, several times, emits one span of a service never seen before with
the real OpenTelemetry SDK and polls Prometheus every 100 ms until the span's
`llm_traces_span_metrics_calls_total` series can be queried (first_metric_s) and until it
holds the span's count (first_value_s: a new series is exposed at zero for one scrape so
that increase() sees its first events).

With --through-envoy it then measures the stack's own path as well: the span goes to
Envoy's OTLP/HTTP listener with a key, on to the collector (built from stack/collector/),
whose span metrics Prometheus scrapes at the same interval, while the raw trace goes on to
an agent that derives no metrics itself (first_metric_envoy_s). The collector batches for
up to 1 s and flushes its span metrics every 5 s; like the agent it exposes a new series at
zero first, for one flush. That part is skipped, with the reason, when the collector cannot
be built.

    python bench/first_metric.py [--quick] [--scrape-interval S] [--through-envoy]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import KEY, start_agent
from proveai_agent.stack.native import MissingBinary, NativeStack, build_collector

ENVOY_KEY = "bench-envoy-" + secrets.token_hex(8)


def emit(url: str, service: str, key: str = KEY) -> float:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers={"X-API-Key": key})
        )
    )
    started = time.monotonic()
    with provider.get_tracer("first-metric").start_as_current_span("chat"):
        pass
    provider.shutdown()
    return started


def wait_series(prometheus: str, service: str, started: float, timeout_s: float) -> tuple:
    query = f'sum(llm_traces_span_metrics_calls_total{{service_name="{service}"}})'
    present = value = None
    while time.monotonic() - started < timeout_s:
        r = requests.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=5)
        result = r.json()["data"]["result"]
        if result and present is None:
            present = time.monotonic() - started
        if result and float(result[0]["value"][1]) >= 1:
            value = time.monotonic() - started
            break
        time.sleep(0.1)
    return present, value


def measure(
    stack: NativeStack, url: str, key: str, runs: int, interval: float, label: str
) -> tuple[list[float], list[float]]:
    """Emit `runs` spans to `url` one after another; the seconds until each one's series
    was present and until it held its count."""
    present: list[float] = []
    counted: list[float] = []
    time.sleep(interval)  # let Prometheus settle into its scrape rhythm
    print(f"{label}\n{'run':>4} {'first_metric_s':>15} {'first_value_s':>14}")
    for run in range(runs):
        service = f"first-metric-{run}-{int(time.time())}"
        started = emit(url, service, key)
        p, v = wait_series(stack.prometheus_url, service, started, 4 * interval + 10)
        print(
            f"{run:>4} {p if p is not None else float('nan'):>15.2f} "
            f"{v if v is not None else float('nan'):>14.2f}"
        )
        if p is not None:
            present.append(p)
        if v is not None:
            counted.append(v)
        # Waiting for the count ends just after a scrape: land the next span at an evenly
        # spread point of the scrape cycle instead, so the runs sample the whole cycle.
        time.sleep(interval * ((run + 1) / runs))
    return present, counted


def direct(work: Path, runs: int, interval: float) -> tuple[list[float], list[float]]:
    """The span straight to the agent, which derives the metrics Prometheus scrapes."""
    key_file = work / "scrape.key"
    key_file.write_text(KEY)
    agent = start_agent(data_dir=work)
    stack = NativeStack(
        work / "stack",
        agent_target=agent.url.removeprefix("http://"),
        agent_key_file=key_file,
        scrape_interval_s=interval,
    )
    try:
        stack.start()
        return measure(stack, agent.url, KEY, runs, interval, "agent directly")
    finally:
        stack.stop()
        agent.stop()


def through_envoy(
    work: Path, collector: Path, runs: int, interval: float
) -> tuple[list[float], list[float]]:
    """The span to Envoy, then the collector, whose span metrics Prometheus scrapes; the
    agent behind it stores the trace and derives nothing."""
    work.mkdir(parents=True, exist_ok=True)
    key_file = work / "scrape.key"
    key_file.write_text(KEY)
    config = work / "agent.toml"
    config.write_text("derive_metrics = false\n")
    agent = start_agent("--config", str(config), data_dir=work)
    stack = NativeStack(
        work / "stack",
        agent_target=agent.url.removeprefix("http://"),
        agent_key_file=key_file,
        scrape_interval_s=interval,
        collector_binary=collector,
        envoy={"ENVOY_API_KEYS": ENVOY_KEY},
    )
    try:
        stack.start()
        assert stack.envoy is not None
        otlp = stack.envoy.url("otlp_http")
        label = "through Envoy and the collector (span metrics flushed every 5 s)"
        return measure(stack, otlp, ENVOY_KEY, runs, interval, label)
    finally:
        stack.stop()
        agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three spans instead of eight")
    parser.add_argument("--scrape-interval", type=float, default=10.0)
    parser.add_argument(
        "--through-envoy",
        action="store_true",
        help="also send through Envoy and the collector (needs the collector build)",
    )
    args = parser.parse_args()
    runs = 3 if args.quick else 8
    interval = args.scrape_interval
    work = Path(tempfile.mkdtemp(prefix="proveai-first-metric-"))

    collector: Path | None = None
    if args.through_envoy:
        try:
            collector = build_collector()
        except MissingBinary as exc:
            print(f"through Envoy: not measured, the collector is not available: {exc}")

    present, counted = direct(work, runs, interval)
    headline = (
        f"first_metric_s={statistics.median(present):.2f} "
        f"first_metric_max_s={max(present):.2f} "
        f"first_value_s={statistics.median(counted):.2f}"
    )
    if collector is not None:
        e_present, e_counted = through_envoy(work / "envoy", collector, runs, interval)
        headline += (
            f" first_metric_envoy_s={statistics.median(e_present):.2f}"
            f" first_metric_envoy_max_s={max(e_present):.2f}"
            f" first_value_envoy_s={statistics.median(e_counted):.2f}"
        )
    print(f"scrape interval {interval:.0f} s; medians over {runs} spans")
    print(headline)


if __name__ == "__main__":
    main()
