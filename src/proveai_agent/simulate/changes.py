"""Plays a scenario's changes: deploy markers to the agent, file edits, attribute values.

Deploy markers go to the agent's `POST /api/changes`, as a CI/CD job would send them.
File edits rewrite files in the run's workspace, one folder per service, which the
agent records when its `watch_files` points there. Attribute changes make the matching
spans carry a new value from then on.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proveai_agent.simulate.library import WORKSPACE, PlannedChange, Scenario, suffixed

POST_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class AgentApi:
    """Where deploy markers are posted, the key they are posted with and the CA (PEM) that
    an https:// agent's certificate must chain to (None: the system's store)."""

    url: str | None
    key: str | None
    ca_file: str | None = None

    def tls(self) -> ssl.SSLContext | None:
        """The context that checks the agent's certificate; None for plain HTTP."""
        if self.ca_file is None and not (self.url or "").startswith("https:"):
            return None
        return ssl.create_default_context(cafile=self.ca_file)


def agent_api(agent: str | None, api_key: str | None, ca_file: str | None = None) -> AgentApi:
    """The agent's API from the options, else from the standard OTLP exporter variables."""
    url = agent
    if url is None:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        url = endpoint or None
    if url is not None:
        url = url.rstrip("/").removesuffix("/v1/traces")
    key = api_key
    if key is None:
        key = _header_key(os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
    if ca_file is None:
        ca_file = os.environ.get("OTEL_EXPORTER_OTLP_CERTIFICATE") or None
    return AgentApi(url, key, ca_file)


def _header_key(headers: str) -> str | None:
    """The API key in an OTEL_EXPORTER_OTLP_HEADERS value (`k=v,k=v`, values URL-encoded)."""
    for item in headers.split(","):
        name, _, value = item.partition("=")
        name, value = name.strip().lower(), urllib.parse.unquote(value.strip())
        if name == "x-api-key" and value:
            return value
        if name == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip() or None
    return None


class ChangePlayer:
    """The changes of one scenario run, played at their times.

    Args:
        scenario: the scenario whose changes are played.
        onset_s: seconds into the run at which the failure starts; change times are
            relative to it, and one due before the run starts is played at once.
        suffix: the run's service-name suffix, if any.
        workdir: where the services' files live; None for a new temporary folder.
        api: where deploy markers go.
    """

    def __init__(
        self,
        scenario: Scenario,
        onset_s: float,
        suffix: str | None,
        workdir: Path | None,
        api: AgentApi,
    ) -> None:
        self.scenario = scenario
        self.suffix = suffix
        self.api = api
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="proveai-scenario-"))
        self._pending = [
            (max(0.0, onset_s + change.at_s), change)
            for change in scenario.changes
            if not (change.planted and change.kind == "attribute")
        ]
        self._attributes: dict[str, tuple[tuple[str, str, Any], ...]] = {}
        self._prepare_workspace()

    def folder(self, service: str) -> Path:
        """The folder of one (base-named) service's files in this run."""
        return self.workdir / suffixed(service, self.suffix)

    def _prepare_workspace(self) -> None:
        """Give each service the workspace's files; a file already as it should be is not
        rewritten, so an agent watching a reused folder sees no change."""
        for template in sorted(WORKSPACE.iterdir()):
            if not template.is_dir():
                continue
            target = self.folder(template.name)
            for source in sorted(template.rglob("*")):
                if not source.is_file():
                    continue
                destination = target / source.relative_to(template)
                destination.parent.mkdir(parents=True, exist_ok=True)
                if not destination.exists() or destination.read_bytes() != source.read_bytes():
                    shutil.copyfile(source, destination)

    def next_s(self) -> float | None:
        """When the next change is due, in seconds into the run; None when all are played."""
        return min((at for at, _ in self._pending), default=None)

    def play_due(self, elapsed_s: float) -> list[str]:
        """Play the changes due by `elapsed_s`; returns a line for each."""
        due = [(at, change) for at, change in self._pending if at <= elapsed_s]
        self._pending = [(at, change) for at, change in self._pending if at > elapsed_s]
        return [self._play(change) for _, change in due]

    def attributes(self, service: str) -> tuple[tuple[str, str, Any], ...]:
        """The attribute values changed so far on `service` (its name in this run)."""
        return self._attributes.get(service, ())

    def _play(self, change: PlannedChange) -> str:
        service = suffixed(change.service, self.suffix)
        if change.kind == "deploy":
            return self._post_marker(service, change)
        if change.kind == "file":
            return self._edit(change)
        assert change.span and change.key and change.value is not None
        item = (change.span, change.key, change.value)
        self._attributes[service] = (*self._attributes.get(service, ()), item)
        return f"change: {service} spans {change.span} now carry {change.key}={change.value}"

    def _edit(self, change: PlannedChange) -> str:
        assert change.path is not None
        path = self.folder(change.service) / change.path
        text = path.read_text()
        for old, new in change.replace:
            text = text.replace(old, new)
        if change.append:
            text += change.append
        path.write_text(text)
        return f"change: edited {path}"

    def _post_marker(self, service: str, change: PlannedChange) -> str:
        what = f"deploy marker for {service}: {change.summary}"
        if self.api.url is None:
            return f"change: {what} (not sent: no agent URL; pass --agent)"
        body: dict[str, Any] = {"kind": "deploy", "service": service, "summary": change.summary}
        if change.version:
            body["version"] = change.version
        request = urllib.request.Request(
            f"{self.api.url}/api/changes",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if self.api.key:
            request.add_header("X-API-Key", self.api.key)
        try:
            with urllib.request.urlopen(
                request, timeout=POST_TIMEOUT_S, context=self.api.tls()
            ) as response:
                response.read()
        except urllib.error.HTTPError as error:
            return f"change: {what} (refused: HTTP {error.code} {error.read()[:200]!r})"
        except OSError as error:
            return f"change: {what} (not sent: {error})"
        return f"change: {what}"
