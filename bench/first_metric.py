"""Time to first metric: seconds from a span's emission to its series in Prometheus.

Starts the agent and the native Prometheus (10 s scrape, as in production) and
VictoriaMetrics, then, several times, emits one span of a service never seen before with
the real OpenTelemetry SDK and polls Prometheus every 100 ms until the span's
`llm_traces_span_metrics_calls_total` series can be queried (first_metric_s) and until it
holds the span's count (first_value_s: a new series is exposed at zero for one scrape so
that increase() sees its first events).

    python bench/first_metric.py [--quick] [--scrape-interval S]
"""

from __future__ import annotations

import argparse
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
from proveai_agent.stack.native import NativeStack


def emit(url: str, service: str) -> float:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers={"X-API-Key": KEY})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three spans instead of eight")
    parser.add_argument("--scrape-interval", type=float, default=10.0)
    args = parser.parse_args()
    runs = 3 if args.quick else 8
    work = Path(tempfile.mkdtemp(prefix="proveai-first-metric-"))
    key_file = work / "scrape.key"
    key_file.write_text(KEY)
    agent = start_agent(data_dir=work)
    target = agent.url.removeprefix("http://")
    stack = NativeStack(
        work / "stack",
        agent_target=target,
        agent_key_file=key_file,
        scrape_interval_s=args.scrape_interval,
    )
    present: list[float] = []
    counted: list[float] = []
    try:
        stack.start()
        time.sleep(args.scrape_interval)  # let Prometheus settle into its scrape rhythm
        print(f"{'run':>4} {'first_metric_s':>15} {'first_value_s':>14}")
        for run in range(runs):
            service = f"first-metric-{run}-{int(time.time())}"
            started = emit(agent.url, service)
            p, v = wait_series(
                stack.prometheus_url, service, started, timeout_s=4 * args.scrape_interval + 10
            )
            print(
                f"{run:>4} {p if p is not None else float('nan'):>15.2f} "
                f"{v if v is not None else float('nan'):>14.2f}"
            )
            if p is not None:
                present.append(p)
            if v is not None:
                counted.append(v)
            time.sleep(1.7)  # land the next span at another point of the scrape cycle
    finally:
        stack.stop()
        agent.stop()
    print(f"scrape interval {args.scrape_interval:.0f} s; medians over {runs} spans")
    print(
        f"first_metric_s={statistics.median(present):.2f} "
        f"first_metric_max_s={max(present):.2f} "
        f"first_value_s={statistics.median(counted):.2f}"
    )


if __name__ == "__main__":
    main()
