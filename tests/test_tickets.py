"""Tickets from cases, against a local server that checks requests as GitHub and Jira do."""

from __future__ import annotations

import base64
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from proveai_agent.tickets import TicketConfig, TicketError, create_ticket

GITHUB_TOKEN = "ghp_test0123456789abcdefghijklmnopqrstuv"
JIRA_TOKEN = "jira-pat-0123456789abcdef"
JIRA_USER, JIRA_PASSWORD = "ops", "s3cret-pass"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


class FakeTracker:
    """GitHub's create-an-issue and Jira v2's create-issue endpoints on one loopback port.

    Requests are checked as the APIs document them; every departure is recorded in
    `problems` and answered 400. `fail` queues answers that come before the normal one.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.scripted: list[tuple[int, Any, dict[str, str]]] = []
        self.issues = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    def fail(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.scripted.append((status, body, headers or {}))

    async def start(self) -> None:
        app = web.Application()
        for prefix in ("", "/api/v3"):
            app.router.add_post(prefix + "/repos/{owner}/{repo}/issues", self.github)
        for prefix in ("", "/jira"):
            app.router.add_post(prefix + "/rest/api/2/issue", self.jira)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _record(self, request: web.Request) -> tuple[Any, web.Response | None]:
        text = await request.text()
        entry = {
            "method": request.method,
            "path": request.path,
            "headers": dict(request.headers),
            "text": text,
        }
        self.requests.append(entry)
        if self.scripted:
            status, body, headers = self.scripted.pop(0)
            return None, web.json_response(body, status=status, headers=headers)
        if request.content_type != "application/json":
            return None, self._problem(f"content type {request.content_type}", 415)
        try:
            entry["json"] = await request.json()
        except ValueError:
            return None, self._problem("body is not JSON")
        return entry["json"], None

    def _problem(self, text: str, status: int = 400) -> web.Response:
        self.problems.append(text)
        return web.json_response({"message": text}, status=status)

    async def github(self, request: web.Request) -> web.Response:
        body, answer = await self._record(request)
        if answer is not None:
            return answer
        headers = request.headers
        if headers.get("Authorization") != f"Bearer {GITHUB_TOKEN}":
            return web.json_response(
                {
                    "message": "Bad credentials",
                    "documentation_url": "https://docs.github.com/rest",
                },
                status=401,
            )
        if headers.get("Accept") != "application/vnd.github+json":
            return self._problem(f"Accept {headers.get('Accept')}")
        if headers.get("X-GitHub-Api-Version") != "2022-11-28":
            return self._problem("X-GitHub-Api-Version missing")
        if not headers.get("User-Agent"):
            return self._problem("User-Agent missing")
        if not isinstance(body, dict) or set(body) - {"title", "body", "labels"}:
            return self._problem(f"unexpected fields {body!r:.200}")
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            return web.json_response(
                {
                    "message": "Validation Failed",
                    "errors": [
                        {"resource": "Issue", "code": "missing_field", "field": "title"}
                    ],
                },
                status=422,
            )
        if not isinstance(body.get("body"), str) or len(body["body"]) > 65536:
            return self._problem("body must be a string of at most 65536 characters")
        labels = body.get("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            return self._problem("labels must be an array of strings")

        self.issues += 1
        owner, repo = request.match_info["owner"], request.match_info["repo"]
        web_root = (
            "https://github.com" if not request.path.startswith("/api/v3/") else self.base
        )
        return web.json_response(
            {
                "id": 1000 + self.issues,
                "number": self.issues,
                "url": f"{self.base}/repos/{owner}/{repo}/issues/{self.issues}",
                "html_url": f"{web_root}/{owner}/{repo}/issues/{self.issues}",
                "state": "open",
                "title": title,
                "created_at": "2025-01-02T03:04:05Z",
            },
            status=201,
        )

    async def jira(self, request: web.Request) -> web.Response:
        body, answer = await self._record(request)
        if answer is not None:
            return answer
        basic = base64.b64encode(f"{JIRA_USER}:{JIRA_PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") not in (
            f"Bearer {JIRA_TOKEN}",
            f"Basic {basic}",
        ):
            return web.Response(status=401, text="Unauthorized")
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict) or set(body) != {"fields"}:
            return self._problem("the body must be {fields: {...}}")
        if not isinstance((fields.get("project") or {}).get("key"), str):
            return self._problem("fields.project.key must be a string")
        if not isinstance((fields.get("issuetype") or {}).get("name"), str):
            return self._problem("fields.issuetype.name must be a string")
        if not isinstance(fields.get("description"), str):
            return self._problem("fields.description must be a string")
        summary = fields.get("summary")
        errors: dict[str, str] = {}
        if not isinstance(summary, str) or not summary:
            errors["summary"] = "You must specify a summary of the issue."
        elif len(summary) > 255:
            errors["summary"] = "Summary must be less than 255 characters."
        elif "\n" in summary or "\r" in summary:
            errors["summary"] = "The summary is invalid because it contains newline characters."
        for label in fields.get("labels", []):
            if not isinstance(label, str) or " " in label:
                errors["labels"] = f"The label '{label}' contains spaces which is invalid."
        if errors:
            self.problems.append(str(errors))
            return web.json_response({"errorMessages": [], "errors": errors}, status=400)

        self.issues += 1
        key = f"{fields['project']['key']}-{self.issues}"
        prefix = "/jira" if request.path.startswith("/jira/") else ""
        issue_id = str(10000 + self.issues)
        return web.json_response(
            {
                "id": issue_id,
                "key": key,
                "self": f"{self.base}{prefix}/rest/api/2/issue/{issue_id}",
            },
            status=201,
        )


@pytest.fixture
async def tracker() -> AsyncIterator[FakeTracker]:
    server = FakeTracker()
    await server.start()
    yield server
    await server.stop()


def a_case(**overrides: Any) -> dict[str, Any]:
    case: dict[str, Any] = {
        "id": "CASE-3",
        "title": "Retrieval drift in rag-api / retrieve",
        "state": "REMEDIATION_SUGGESTED",
        "severity": "high",
        "advisory": False,
        "service": "rag-api",
        "opened_at": "2025-01-02T03:00:00.000Z",
        "updated_at": "2025-01-02T03:05:00.000Z",
        "trigger": "quality_drop",
        "failure_class": "RETRIEVAL_DRIFT",
        "class_scores": {"RETRIEVAL_DRIFT": 0.82, "HALLUCINATION": 0.31},
        "signals": [],
        "context_snapshot": {"prompts": [{"text": "PROMPT-SECRET what is our refund policy"}]},
        "recent_changes": [
            {
                "id": "chg-1",
                "at": "2025-01-02T02:40:00.000Z",
                "service": "rag-api",
                "kind": "attribute",
                "summary": "gen_ai.embeddings.model changed",
                "source": "spans",
                "correlated": True,
            },
            {
                "id": "chg-2",
                "at": "2025-01-01T10:00:00.000Z",
                "service": "billing",
                "kind": "deploy",
                "summary": "unrelated deploy",
                "source": "api",
                "correlated": False,
            },
        ],
        "hypotheses": [
            {
                "cause_id": "prompt",
                "hypothesis": "The prompt template changed",
                "confidence": 0.2,
            },
            {
                "cause_id": "embedding_model_changed",
                "hypothesis": "The embedding model changed under the index",
                "confidence": 0.74,
                "evidence": ["change: gen_ai.embeddings.model changed"],
            },
        ],
        "remediation_suggestions": [
            {
                "id": "CASE-3-S1",
                "cause_id": "embedding_model_changed",
                "hypothesis": "The embedding model changed under the index",
                "action": "Roll back the embedding model or re-index",
                "effort": "medium",
                "confidence": 0.74,
                "similar_case": None,
                "verification": {
                    "query": 'avg(score{service_name="rag-api"})',
                    "comparator": ">=",
                    "threshold": 0.7,
                    "window_s": 300,
                },
            }
        ],
        "narrative": "",
        "timeline": [],
        "resolution": None,
        "tickets": [],
    }
    case.update(overrides)
    return case


def github_config(tracker: FakeTracker, **overrides: Any) -> TicketConfig:
    config = TicketConfig(
        github_url=tracker.base,
        github_repo="acme/rag-app",
        github_token=GITHUB_TOKEN,
        backoff_s=0.01,
        timeout_s=5,
        case_url="http://agent.example:8470/api/cases",
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def jira_config(tracker: FakeTracker, **overrides: Any) -> TicketConfig:
    config = TicketConfig(
        jira_url=f"{tracker.base}/jira",
        jira_project="RAG",
        jira_token=JIRA_TOKEN,
        backoff_s=0.01,
        timeout_s=5,
        case_url="http://agent.example:8470/api/cases",
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


async def test_github_issue_is_created_with_the_documented_request(
    tracker: FakeTracker,
) -> None:
    ticket = await create_ticket(github_config(tracker), "github", a_case())

    assert tracker.problems == []
    assert {k: v for k, v in ticket.items() if k != "created_at"} == {
        "system": "github",
        "number": 1,
        "url": "https://github.com/acme/rag-app/issues/1",
    }
    assert RFC3339.match(ticket["created_at"])
    [request] = tracker.requests
    assert request["method"] == "POST"
    assert request["path"] == "/repos/acme/rag-app/issues"
    assert request["headers"]["Accept"] == "application/vnd.github+json"
    assert request["headers"]["Authorization"] == f"Bearer {GITHUB_TOKEN}"
    assert request["headers"]["X-GitHub-Api-Version"] == "2022-11-28"
    assert request["headers"]["Content-Type"].startswith("application/json")
    body = request["json"]
    assert body["title"] == "[CASE-3] Retrieval drift in rag-api / retrieve"
    assert body["labels"] == ["proveai", "retrieval_drift", "severity-high"]


async def test_github_body_carries_the_case_in_markdown(tracker: FakeTracker) -> None:
    await create_ticket(github_config(tracker), "github", a_case())

    lines = tracker.requests[0]["json"]["body"].splitlines()
    assert "- **Severity:** high" in lines
    assert "- **Service:** rag-api" in lines
    assert "- **Failure class:** RETRIEVAL\\_DRIFT" in lines
    assert "| RETRIEVAL\\_DRIFT | 0.82 |" in lines
    assert "| HALLUCINATION | 0.31 |" in lines
    # Hypotheses by confidence, the highest first.
    hypotheses = [line for line in lines if re.match(r"^\d\. ", line)]
    assert hypotheses == [
        "1. The embedding model changed under the index (confidence 0.74)",
        "2. The prompt template changed (confidence 0.20)",
    ]
    assert (
        "- **Roll back the embedding model or re-index** (effort medium, confidence 0.74)"
        in lines
    )
    assert '  - verification: ` avg(score{service_name="rag-api"}) `' in lines
    # Only the correlated change is listed.
    assert any("gen\\_ai.embeddings.model changed" in line for line in lines)
    assert not any("unrelated deploy" in line for line in lines)
    assert "Case: <http://agent.example:8470/api/cases/CASE-3>" in lines
    body = "\n".join(lines)
    assert "PROMPT-SECRET" not in body
    assert GITHUB_TOKEN not in body


async def test_github_enterprise_base_url_keeps_its_api_prefix(tracker: FakeTracker) -> None:
    config = github_config(tracker, github_url=f"{tracker.base}/api/v3/")

    ticket = await create_ticket(config, "github", a_case())

    assert tracker.problems == []
    assert tracker.requests[0]["path"] == "/api/v3/repos/acme/rag-app/issues"
    assert ticket["url"] == f"{tracker.base}/acme/rag-app/issues/1"
    assert ticket["number"] == 1


async def test_jira_issue_with_a_personal_access_token(tracker: FakeTracker) -> None:
    ticket = await create_ticket(jira_config(tracker), "jira", a_case())

    assert tracker.problems == []
    assert {k: v for k, v in ticket.items() if k != "created_at"} == {
        "system": "jira",
        "key": "RAG-1",
        "url": f"{tracker.base}/jira/browse/RAG-1",
    }
    [request] = tracker.requests
    assert request["method"] == "POST"
    assert request["path"] == "/jira/rest/api/2/issue"
    assert request["headers"]["Authorization"] == f"Bearer {JIRA_TOKEN}"
    assert request["headers"]["Content-Type"].startswith("application/json")
    fields = request["json"]["fields"]
    assert fields["project"] == {"key": "RAG"}
    assert fields["issuetype"] == {"name": "Bug"}
    assert fields["summary"] == "[CASE-3] Retrieval drift in rag-api / retrieve"
    assert fields["labels"] == ["proveai", "retrieval_drift", "severity-high"]
    lines = fields["description"].splitlines()
    assert "* *Severity:* high" in lines
    assert "||class||score||" in lines
    assert "|RETRIEVAL\\_DRIFT|0.82|" in lines
    assert "h3. Hypotheses" in lines
    assert "# The embedding model changed under the index (confidence 0.74)" in lines
    query = lines.index('avg(score{service_name="rag-api"})')
    assert lines[query - 1] == lines[query + 1] == "{noformat}"
    assert "Case: [http://agent.example:8470/api/cases/CASE-3]" in lines
    assert JIRA_TOKEN not in fields["description"]


async def test_jira_issue_with_basic_auth(tracker: FakeTracker) -> None:
    config = jira_config(
        tracker, jira_token=None, jira_user=JIRA_USER, jira_password=JIRA_PASSWORD
    )

    ticket = await create_ticket(config, "jira", a_case())

    assert ticket["key"] == "RAG-1"
    expected = base64.b64encode(b"ops:s3cret-pass").decode()
    assert tracker.requests[0]["headers"]["Authorization"] == f"Basic {expected}"


async def test_5xx_is_retried_until_it_succeeds(tracker: FakeTracker) -> None:
    tracker.fail(503, {"message": "Service Unavailable"})
    tracker.fail(503, {"message": "Service Unavailable"})

    ticket = await create_ticket(github_config(tracker, retries=3), "github", a_case())

    assert ticket["number"] == 1
    assert len(tracker.requests) == 3


async def test_429_waits_as_long_as_retry_after_says(tracker: FakeTracker) -> None:
    tracker.fail(429, {"message": "rate limited"}, {"Retry-After": "0"})
    config = github_config(tracker, retries=1, backoff_s=30)

    started = time.monotonic()
    ticket = await create_ticket(config, "github", a_case())

    assert time.monotonic() - started < 5  # Retry-After 0, not the 30 s backoff
    assert ticket["number"] == 1
    assert len(tracker.requests) == 2


async def test_bad_credentials_fail_at_once_with_the_servers_message(
    tracker: FakeTracker,
) -> None:
    config = github_config(tracker, github_token="wrong-token-value")

    with pytest.raises(TicketError) as raised:
        await create_ticket(config, "github", a_case())

    message = str(raised.value)
    assert message.startswith("github: HTTP 401")
    assert "Bad credentials" in message
    assert "wrong-token-value" not in message
    assert len(tracker.requests) == 1


async def test_jira_field_error_fails_at_once_with_the_field(tracker: FakeTracker) -> None:
    tracker.fail(
        400, {"errorMessages": [], "errors": {"summary": "Field 'summary' is required"}}
    )

    with pytest.raises(TicketError) as raised:
        await create_ticket(jira_config(tracker), "jira", a_case())

    message = str(raised.value)
    assert message.startswith("jira: HTTP 400")
    assert "summary: Field 'summary' is required" in message
    assert len(tracker.requests) == 1


async def test_a_server_that_keeps_failing_gives_up_after_every_retry(
    tracker: FakeTracker,
) -> None:
    for _ in range(3):
        tracker.fail(502, {"message": "Bad Gateway"})

    with pytest.raises(TicketError) as raised:
        await create_ticket(github_config(tracker, retries=2), "github", a_case())

    assert "HTTP 502" in str(raised.value)
    assert "Bad Gateway" in str(raised.value)
    assert "3 attempts" in str(raised.value)
    assert len(tracker.requests) == 3


async def test_an_unreachable_server_is_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = TicketConfig(
        github_url=f"http://127.0.0.1:{port}",
        github_repo="acme/rag-app",
        github_token=GITHUB_TOKEN,
        retries=1,
        backoff_s=0.01,
    )

    with pytest.raises(TicketError) as raised:
        await create_ticket(config, "github", a_case())

    assert str(raised.value).startswith(f"github: no answer from http://127.0.0.1:{port}/")
    assert "2 attempts" in str(raised.value)


@pytest.mark.parametrize(
    ("system", "config"),
    [
        ("github", TicketConfig(github_repo="acme/rag-app")),
        ("github", TicketConfig(github_token=GITHUB_TOKEN)),
        ("github", TicketConfig(github_repo="not a repo", github_token=GITHUB_TOKEN)),
        ("jira", TicketConfig(jira_url="http://jira", jira_token=JIRA_TOKEN)),
        ("jira", TicketConfig(jira_url="http://jira", jira_project="RAG", jira_user="ops")),
        ("gitlab", TicketConfig(github_repo="acme/rag-app", github_token=GITHUB_TOKEN)),
    ],
)
async def test_not_configured_is_refused_without_a_request(
    system: str, config: TicketConfig
) -> None:
    with pytest.raises(TicketError) as raised:
        await create_ticket(config, system, a_case())

    assert system in str(raised.value)


HOSTILE = (
    "evil\r\n# Heading\n<script>alert(1)</script> ![x](http://evil.example/p.png) "
    "@everyone [~admin] {html}<b>x</b>{html} `code` \\ "
) + "A" * 10_000


async def test_a_hostile_title_stays_one_inert_line_in_github(tracker: FakeTracker) -> None:
    await create_ticket(github_config(tracker), "github", a_case(title=HOSTILE))

    assert tracker.problems == []
    sent = tracker.requests[0]["json"]
    assert sent["title"].startswith("[CASE-3] evil # Heading <script>")
    assert len(sent["title"]) <= 255
    assert "\n" not in sent["title"] and "\r" not in sent["title"]
    body = sent["body"]
    assert len(body) <= 65536
    assert not any(line.startswith("#") and "Heading" in line for line in body.splitlines())
    for construct in ("<script>", "![", "@everyone", "`code`"):
        assert re.search(r"(?<!\\)" + re.escape(construct), body) is None, construct
    assert "\\<script\\>" in body
    assert "A" * 600 not in body  # one value is cut well short of 10 000 characters


async def test_a_hostile_title_stays_one_inert_line_in_jira(tracker: FakeTracker) -> None:
    await create_ticket(jira_config(tracker), "jira", a_case(title=HOSTILE))

    assert tracker.problems == []
    fields = tracker.requests[0]["json"]["fields"]
    assert fields["summary"].startswith("[CASE-3] evil # Heading")
    assert len(fields["summary"]) <= 255
    description = fields["description"]
    for construct in ("{html}", "!http", "[~admin"):
        assert re.search(r"(?<!\\)" + re.escape(construct), description) is None, construct
    assert "\\\\" not in description  # a doubled backslash would be a line break
    assert "A" * 600 not in description


async def test_an_oversized_case_is_cut_and_keeps_the_link_back(tracker: FakeTracker) -> None:
    scores = {f"CLASS_{index:05d}_" + "X" * 20: 0.5 for index in range(5000)}

    await create_ticket(github_config(tracker), "github", a_case(class_scores=scores))
    await create_ticket(jira_config(tracker), "jira", a_case(class_scores=scores))

    assert tracker.problems == []
    body = tracker.requests[0]["json"]["body"]
    description = tracker.requests[1]["json"]["fields"]["description"]
    assert len(body) <= 65536
    assert len(description) <= 32767
    for text, link in (
        (body, "Case: <http://agent.example:8470/api/cases/CASE-3>"),
        (description, "Case: [http://agent.example:8470/api/cases/CASE-3]"),
    ):
        assert "(truncated)" in text
        assert text.splitlines()[-1] == link
