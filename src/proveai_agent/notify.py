"""Tells Alertmanager and a webhook when a case opens, escalates, fails verification or ends.

`Notifier.notify` only queues: a slow or unreachable receiver never holds up the case
that caused the message. Each receiver has its own bounded queue and sender, so one that
hangs does not delay the other; when a queue is full the oldest message is dropped.

Alertmanager identifies an alert by its labels, and the labels include the event and the
severity, so one case may fire several alerts. The notifier remembers the alerts it fired
for each case and, when the case is resolved, sends them all again with `endsAt` set to
now, which clears them. Known limitation: alerts are sent once, not re-sent; Alertmanager
considers an alert without `endsAt` resolved after its `resolve_timeout` (5 minutes by
default), so set that longer than the cases are expected to stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .cases.service import rfc3339, summary

logger = logging.getLogger(__name__)

EVENTS = ("opened", "escalated", "verification_failed", "resolved")
ALERTNAME = "ProveAICase"
DESCRIPTION_LIMIT = 2000
TRACKED_CASES = 10_000
"""Cases whose fired alerts are remembered for clearing; the oldest are forgotten first."""
MAX_RETRY_AFTER_S = 60.0


@dataclass
class NotifyConfig:
    """Where notifications go and how hard to try.

    Args:
        alertmanager_url: Alertmanager's root, e.g. http://alertmanager:9093; user and
            password in the URL are sent as Basic auth.
        webhook_url: where the generic JSON message is posted.
        webhook_authorization: the Authorization header value sent to the webhook.
        timeout_s: the limit of one request, connecting included.
        retries: attempts after the first on connection errors, timeouts, 429 and 5xx.
        backoff_s: the wait before the first retry; it doubles with each one.
        case_url: the base of the link to a case, e.g. http://agent:8470/api/cases.
        queue_size: messages waiting per receiver before the oldest is dropped.
    """

    alertmanager_url: str | None = None
    webhook_url: str | None = None
    webhook_authorization: str | None = None
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 0.5
    case_url: str | None = None
    queue_size: int = 1000


@dataclass
class _Message:
    event: str
    case_id: str
    payload: Any


class _Receiver:
    """One destination: its URL, headers and queue of messages to deliver."""

    def __init__(self, name: str, url: str, headers: dict[str, str], size: int) -> None:
        self.name = name
        self.url = url
        self.headers = headers
        self.queue: asyncio.Queue[_Message] = asyncio.Queue(maxsize=max(1, size))
        self.shown = redact(url)

    def put(self, message: _Message) -> None:
        if self.queue.full():
            dropped = self.queue.get_nowait()
            self.queue.task_done()
            logger.warning(
                "%s queue full (%d): dropped the %s message of %s",
                self.name,
                self.queue.maxsize,
                dropped.event,
                dropped.case_id,
            )
        self.queue.put_nowait(message)


class Notifier:
    """Queues case events and delivers them; run `run()` as a task for the sending."""

    def __init__(self, config: NotifyConfig) -> None:
        self.config = config
        self.receivers: list[_Receiver] = []
        if config.alertmanager_url:
            url = f"{config.alertmanager_url.rstrip('/')}/api/v2/alerts"
            self._alertmanager: _Receiver | None = _Receiver(
                "alertmanager", url, {}, config.queue_size
            )
            self.receivers.append(self._alertmanager)
        else:
            self._alertmanager = None
        if config.webhook_url:
            headers = {}
            if config.webhook_authorization:
                headers["Authorization"] = config.webhook_authorization
            self._webhook: _Receiver | None = _Receiver(
                "webhook", config.webhook_url, headers, config.queue_size
            )
            self.receivers.append(self._webhook)
        else:
            self._webhook = None
        self._fired: OrderedDict[str, dict[tuple[tuple[str, str], ...], str]] = OrderedDict()
        """Per case, the label sets of the alerts fired and their startsAt."""

    def notify(self, event: str, case: dict[str, Any]) -> None:
        """Queue `event` ("opened", "escalated", "verification_failed", "resolved") for
        `case` as it is now. Never blocks and never raises; call it from the event loop."""
        try:
            if event not in EVENTS:
                raise ValueError(f"unknown event {event!r}")
            case_id = str(case["id"])
            if self._alertmanager is not None:
                alerts = self._alerts(event, case)
                self._alertmanager.put(_Message(event, case_id, alerts))
            if self._webhook is not None:
                body = {"event": event, "case": summary(case)}
                self._webhook.put(_Message(event, case_id, body))
        except Exception as exc:
            logger.warning("notification of %s for a case not queued: %s", event, exc)

    async def run(self) -> None:
        """Deliver queued messages until cancelled, one sender per receiver."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._send_loop(r, session) for r in self.receivers))

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued message is delivered or given up; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                for receiver in self.receivers:
                    await receiver.queue.join()
        except TimeoutError:
            return False
        return True

    async def _send_loop(self, receiver: _Receiver, session: aiohttp.ClientSession) -> None:
        while True:
            message = await receiver.queue.get()
            try:
                await self._deliver(receiver, message, session)
            except Exception:
                logger.exception("%s: delivering to %s failed", receiver.name, receiver.shown)
            finally:
                receiver.queue.task_done()

    async def _deliver(
        self, receiver: _Receiver, message: _Message, session: aiohttp.ClientSession
    ) -> None:
        """POST one message, retrying connection errors, timeouts, 429 and 5xx."""
        attempts = max(0, self.config.retries) + 1
        for attempt in range(attempts):
            wait = self.config.backoff_s * 2**attempt
            try:
                async with session.post(
                    receiver.url,
                    json=message.payload,
                    headers=receiver.headers,
                    allow_redirects=False,
                ) as response:
                    text = await response.text(errors="replace")
                    if 200 <= response.status < 300:
                        logger.debug(
                            "%s: %s of %s sent", receiver.name, message.event, message.case_id
                        )
                        return
                    outcome = f"HTTP {response.status}: {' '.join(text.split())[:300]}"
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                    if response.status != 429 and response.status < 500:
                        break
                    if retry_after is not None:
                        wait = min(retry_after, MAX_RETRY_AFTER_S)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = f"no answer: {str(exc) or type(exc).__name__}"
            if attempt + 1 < attempts:
                logger.debug("%s: %s, retrying in %.2f s", receiver.shown, outcome, wait)
                await asyncio.sleep(wait)
        logger.warning(
            "%s: the %s message of %s was not delivered to %s: %s",
            receiver.name,
            message.event,
            message.case_id,
            receiver.shown,
            outcome,
        )

    def _alerts(self, event: str, case: dict[str, Any]) -> list[dict[str, Any]]:
        """The Alertmanager v2 alerts for an event: one firing alert, or for "resolved"
        every alert fired for the case, ended now."""
        now = rfc3339(time.time())
        case_id = str(case["id"])
        annotations = self._annotations(event, case)
        link = _case_link(case_id, self.config.case_url)

        if event == "resolved":
            fired = self._fired.pop(case_id, None)
            if not fired:
                labels = _labels("opened", case)
                fired = {tuple(sorted(labels.items())): str(case.get("opened_at") or now)}
            return [
                _alert(dict(key), annotations, starts_at, link, ends_at=now)
                for key, starts_at in fired.items()
            ]

        labels = _labels(event, case)
        starts_at = str(case.get("opened_at") or now) if event == "opened" else now
        known = self._fired.setdefault(case_id, {})
        self._fired.move_to_end(case_id)
        starts_at = known.setdefault(tuple(sorted(labels.items())), starts_at)
        while len(self._fired) > TRACKED_CASES:
            self._fired.popitem(last=False)
        return [_alert(labels, annotations, starts_at, link)]

    def _annotations(self, event: str, case: dict[str, Any]) -> dict[str, str]:
        case_id = str(case["id"])
        annotations = {
            "summary": f"{case_id} {event.replace('_', ' ')}: {_one_line(case.get('title'))}",
            "description": _description(case)[:DESCRIPTION_LIMIT],
        }
        link = _case_link(case_id, self.config.case_url)
        if link:
            annotations["case_url"] = link
        return annotations


def _alert(
    labels: dict[str, str],
    annotations: dict[str, str],
    starts_at: str,
    link: str | None,
    ends_at: str | None = None,
) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": starts_at,
    }
    if ends_at is not None:
        alert["endsAt"] = ends_at
    if link:
        alert["generatorURL"] = link
    return alert


def _labels(event: str, case: dict[str, Any]) -> dict[str, str]:
    """The alert's identity; a label with no value is left out, as Prometheus does."""
    labels = {
        "alertname": ALERTNAME,
        "case": str(case["id"]),
        "service": _one_line(case.get("service")),
        "severity": _one_line(case.get("severity")),
        "failure_class": _one_line(case.get("failure_class")),
        "event": event,
    }
    return {name: value for name, value in labels.items() if value}


def _description(case: dict[str, Any]) -> str:
    """One paragraph for the alert: severity, class, service and the leading hypothesis."""
    parts = [
        f"Severity {_one_line(case.get('severity')) or 'unknown'}",
        f"state {_one_line(case.get('state')) or 'unknown'}",
        f"service {_one_line(case.get('service')) or 'unknown'}",
        f"class {_one_line(case.get('failure_class')) or 'undetermined'}",
    ]
    hypotheses = [h for h in case.get("hypotheses") or [] if isinstance(h, dict)]
    if hypotheses:
        top = max(hypotheses, key=lambda h: _float(h.get("confidence")))
        parts.append(
            f"leading hypothesis: {_one_line(top.get('hypothesis'))} "
            f"(confidence {_float(top.get('confidence')):.2f})"
        )
    suggestions = [s for s in case.get("remediation_suggestions") or [] if isinstance(s, dict)]
    if suggestions:
        parts.append(f"suggested: {_one_line(suggestions[0].get('action'))}")
    return "; ".join(parts) + "."


def _case_link(case_id: str, case_url: str | None) -> str | None:
    return f"{case_url.rstrip('/')}/{case_id}" if case_url else None


def _one_line(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _retry_after(value: str | None) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, float(value)) if value else None
    return None


def redact(url: str) -> str:
    """The URL as logs show it: without user, password, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<unparseable URL>"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
