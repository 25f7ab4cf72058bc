"""`proveai-agent stack check`: which stack profile answers, what is missing, and how long
a test span takes to become a metric.

Every component is probed either through Envoy (its listeners and ports from the stack's
`.env`, with a key) or directly at URLs given on the command line. The set of back-ends
that answer is matched against the stack's profiles; then one span of a service never
seen before is sent over OTLP/HTTP and Prometheus (or, without it, VictoriaMetrics) is
polled until its span metrics series appears. That series stays in the metric store, as
any other service's would.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import ssl
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .envoy import EnvFileError, EnvoyConfigError, parse_env_file, settings

DEFAULT_ENV = Path("stack/.env")
DEFAULT_ENVOY_HOST = "127.0.0.1"
DEFAULT_TIMEOUT_S = 3.0
DEFAULT_FIRST_METRIC_TIMEOUT_S = 60.0
POLL_S = 0.25

CALLS = "llm_traces_span_metrics_calls_total"
SERVICE_PREFIX = "proveai-stack-check-"

COMPONENTS = ("envoy", "collector", "prometheus", "victoriametrics", "agent")
BACKENDS = frozenset({"collector", "prometheus", "victoriametrics"})
PROFILES: dict[frozenset[str], str] = {
    frozenset({"collector", "prometheus", "victoriametrics"}): "full",
    frozenset({"collector", "victoriametrics"}): "no-prometheus",
    frozenset({"collector", "prometheus"}): "no-vm",
    frozenset({"prometheus", "victoriametrics"}): "no-collector",
    frozenset({"victoriametrics"}): "vm-only",
    frozenset({"prometheus"}): "prom-only",
}

# --direct NAME=URL: the names, and which endpoint each one is.
DIRECT_NAMES = {
    "collector": "collector_otlp",
    "collector-metrics": "collector_metrics",
    "prometheus": "prometheus",
    "victoriametrics": "victoriametrics",
    "vm": "victoriametrics",
    "agent": "agent",
}
_COMPONENT_OF = {
    "collector_otlp": "collector",
    "collector_metrics": "collector",
    "prometheus": "prometheus",
    "victoriametrics": "victoriametrics",
    "agent": "agent",
    "agent_otlp": "agent",
}
# Passes Envoy's key checks when only the listeners are read from a .env without keys.
_PLACEHOLDER_KEY = "stack-check-placeholder-key"


class CheckError(ValueError):
    """Arguments or a .env file that give nothing to check; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """Where one component is reached: its base URL, how the table names that, and
    whether the request carries the credentials."""

    url: str
    via: str
    auth: bool


@dataclass(frozen=True)
class EnvoyListener:
    name: str
    url: str
    via: str
    grpc: bool


@dataclass
class Plan:
    """What to probe, and why a component is not probed."""

    through_envoy: bool
    description: str
    listeners: list[EnvoyListener] = field(default_factory=list)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def configured(self) -> set[str]:
        """The components this check expects to answer."""
        found = {_COMPONENT_OF[name] for name in self.endpoints}
        if self.through_envoy:
            found.add("envoy")
        return found

    @property
    def otlp(self) -> tuple[str, Endpoint] | None:
        """Where the test span goes: the collector's OTLP/HTTP, else the agent's."""
        for name in ("collector_otlp", "agent_otlp"):
            if name in self.endpoints:
                return _COMPONENT_OF[name], self.endpoints[name]
        return None


@dataclass
class Result:
    """One probe of one component, as a row of the table."""

    component: str
    check: str
    via: str
    ok: bool
    detail: str


@dataclass
class FirstMetric:
    """The test span: None in `seconds` when its series did not appear (or none was sent)."""

    service: str | None = None
    via: str = ""
    receiver: str = ""
    source: str | None = None
    seconds: float | None = None
    stored_s: float | None = None
    agent_checked: bool = False
    skipped: str | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        if self.skipped is not None:
            return False
        return self.error is not None or (self.agent_checked and self.stored_s is None)


@dataclass
class Report:
    plan: Plan
    results: list[Result]
    first_metric: FirstMetric

    @property
    def live(self) -> set[str]:
        """Components whose first probe answered (Envoy: any of its listeners)."""
        live: set[str] = set()
        for component in COMPONENTS:
            mine = [r for r in self.results if r.component == component]
            if not mine:
                continue
            answered = any(r.ok for r in mine) if component == "envoy" else mine[0].ok
            if answered:
                live.add(component)
        return live

    @property
    def failing(self) -> set[str]:
        """Configured components with a probe that did not pass."""
        return {r.component for r in self.results if r.ok is False}

    @property
    def profile(self) -> str | None:
        """The profile name of the back-ends that answer; None when no profile has them."""
        live = self.live
        if self.plan.through_envoy and "envoy" not in live:
            return None
        return PROFILES.get(frozenset(live & BACKENDS))

    @property
    def ok(self) -> bool:
        return (
            self.profile is not None
            and not self.failing
            and self.plan.configured <= self.live
            and not self.first_metric.failed
        )


# --- the plan ---------------------------------------------------------------------------


def _display(url: str) -> str:
    """A URL as the table shows it: without user information, which may hold a password."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def _parse_direct(items: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    names = ", ".join(DIRECT_NAMES)
    for item in items:
        name, sep, url = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in DIRECT_NAMES:
            raise CheckError(f"--direct {item!r}: expected NAME=URL with NAME one of {names}")
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CheckError(f"--direct {name}={url!r}: not an http:// or https:// URL")
        found[DIRECT_NAMES[name]] = url.strip().rstrip("/")
    return found


def _envoy_plan(env_path: Path, host: str) -> Plan:
    if env_path.is_file():
        try:
            env = parse_env_file(env_path)
        except (OSError, EnvFileError) as exc:
            raise CheckError(str(exc)) from exc
        source = str(env_path)
        notes = []
    else:
        env = {}
        source = "the defaults of stack/.env.example"
        notes = [f"{env_path} not found: the listeners are those of stack/.env.example"]
    try:
        checked = settings({**env, "AUTH_MODE": "api-key", "ENVOY_API_KEYS": _PLACEHOLDER_KEY})
    except EnvoyConfigError as exc:
        raise CheckError(f"{env_path}: {exc}") from exc

    scheme = "https" if checked.tls else "http"
    netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
    plan = Plan(
        through_envoy=True,
        description=f"through Envoy at {host} (listeners from {source})",
        notes=notes,
    )
    collector_grpc_only = False
    for listener in checked.listeners:
        url = f"{scheme}://{netloc}:{listener.port}"
        via = f"envoy :{listener.port}"
        plan.listeners.append(EnvoyListener(listener.name, url, via, listener.grpc))
        to_agent = checked.to_agent(listener)
        if listener.name == "otlp_http":
            plan.endpoints["agent_otlp" if to_agent else "collector_otlp"] = Endpoint(
                url, via, True
            )
        elif listener.name == "otlp_grpc":
            collector_grpc_only = not to_agent
        elif listener.name in ("collector_metrics", "prometheus", "victoriametrics", "agent"):
            plan.endpoints[listener.name] = Endpoint(url, via, True)
    has_collector = "collector_otlp" in plan.endpoints or "collector_metrics" in plan.endpoints
    if collector_grpc_only and not has_collector:
        plan.notes.append(
            "the collector has only an OTLP/gRPC listener: checked as a listener, not "
            "as a component"
        )
    for component in ("collector", "prometheus", "victoriametrics", "agent"):
        if component not in plan.configured:
            plan.absent[component] = f"not configured in {source}"
    return plan


def build_plan(env_path: Path, envoy_host: str | None, direct: Sequence[str] | None) -> Plan:
    """What to probe: through Envoy unless only --direct URLs are given, which then replace
    Envoy's route for their components.

    Raises:
        CheckError: for a malformed --direct item or an unreadable .env.
    """
    urls = _parse_direct(direct or ())
    if envoy_host is not None or not urls:
        plan = _envoy_plan(env_path, envoy_host or DEFAULT_ENVOY_HOST)
    else:
        plan = Plan(through_envoy=False, description="directly at the URLs of --direct")
        plan.absent["envoy"] = "not checked (--direct without --envoy)"
        for component in ("collector", "prometheus", "victoriametrics", "agent"):
            plan.absent[component] = "not given with --direct"
    for name, url in urls.items():
        plan.endpoints[name] = Endpoint(url, _display(url), name == "agent")
        plan.absent.pop(_COMPONENT_OF[name], None)
        if name == "collector_otlp":
            plan.endpoints.pop("agent_otlp", None)
    if "agent" in urls and "collector_otlp" not in plan.endpoints:
        plan.endpoints["agent_otlp"] = Endpoint(urls["agent"], _display(urls["agent"]), True)
    return plan


# --- probes -------------------------------------------------------------------------------


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def text(self, limit: int = 200) -> str:
        return " ".join(self.body.decode("utf-8", "replace").split())[:limit]

    def json(self) -> Any:
        return json.loads(self.body)


class _Http:
    """Requests with the check's timeout and credentials; every failure is a message."""

    def __init__(
        self, session: aiohttp.ClientSession, credentials: Mapping[str, str], timeout_s: float
    ) -> None:
        self.session = session
        self.credentials = dict(credentials)
        self.timeout_s = timeout_s

    async def request(
        self,
        method: str,
        url: str,
        *,
        auth: bool,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> _Answer | str:
        headers = dict(self.credentials) if auth else {}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with self.session.request(
                method, url, params=params, data=data, headers=headers
            ) as resp:
                body = await resp.read()
                return _Answer(resp.status, body, dict(resp.headers))
        except TimeoutError:
            return f"no answer within {self.timeout_s:g} s"
        except aiohttp.ClientConnectorError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc.os_error)
            return f"cannot connect: {reason}"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return str(exc) or type(exc).__name__


def _status_problem(answer: _Answer | str, expected: int = 200) -> str | None:
    if isinstance(answer, str):
        return answer
    if answer.status == expected:
        return None
    hint = ""
    if answer.status == 401:
        hint = "; give a valid key with --key or PROVEAI_API_KEY"
    body = answer.text()
    return f"HTTP {answer.status}{': ' + body if body else ''}{hint}"


async def _probe_listener(http: _Http, listener: EnvoyListener) -> Result:
    check = f"{listener.name} listener"
    answer = await http.request("GET", f"{listener.url}/", auth=False)
    if isinstance(answer, str):
        return Result("envoy", check, listener.via, False, answer)
    if listener.grpc and answer.headers.get("grpc-status") == "16":
        return Result("envoy", check, listener.via, True, "refuses without a key (gRPC 16)")
    if answer.status == 401:
        return Result("envoy", check, listener.via, True, "refuses without a key (401)")
    return Result(
        "envoy",
        check,
        listener.via,
        False,
        f"answered HTTP {answer.status} without a key: is Envoy's auth in front?",
    )


async def _probe_otlp(http: _Http, component: str, endpoint: Endpoint) -> Result:
    check = "OTLP/HTTP export"
    answer = await http.request(
        "POST",
        f"{endpoint.url}/v1/traces",
        auth=endpoint.auth,
        data=b'{"resourceSpans":[]}',
        content_type="application/json",
    )
    problem = _status_problem(answer)
    if problem is not None:
        return Result(component, check, endpoint.via, False, problem)
    return Result(component, check, endpoint.via, True, "accepts an empty export")


async def _probe_collector_metrics(http: _Http, endpoint: Endpoint) -> Result:
    check = "span metrics"
    answer = await http.request("GET", f"{endpoint.url}/metrics", auth=endpoint.auth)
    problem = _status_problem(answer)
    if problem is not None or isinstance(answer, str):
        return Result("collector", check, endpoint.via, False, problem or "")
    lines = answer.body.decode("utf-8", "replace").splitlines()
    series = sum(1 for line in lines if line.startswith(CALLS + "{"))
    detail = f"{series} {CALLS} series" if series else "answers; no span metrics yet"
    return Result("collector", check, endpoint.via, True, detail)


async def _probe_ready(http: _Http, component: str, endpoint: Endpoint, path: str) -> Result:
    answer = await http.request("GET", f"{endpoint.url}{path}", auth=endpoint.auth)
    problem = _status_problem(answer)
    if problem is not None:
        return Result(component, f"GET {path}", endpoint.via, False, problem)
    return Result(component, f"GET {path}", endpoint.via, True, "200")


async def _query(
    http: _Http, endpoint: Endpoint, promql: str, victoriametrics: bool
) -> list[dict[str, Any]] | str:
    params = {"query": promql}
    if victoriametrics:
        params["nocache"] = "1"
    answer = await http.request(
        "GET", f"{endpoint.url}/api/v1/query", auth=endpoint.auth, params=params
    )
    problem = _status_problem(answer)
    if problem is not None or isinstance(answer, str):
        return problem or ""
    try:
        doc = answer.json()
        if doc.get("status") != "success":
            return f"{doc.get('errorType', 'error')}: {doc.get('error', answer.text())}"
        result = doc["data"]["result"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"not a PromQL answer: {answer.text()}"
    return result if isinstance(result, list) else f"not a vector: {answer.text()}"


async def _probe_query(http: _Http, component: str, endpoint: Endpoint) -> Result:
    check = "query vector(1)"
    result = await _query(http, endpoint, "vector(1)", component == "victoriametrics")
    if isinstance(result, str):
        return Result(component, check, endpoint.via, False, result)
    values = [item.get("value", [None, None])[1] for item in result]
    if values != ["1"]:
        return Result(component, check, endpoint.via, False, f"answered {values}, not [1]")
    return Result(component, check, endpoint.via, True, "1")


async def _probe_targets(http: _Http, endpoint: Endpoint) -> Result:
    check = "scrape targets"
    answer = await http.request(
        "GET",
        f"{endpoint.url}/api/v1/targets",
        auth=endpoint.auth,
        params={"state": "active"},
    )
    problem = _status_problem(answer)
    if problem is not None or isinstance(answer, str):
        return Result("prometheus", check, endpoint.via, False, problem or "")
    try:
        targets = answer.json()["data"]["activeTargets"]
    except (ValueError, KeyError, TypeError):
        return Result("prometheus", check, endpoint.via, False, answer.text())
    down = [t for t in targets if t.get("health") == "down"]
    up = sum(1 for t in targets if t.get("health") == "up")
    detail = f"{up} of {len(targets)} up" if targets else "no targets"
    if len(targets) - up - len(down):
        detail += f", {len(targets) - up - len(down)} not scraped yet"
    for target in down:
        where = target.get("scrapePool", "?") + " " + target.get("scrapeUrl", "?")
        detail += f"; down: {where} ({target.get('lastError') or 'no error given'})"
    return Result("prometheus", check, endpoint.via, not down, detail)


async def _probe_overview(http: _Http, endpoint: Endpoint) -> Result:
    check = "GET /api/overview"
    answer = await http.request("GET", f"{endpoint.url}/api/overview", auth=endpoint.auth)
    problem = _status_problem(answer)
    if problem is not None or isinstance(answer, str):
        return Result("agent", check, endpoint.via, False, problem or "")
    try:
        doc = answer.json()
        sources = doc["sources"]
        services = doc["services"]
    except (ValueError, KeyError, TypeError):
        return Result("agent", check, endpoint.via, False, f"not an overview: {answer.text()}")
    parts = [f"spanmetrics {doc.get('spanmetrics') or 'none'}", f"{len(services)} services"]
    ok = True
    for name, state in sources.items():
        if state.get("up"):
            parts.append(f"{name} up")
        elif state.get("error") == "not configured":
            parts.append(f"{name} not configured")
        else:
            ok = False
            parts.append(f"cannot read {name}: {state.get('error')}")
    return Result("agent", check, endpoint.via, ok, "; ".join(parts))


async def _probes(http: _Http, plan: Plan) -> list[Result]:
    calls: list[Awaitable[Result]] = [_probe_listener(http, ln) for ln in plan.listeners]
    e = plan.endpoints
    if "collector_otlp" in e:
        calls.append(_probe_otlp(http, "collector", e["collector_otlp"]))
    if "collector_metrics" in e:
        calls.append(_probe_collector_metrics(http, e["collector_metrics"]))
    if "prometheus" in e:
        calls += [
            _probe_ready(http, "prometheus", e["prometheus"], "/-/ready"),
            _probe_query(http, "prometheus", e["prometheus"]),
            _probe_targets(http, e["prometheus"]),
        ]
    if "victoriametrics" in e:
        calls += [
            _probe_ready(http, "victoriametrics", e["victoriametrics"], "/health"),
            _probe_query(http, "victoriametrics", e["victoriametrics"]),
        ]
    if "agent" in e:
        calls += [
            _probe_ready(http, "agent", e["agent"], "/healthz"),
            _probe_overview(http, e["agent"]),
        ]
    if "agent_otlp" in e:
        calls.append(_probe_otlp(http, "agent", e["agent_otlp"]))
    return list(await asyncio.gather(*calls))


# --- the test span ------------------------------------------------------------------------


def otlp_span_export(service: str, trace_id: str, span_id: str, now_ns: int) -> bytes:
    """One server span of `service` as an OTLP/HTTP JSON export."""
    span = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": "stack check",
        "kind": 2,
        "startTimeUnixNano": str(now_ns - 50_000_000),
        "endTimeUnixNano": str(now_ns),
    }
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    export = {
        "resourceSpans": [
            {
                "resource": resource,
                "scopeSpans": [{"scope": {"name": "proveai-stack-check"}, "spans": [span]}],
            }
        ]
    }
    return json.dumps(export).encode()


async def _until(
    probe: Callable[[], Awaitable[bool]], started: float, deadline: float
) -> float | None:
    """Seconds from `started` until `probe` is true, or None at the deadline."""
    while True:
        if await probe():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(POLL_S)


async def _first_metric(
    http: _Http, plan: Plan, live: set[str], timeout_s: float
) -> FirstMetric:
    if timeout_s <= 0:
        return FirstMetric(skipped="--first-metric-timeout 0")
    target = plan.otlp
    if target is None or target[0] not in live:
        return FirstMetric(skipped="no OTLP/HTTP receiver answers")
    receiver, endpoint = target
    source = next((s for s in ("prometheus", "victoriametrics") if s in live), None)
    if source is None:
        return FirstMetric(skipped="neither Prometheus nor VictoriaMetrics answers")
    metrics = plan.endpoints[source]

    service = SERVICE_PREFIX + secrets.token_hex(4)
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    report = FirstMetric(service, endpoint.via, receiver, source)
    started = time.monotonic()
    answer = await http.request(
        "POST",
        f"{endpoint.url}/v1/traces",
        auth=endpoint.auth,
        data=otlp_span_export(service, trace_id, span_id, time.time_ns()),
        content_type="application/json",
    )
    problem = _status_problem(answer)
    if problem is not None:
        report.error = f"the span was not accepted: {problem}"
        return report
    deadline = started + timeout_s

    async def series() -> bool:
        promql = f'sum({CALLS}{{service_name="{service}"}})'
        result = await _query(http, metrics, promql, source == "victoriametrics")
        return isinstance(result, list) and bool(result)

    async def stored() -> bool:
        agent = plan.endpoints["agent"]
        answer = await http.request(
            "GET", f"{agent.url}/api/traces/{trace_id}", auth=agent.auth
        )
        return isinstance(answer, _Answer) and answer.status == 200

    waits: list[Awaitable[float | None]] = [_until(series, started, deadline)]
    report.agent_checked = "agent" in live and "agent" in plan.endpoints
    if report.agent_checked:
        waits.append(_until(stored, started, deadline))
    found = await asyncio.gather(*waits)
    report.seconds = found[0]
    if report.agent_checked:
        report.stored_s = found[1]
    if report.seconds is None:
        report.error = f"no {CALLS} series for it in {source} after {timeout_s:g} s"
    return report


async def check(
    plan: Plan,
    credentials: Mapping[str, str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    first_metric_timeout_s: float = DEFAULT_FIRST_METRIC_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
) -> Report:
    """Probe everything the plan names, then time the test span's first metric.

    Args:
        plan: from `build_plan()`.
        credentials: the request headers that carry the key, sent only to endpoints
            behind Envoy and to the agent.
        timeout_s: the limit of each request.
        first_metric_timeout_s: how long to wait for the test span's series; 0 sends none.
        ssl_context: for https endpoints, e.g. trusting Envoy's self-signed certificate.
    """
    timeout = aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s)
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        http = _Http(session, credentials, timeout_s)
        results = await _probes(http, plan)
        report = Report(plan, results, FirstMetric())
        report.first_metric = await _first_metric(
            http, plan, report.live, first_metric_timeout_s
        )
    return report


# --- the table ----------------------------------------------------------------------------


def _profile_line(report: Report) -> str:
    live = report.live
    if not live:
        return "none: nothing answers"
    name = report.profile
    backends = sorted(live & BACKENDS)
    if name is None:
        if report.plan.through_envoy and "envoy" not in live:
            return "none: Envoy does not answer"
        return f"unknown combination ({', '.join(backends) or 'no back-end'})"
    members = (["envoy"] if "envoy" in live else []) + backends
    text = f"{name} ({', '.join(members)}"
    text += ", and the agent)" if "agent" in live else ")"
    if not report.plan.through_envoy:
        text += ", without Envoy"
    return text


def _missing_line(report: Report) -> str:
    live = report.live
    parts = []
    for component in COMPONENTS:
        if component in live:
            continue
        reason = report.plan.absent.get(component, "does not answer")
        optional = " (optional)" if component == "agent" else ""
        parts.append(f"{component}{optional}: {reason}")
    return "; ".join(parts) or "nothing"


def _first_metric_line(first: FirstMetric) -> str:
    if first.skipped is not None:
        return f"not measured: {first.skipped}"
    head = f"a span of {first.service} sent to {first.via} ({first.receiver})"
    if first.seconds is not None:
        text = f"{first.seconds:.2f} s: {head}, its {CALLS} series in {first.source}"
    else:
        text = f"FAILED: {head}: {first.error}"
    if first.agent_checked:
        if first.stored_s is not None:
            text += f"; stored by the agent after {first.stored_s:.2f} s"
        else:
            text += "; the agent did not store it"
    return text


def format_report(report: Report, credentials_from: str) -> str:
    """The readable table of a report; it never holds a key."""
    plan = report.plan
    lines = [f"stack check {plan.description}; credentials: {credentials_from}", ""]
    rows = [("component", "check", "via", "result", "detail")]
    for r in report.results:
        rows.append((r.component, r.check, r.via, "ok" if r.ok else "FAIL", r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append("  " + "  ".join([*cells, row[4]]).rstrip())
    lines.append("")
    for note in plan.notes:
        lines.append(f"note          {note}")
    lines.append(f"profile       {_profile_line(report)}")
    lines.append(f"missing       {_missing_line(report)}")
    lines.append(f"first metric  {_first_metric_line(report.first_metric)}")
    if report.ok:
        lines.append(f"result        ok: everything of {report.profile} answers")
    else:
        down = sorted((plan.configured - report.live) | report.failing)
        why = f"not answering as it should: {', '.join(down)}" if down else ""
        if not report.live:
            why = "nothing answers"
        elif report.profile is None:
            why = "; ".join(filter(None, ["no stack profile has this set", why]))
        if report.first_metric.failed:
            why = "; ".join(filter(None, [why, "the test span did not come through"]))
        lines.append(f"result        FAILED: {why}")
    return "\n".join(lines)


# --- the command --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `stack check`."""
    parser.add_argument(
        "--env",
        type=Path,
        default=DEFAULT_ENV,
        help=f"the stack's variables: Envoy's listeners and ports (default {DEFAULT_ENV})",
    )
    parser.add_argument(
        "--envoy",
        metavar="HOST",
        help=f"check through Envoy at HOST (the default, at {DEFAULT_ENVOY_HOST}, "
        "unless only --direct is given)",
    )
    parser.add_argument(
        "--key",
        help="the key sent through Envoy and to the agent directly (default: "
        "$PROVEAI_API_KEY, then the first of ENVOY_API_KEYS in --env); the environment "
        "variable keeps it out of the process list",
    )
    parser.add_argument(
        "--user",
        help="send the key as the password of Basic auth for USER (Envoy's AUTH_MODE=basic)",
    )
    parser.add_argument(
        "--direct",
        nargs="+",
        metavar="NAME=URL",
        help="reach components at these URLs instead: "
        + ", ".join(f"{name}=URL" for name in DIRECT_NAMES),
    )
    parser.add_argument(
        "--cacert", type=Path, help="trust this PEM certificate for Envoy's TLS listeners"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds each request may take (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--first-metric-timeout",
        type=float,
        default=DEFAULT_FIRST_METRIC_TIMEOUT_S,
        help="seconds to wait for the test span's series; 0 sends no span "
        f"(default {DEFAULT_FIRST_METRIC_TIMEOUT_S:g})",
    )


def _key(args: argparse.Namespace, plan: Plan) -> tuple[str | None, str]:
    """The key and where it came from (never the key itself in the second)."""
    if args.key:
        return args.key, "key from --key"
    if os.environ.get("PROVEAI_API_KEY"):
        return os.environ["PROVEAI_API_KEY"], "key from PROVEAI_API_KEY"
    if plan.through_envoy and args.env.is_file():
        try:
            env = parse_env_file(args.env)
        except (OSError, EnvFileError):
            env = {}
        keys = [k.strip() for k in env.get("ENVOY_API_KEYS", "").split(",") if k.strip()]
        if keys:
            return keys[0], f"the first key of ENVOY_API_KEYS in {args.env}"
    return None, "no key"


def credential_headers(key: str | None, user: str | None) -> dict[str, str]:
    """The headers that carry the key: X-API-Key, or Basic auth when a user is named."""
    if key is None:
        return {}
    if user is not None:
        token = base64.b64encode(f"{user}:{key}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {"X-API-Key": key}


def run(args: argparse.Namespace) -> int:
    """Check the stack and print the table: 0 when everything of the profile answers."""
    try:
        plan = build_plan(args.env, args.envoy, args.direct)
    except CheckError as exc:
        print(f"stack check: {exc}", file=sys.stderr)
        return 1
    context = None
    if args.cacert is not None:
        try:
            context = ssl.create_default_context(cafile=str(args.cacert))
        except (OSError, ssl.SSLError) as exc:
            print(f"stack check: cannot read {args.cacert}: {exc}", file=sys.stderr)
            return 1
    key, key_from = _key(args, plan)
    if args.user is not None:
        key_from += f" as Basic auth for {args.user}"
    report = asyncio.run(
        check(
            plan,
            credential_headers(key, args.user),
            timeout_s=args.timeout,
            first_metric_timeout_s=args.first_metric_timeout,
            ssl_context=context,
        )
    )
    text = format_report(report, key_from)
    if key:
        text = text.replace(key, "[key]")
    print(text)
    return 0 if report.ok else 1
