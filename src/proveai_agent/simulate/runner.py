"""`proveai-agent simulate`: sends simulated services' traces over OTLP/HTTP at steady rates.

Each service has its own OpenTelemetry TracerProvider, BatchSpanProcessor and OTLP/HTTP
exporter. Traces are planned with explicit timestamps that end at the moment they are
sent, so simulated latency costs no wall-clock time; the time between requests is what
the run spends waiting.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from proveai_agent.simulate import PlannedSpan
from proveai_agent.simulate.agents import AgentSystem
from proveai_agent.simulate.applied import FixWatcher
from proveai_agent.simulate.changes import ChangePlayer, agent_api
from proveai_agent.simulate.faults import FAULT_KINDS, Effect, Fault, FaultSchedule
from proveai_agent.simulate.library import Scenario, ScenarioError, scenarios, suffixed
from proveai_agent.simulate.rag import RagPipeline

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

AGENT_RATE_SHARE = 0.25
"""The agent system runs at this share of the RAG request rate."""
MAX_LAG_S = 1.0
"""How far behind schedule the sender may fall before it skips ahead instead of bursting."""
ENVIRONMENT = "demo"
PROG = "proveai-agent simulate"


class Source(Protocol):
    """A simulated service that plans one trace at a time."""

    service: str
    version: str

    def next_trace(self, effect: Effect) -> PlannedSpan: ...


class UsageError(Exception):
    """A combination of options that cannot run; exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `simulate` options to `parser`."""
    parser.add_argument(
        "--agent",
        metavar="URL",
        help="send to this agent (URL/v1/traces); default: the standard "
        "OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT variables",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="send this key as X-API-Key; default: OTEL_EXPORTER_OTLP_HEADERS",
    )
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        help="the CA (PEM) that an https:// agent's certificate must chain to; default: "
        "OTEL_EXPORTER_OTLP_CERTIFICATE, else the system's trusted CAs",
    )
    parser.add_argument(
        "--rate",
        type=_positive_float,
        default=4.0,
        metavar="N",
        help="RAG requests per second (the agent system runs at a quarter of it); default 4",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        metavar="SECONDS",
        help="stop after this long; default: run until interrupted",
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="seed for all variation; default: random"
    )
    parser.add_argument("--inject", choices=FAULT_KINDS, help="inject a fault into rag-api")
    parser.add_argument(
        "--at",
        type=_non_negative_float,
        metavar="SECONDS",
        help="start the fault this long after the start; default 0",
    )
    parser.add_argument(
        "--fix-at", type=_positive_float, metavar="SECONDS", help="stop the fault at this time"
    )
    parser.add_argument(
        "--control",
        type=Path,
        metavar="FILE",
        help="stop the fault when FILE is written with 'fix' in it (read once a second)",
    )
    parser.add_argument(
        "--fix-when-applied",
        action="store_true",
        help="stop the fault once the agent has a case about it in FIX_APPLIED or VERIFYING "
        "(asked once a second), as if the engineer's fix had worked",
    )
    parser.add_argument(
        "--scenario", metavar="NAME", help="run a failure scenario of the library (--list)"
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the scenarios, one a line: name, failure class, root-cause id",
    )
    parser.add_argument(
        "--onset",
        type=_positive_float,
        metavar="SECONDS",
        help="start the scenario's failure this long after the start; default: the "
        "scenario's own (its changes keep their times relative to it)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="the services' files that a scenario edits, one folder per service "
        "(DIR/rag-api, ...); point the agent's watch_files at them; default: a new "
        "temporary folder",
    )
    parser.add_argument(
        "--service-suffix",
        metavar="TEXT",
        help="append -TEXT to every service name, so that several runs share one agent",
    )


def run(args: argparse.Namespace) -> int:
    """Send traces until the duration ends or SIGINT/SIGTERM arrives; returns the exit code."""
    try:
        library = scenarios()
    except ScenarioError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    if args.list:
        for item in library.values():
            print(f"{item.name} {item.failure_class} {item.root_cause}")
        return 0

    try:
        if args.ca_file is not None and not Path(args.ca_file).is_file():
            raise UsageError(f"--ca-file {args.ca_file}: no such file")
        faults = plan_faults(args)
        if args.fix_when_applied and not faults:
            raise UsageError("--fix-when-applied needs --inject or --scenario")
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    suffix = args.service_suffix
    sources: list[tuple[Source, float]] = [
        (RagPipeline(seed, suffixed("rag-api", suffix)), args.rate),
        (AgentSystem(seed, suffixed("research-agent", suffix)), args.rate * AGENT_RATE_SHARE),
    ]
    player = None
    if args.scenario is not None:
        scenario = library[args.scenario]
        onset = args.onset if args.onset is not None else scenario.onset_s
        player = ChangePlayer(
            scenario,
            onset,
            suffix,
            args.workdir,
            agent_api(args.agent, args.api_key, args.ca_file),
        )
        print(_scenario_line(scenario, onset, player), flush=True)
    try:
        providers = {
            source.service: _provider(source, args.agent, args.api_key, args.ca_file)
            for source, _ in sources
        }
    except ImportError as error:
        print(
            f"{PROG}: error: the simulator needs opentelemetry-sdk and "
            f"opentelemetry-exporter-otlp-proto-http ({error}); install the 'simulate' extra",
            file=sys.stderr,
        )
        return 1

    schedule = FaultSchedule(faults, args.control)
    watcher = None
    if args.fix_when_applied:

        def fixed(case_id: str) -> None:
            print(f"simulate: {case_id} has a fix applied; stopping the fault", flush=True)
            schedule.request_fix()

        api = agent_api(args.agent, args.api_key, args.ca_file)
        if api.url is None:
            print(f"{PROG}: error: --fix-when-applied needs the agent's URL", file=sys.stderr)
            return 2
        watcher = FixWatcher(api, {fault.service for fault in faults}, fixed)
        watcher.start()
    print(
        f"simulate: sending to {_destination(args.agent, args.api_key)}; "
        + ", ".join(f"{source.service} {rate:g} traces/s" for source, rate in sources)
        + f"; seed {seed}; fault: {schedule.describe()}",
        flush=True,
    )

    stop = threading.Event()
    previous = _catch_stop_signals(stop)
    try:
        streams = [
            _Stream(
                source,
                _Emitter(providers[source.service].get_tracer(__name__, source.version)),
                rate,
                random.Random(f"{seed}/{source.service}/arrivals"),
            )
            for source, rate in sources
        ]
        _drive(streams, schedule, stop, args.duration, player)
    finally:
        if watcher is not None:
            watcher.stop()
        for provider in providers.values():
            provider.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def plan_faults(args: argparse.Namespace) -> tuple[Fault, ...]:
    """The faults the options ask for; raises UsageError for options that do not fit."""
    if args.scenario is not None:
        library = scenarios()
        if args.scenario not in library:
            known = ", ".join(library) or "none"
            raise UsageError(f"unknown scenario {args.scenario!r} (known: {known})")
        if args.inject is not None or args.at is not None:
            raise UsageError("a scenario brings its own fault: drop --inject and --at")
        scenario = library[args.scenario]
        onset = args.onset if args.onset is not None else scenario.onset_s
        if args.fix_at is not None and args.fix_at <= onset:
            raise UsageError(f"--fix-at must come after the onset at +{onset:g}s")
        return (scenario.fault(onset, args.service_suffix, args.fix_at),)

    if args.onset is not None:
        raise UsageError("--onset needs --scenario")
    if args.inject is None:
        if args.at is not None or args.fix_at is not None:
            raise UsageError("--at and --fix-at need --inject")
        return ()
    try:
        return (Fault(args.inject, start_s=args.at or 0.0, stop_s=args.fix_at),)
    except ValueError as error:
        raise UsageError(str(error)) from error


@dataclass(slots=True)
class _Stream:
    """One service's trace stream: its source, tracer and Poisson arrivals."""

    source: Source
    emitter: _Emitter
    rate: float
    arrivals: random.Random
    next_s: float = 0.0
    last_end_ns: int = 0

    def gap_s(self) -> float:
        return self.arrivals.expovariate(self.rate)


def _scenario_line(scenario: Scenario, onset: float, player: ChangePlayer) -> str:
    return (
        f"simulate: scenario {scenario.name} ({scenario.failure_class}, root cause "
        f"{scenario.root_cause}); onset +{onset:g}s; {len(scenario.changes)} changes; "
        f"files in {player.workdir}"
    )


def _drive(
    streams: list[_Stream],
    schedule: FaultSchedule,
    stop: threading.Event,
    duration: float | None,
    player: ChangePlayer | None = None,
) -> None:
    """Send each stream's traces at its arrival times until `duration` ends or `stop` is set."""
    start = time.monotonic()
    for stream in streams:
        stream.next_s = stream.gap_s()
    fix_requested = _fix_on_sigusr1(schedule)

    try:
        while not stop.is_set():
            elapsed = time.monotonic() - start
            if duration is not None and elapsed >= duration:
                return
            _step(streams, schedule, player, elapsed)
            wake = _next_wake(streams, schedule, player, duration)
            stop.wait(max(0.0, wake - (time.monotonic() - start)))
    finally:
        if fix_requested is not None:
            signal.signal(signal.SIGUSR1, fix_requested)


def _step(
    streams: list[_Stream],
    schedule: FaultSchedule,
    player: ChangePlayer | None,
    elapsed: float,
) -> None:
    """Play what is due at `elapsed`: changes, fault starts and stops, traces."""
    if player is not None:
        for line in player.play_due(elapsed):
            print(f"simulate: +{elapsed:.1f}s {line}", flush=True)
    for change in schedule.update(elapsed):
        print(f"simulate: +{elapsed:.1f}s {change}", flush=True)

    for stream in streams:
        if stream.next_s <= elapsed:
            service = stream.source.service
            effect = schedule.effect(service)
            if player is not None:
                effect = effect.combine(Effect(attributes=player.attributes(service)))
            _send(stream, effect)
            stream.next_s = max(stream.next_s, elapsed - MAX_LAG_S) + stream.gap_s()


def _next_wake(
    streams: list[_Stream],
    schedule: FaultSchedule,
    player: ChangePlayer | None,
    duration: float | None,
) -> float:
    wake = min(stream.next_s for stream in streams)
    for check in (schedule.next_check_s(), player.next_s() if player else None):
        if check is not None:
            wake = min(wake, check)
    if duration is not None:
        wake = min(wake, duration)
    return wake


def _fix_on_sigusr1(schedule: FaultSchedule) -> Any:
    """Make SIGUSR1 stop the active faults; returns the handler to restore, if one was set."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGUSR1, lambda *_: schedule.request_fix())


def _send(stream: _Stream, effect: Effect) -> None:
    """Emit the next planned trace so that it ends now (and after the stream's previous one)."""
    plan = stream.source.next_trace(effect)
    if effect.attributes:
        _override(plan, effect.attributes)
    end_ns = max(time.time_ns(), stream.last_end_ns + 1)
    stream.last_end_ns = end_ns
    stream.emitter.emit(plan, end_ns - plan.end_ns)


def _override(plan: PlannedSpan, attributes: tuple[tuple[str, str, Any], ...]) -> None:
    """Set each (operation or span name, key, value) on the spans it matches."""
    for span in plan.walk():
        operation = span.attributes.get("gen_ai.operation.name")
        for match, key, value in attributes:
            if match in (operation, span.name):
                span.attributes[key] = value


class _Emitter:
    """Turns planned spans into OpenTelemetry spans with explicit start and end times."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._tracer = tracer
        self._kinds = {
            "server": SpanKind.SERVER,
            "client": SpanKind.CLIENT,
            "internal": SpanKind.INTERNAL,
        }
        self._new_trace = Context
        self._child_of = trace.set_span_in_context
        self._error_status = lambda message: Status(StatusCode.ERROR, message)

    def emit(self, plan: PlannedSpan, origin_ns: int, parent: Span | None = None) -> None:
        """Emit `plan` and its children; `origin_ns` is the trace's start on the wall clock."""
        span = self._tracer.start_span(
            plan.name,
            context=self._child_of(parent) if parent is not None else self._new_trace(),
            kind=self._kinds[plan.kind],
            attributes=plan.attributes,
            start_time=origin_ns + plan.start_ns,
        )
        for event in plan.events:
            span.add_event(event.name, event.attributes, timestamp=origin_ns + event.at_ns)
        for child in plan.children:
            self.emit(child, origin_ns, span)
        if plan.error is not None:
            span.set_status(self._error_status(plan.error))
        span.end(end_time=origin_ns + plan.end_ns)


def _provider(
    source: Source, agent: str | None, api_key: str | None, ca_file: str | None = None
) -> TracerProvider:
    """A TracerProvider for one simulated service, exporting in batches over OTLP/HTTP.

    Endpoint, headers and CA are passed only when given as options, so otherwise the
    exporter reads the standard OTEL_EXPORTER_OTLP_* variables itself.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import ProcessResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {
            "service.name": source.service,
            "service.version": source.version,
            "deployment.environment.name": ENVIRONMENT,
            "service.instance.id": str(uuid.uuid4()),
        }
    ).merge(ProcessResourceDetector().detect())
    options: dict[str, Any] = {}
    if agent is not None:
        options["endpoint"] = _traces_url(agent)
    if api_key is not None:
        options["headers"] = {"X-API-Key": api_key}
    if ca_file is not None:
        options["certificate_file"] = ca_file
    options["session"] = _ca_keeping_session()

    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    # Export every second unless the standard variable says otherwise: the SDK's default of
    # 5 s would make live panels lag.
    delay = None if "OTEL_BSP_SCHEDULE_DELAY" in os.environ else 1000
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(**options), schedule_delay_millis=delay)
    )
    return provider


def _ca_keeping_session() -> Any:
    """A requests session that keeps the CA file the exporter sets on it.

    The exporter sets the session's `verify` to the CA file and posts without one, so
    plain requests would let REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE from the environment
    replace it and then refuse the agent's private certificate."""
    import requests

    class Session(requests.Session):
        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> Any:
            settings = super().merge_environment_settings(*args, **kwargs)
            if isinstance(self.verify, str):
                settings["verify"] = self.verify
            return settings

    return Session()


def _traces_url(agent: str) -> str:
    base = agent.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def _destination(agent: str | None, api_key: str | None) -> str:
    """Where the exporter sends, as it resolves it, for the start line; never the key."""
    if agent is not None:
        url = _traces_url(agent)
    elif os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        url = os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    else:
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
        url = f"{base.rstrip('/')}/v1/traces"
    if api_key is not None:
        return f"{url} (X-API-Key)"
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"):
        if os.environ.get(variable):
            return f"{url} (headers from {variable})"
    return url


def _catch_stop_signals(stop: threading.Event) -> dict[int, Any]:
    """Make SIGINT and SIGTERM end the run cleanly; returns the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value
