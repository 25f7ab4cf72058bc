"""Opens an issue for a case in GitHub (or GitHub Enterprise Server) or Jira Server/DC.

The ticket carries what an engineer needs to pick the case up elsewhere: its failure class
and scores, severity, service, leading hypotheses, suggestions with their verification
queries, correlated changes and a link back to the case. Prompts, outputs and retrieved
chunks stay in the agent; so do the credentials. Every value taken from the case is
escaped for the markup of the target (GitHub Markdown or Jira wiki text), so a hostile
title cannot add headings, links, images, HTML or mentions.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from .cases.service import rfc3339

logger = logging.getLogger(__name__)

SYSTEMS = ("github", "jira")
TITLE_LIMIT = 255
"""Jira's summary limit; GitHub titles are kept to it too."""
GITHUB_BODY_LIMIT = 65_536
JIRA_BODY_LIMIT = 32_767
"""Jira's default limit of a text field."""
FIELD_LIMIT = 500
"""Characters kept of one value from the case (an action, a hypothesis, a query)."""
MAX_RETRY_AFTER_S = 60.0
"""A server asking to wait longer than this fails the attempt instead."""
MAX_HYPOTHESES = 3
MAX_SUGGESTIONS = 5
MAX_CHANGES = 5
USER_AGENT = "proveai-agent"

_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_SPACE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#!|~&@$])")
_JIRA_SPECIAL = re.compile(r"([*_\-+^~?{}\[\]|!#])")
_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")


class TicketError(Exception):
    """A ticket could not be created; the message names the system, status and reason."""


class TicketNotConfigured(TicketError):
    """The system asked for has no usable tracker configured: nothing was sent anywhere,
    and the message names the settings that are missing or wrong."""


@dataclass
class TicketConfig:
    """Where tickets go and how hard to try.

    Args:
        github_url: the REST API root: https://api.github.com, or
            https://HOST/api/v3 for GitHub Enterprise Server.
        github_repo: "owner/name" of the repository issues are opened in.
        github_token: a token allowed to create issues there.
        jira_url: the Jira Server/Data Center root, with its context path if any.
        jira_project: the project key issues are created in.
        jira_token: a personal access token, sent as a bearer token.
        jira_user: with jira_password, Basic auth instead of a token.
        jira_password: the password (or API token) for jira_user.
        jira_issue_type: the issue type's name in that project.
        timeout_s: the limit of one request, connecting included.
        retries: attempts after the first on connection errors, timeouts, 429 and 5xx.
        backoff_s: the wait before the first retry; it doubles with each one.
        case_url: the base the link back to a case is built from, e.g.
            http://agent:8470/api/cases gives http://agent:8470/api/cases/CASE-3.
    """

    github_url: str = "https://api.github.com"
    github_repo: str | None = None
    github_token: str | None = None
    jira_url: str | None = None
    jira_project: str | None = None
    jira_token: str | None = None
    jira_user: str | None = None
    jira_password: str | None = None
    jira_issue_type: str = "Bug"
    timeout_s: float = 10
    retries: int = 3
    backoff_s: float = 0.5
    case_url: str | None = None


async def create_ticket(
    config: TicketConfig,
    system: str,
    case: dict[str, Any],
    session: aiohttp.ClientSession | None = None,
) -> dict[str, Any]:
    """Create an issue for `case` in `system` ("github" or "jira").

    Returns:
        {"system", "number" (GitHub) or "key" (Jira), "url", "created_at"}.

    Raises:
        TicketError: the system is unknown or not configured, the server refused the issue,
            or it kept failing through every retry.
    """
    if system == "github":
        request = _github_request(config, case)
    elif system == "jira":
        request = _jira_request(config, case)
    else:
        raise TicketError(f"unknown ticket system {system!r}; expected github or jira")

    if session is None:
        async with aiohttp.ClientSession() as own:
            answer = await _post(config, system, request, own)
    else:
        answer = await _post(config, system, request, session)

    created_at = rfc3339(time.time())
    if system == "github":
        number, url = answer.get("number"), answer.get("html_url")
        if not isinstance(number, int) or not isinstance(url, str):
            raise TicketError("github: the answer has no issue number and html_url")
        logger.info("case %s: GitHub issue #%d opened", case.get("id"), number)
        return {"system": "github", "number": number, "url": url, "created_at": created_at}

    key = answer.get("key")
    if not isinstance(key, str) or not key:
        raise TicketError("jira: the answer has no issue key")
    url = f"{_root(config.jira_url or '')}/browse/{key}"
    logger.info("case %s: Jira issue %s created", case.get("id"), key)
    return {"system": "jira", "key": key, "url": url, "created_at": created_at}


@dataclass
class _Request:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]


def _github_request(config: TicketConfig, case: dict[str, Any]) -> _Request:
    if not config.github_repo or not config.github_token:
        raise TicketNotConfigured(
            "github: not configured (github_repo and github_token are needed)"
        )
    if not _REPO.match(config.github_repo):
        raise TicketNotConfigured(
            f"github: github_repo must be owner/name, got {config.github_repo!r}"
        )
    return _Request(
        url=f"{_root(config.github_url)}/repos/{config.github_repo}/issues",
        headers={
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {config.github_token}",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": USER_AGENT,
        },
        body={
            "title": ticket_title(case),
            "body": github_body(case, config.case_url),
            "labels": labels(case),
        },
    )


def _jira_request(config: TicketConfig, case: dict[str, Any]) -> _Request:
    basic = bool(config.jira_user and config.jira_password)
    if not config.jira_url or not config.jira_project or not (config.jira_token or basic):
        raise TicketNotConfigured(
            "jira: not configured (jira_url, jira_project and jira_token, or jira_user "
            "and jira_password, are needed)"
        )
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if config.jira_token:
        headers["Authorization"] = f"Bearer {config.jira_token}"
    else:
        pair = f"{config.jira_user}:{config.jira_password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    fields = {
        "project": {"key": config.jira_project},
        "summary": ticket_title(case),
        "description": jira_description(case, config.case_url),
        "issuetype": {"name": config.jira_issue_type},
        "labels": labels(case),
    }
    return _Request(
        url=f"{_root(config.jira_url)}/rest/api/2/issue",
        headers=headers,
        body={"fields": fields},
    )


async def _post(
    config: TicketConfig, system: str, request: _Request, session: aiohttp.ClientSession
) -> dict[str, Any]:
    """POST with retries; the parsed answer of the first 2xx, or TicketError."""
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    attempts = max(0, config.retries) + 1
    last = ""
    for attempt in range(attempts):
        wait = config.backoff_s * 2**attempt
        try:
            async with session.post(
                request.url,
                json=request.body,
                headers=request.headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                text = await response.text(errors="replace")
                if 200 <= response.status < 300:
                    return _json_object(text)
                message = _server_message(text) or response.reason or ""
                last = f"{system}: HTTP {response.status} from {request.url}: {message}"
                retry_after = _retry_after(response)
                if response.status == 403 and retry_after is None:
                    raise TicketError(last)
                if response.status not in (403, 429) and response.status < 500:
                    raise TicketError(last)
                if retry_after is not None:
                    if retry_after > MAX_RETRY_AFTER_S:
                        raise TicketError(f"{last} (retry after {retry_after:g} s)")
                    wait = retry_after
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            last = f"{system}: no answer from {request.url}: {reason}"
        if attempt + 1 < attempts:
            logger.debug("%s; retrying in %.2f s", last, wait)
            await asyncio.sleep(wait)
    raise TicketError(f"{last} (gave up after {attempts} attempts)")


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    """Retry-After in seconds; GitHub also sends it on a 403 for its secondary rate limit."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _server_message(text: str) -> str:
    """The error as the server put it: GitHub's message and errors, Jira's errorMessages
    and per-field errors, else the start of the body."""
    doc = _json_object(text)
    if not doc:
        return _truncate(_one_line(text), FIELD_LIMIT)
    parts: list[str] = []
    if isinstance(doc.get("message"), str):
        parts.append(doc["message"])
    parts += [str(m) for m in doc.get("errorMessages") or [] if m]
    errors = doc.get("errors")
    if isinstance(errors, dict):
        parts += [f"{name}: {message}" for name, message in errors.items()]
    elif isinstance(errors, list):
        parts += [_github_error(error) for error in errors]
    return _truncate(_one_line("; ".join(p for p in parts if p)), FIELD_LIMIT)


def _github_error(error: Any) -> str:
    """One entry of GitHub's validation errors: its message, or resource, field and code."""
    if not isinstance(error, dict):
        return str(error)
    if error.get("message"):
        return str(error["message"])
    return " ".join(str(error[k]) for k in ("resource", "field", "code") if error.get(k))


def _root(url: str) -> str:
    return url.rstrip("/")


def case_link(case: dict[str, Any], case_url: str | None) -> str | None:
    """The URL of the case, built from the configured base, or None without one."""
    if not case_url or not case.get("id"):
        return None
    return f"{_root(case_url)}/{case['id']}"


def ticket_title(case: dict[str, Any]) -> str:
    """`[CASE-n] title`, on one line and at most TITLE_LIMIT characters."""
    case_id = _one_line(str(case.get("id") or "CASE-?"))
    title = f"[{case_id}] {_one_line(str(case.get('title') or ''))}"
    return _truncate(title, TITLE_LIMIT)


def labels(case: dict[str, Any]) -> list[str]:
    """Labels valid in both systems (no spaces): proveai, the class, the severity."""
    found = ["proveai"]
    if case.get("failure_class"):
        found.append(_LABEL.sub("-", str(case["failure_class"])).lower()[:50])
    if case.get("severity"):
        found.append("severity-" + _LABEL.sub("-", str(case["severity"])).lower()[:40])
    return found


def github_body(case: dict[str, Any], case_url: str | None) -> str:
    """The issue body in GitHub Markdown, at most GITHUB_BODY_LIMIT characters."""
    md = _md
    lines = [f"**Case** {md(case.get('id'))}: {md(case.get('title'))}", ""]
    lines += [
        f"- **Severity:** {md(case.get('severity'))}",
        f"- **Service:** {md(case.get('service'))}",
        f"- **State:** {md(case.get('state'))}",
        f"- **Failure class:** {md(case.get('failure_class') or 'undetermined')}",
        f"- **Opened:** {md(case.get('opened_at'))}",
    ]
    scores = _scores(case)
    if scores:
        lines += ["", "### Class scores", "", "| class | score |", "| --- | --- |"]
        lines += [f"| {md(name)} | {value} |" for name, value in scores]
    hypotheses = _hypotheses(case)
    if hypotheses:
        lines += ["", "### Hypotheses", ""]
        for index, item in enumerate(hypotheses, 1):
            confidence = _num(item.get("confidence"))
            lines.append(f"{index}. {md(item.get('hypothesis'))} (confidence {confidence})")
    suggestions = _suggestions(case)
    if suggestions:
        lines += ["", "### Suggestions", ""]
        for item in suggestions:
            lines.append(
                f"- **{md(item.get('action'))}** (effort {md(item.get('effort'))}, "
                f"confidence {_num(item.get('confidence'))})"
            )
            query = _verification_query(item)
            if query:
                lines.append(f"  - verification: {_md_code(query)}")
    changes = _changes(case)
    if changes:
        lines += ["", "### Correlated changes", ""]
        for change in changes:
            lines.append(
                f"- {md(change.get('at'))} {md(change.get('kind'))} in "
                f"{md(change.get('service'))}: {md(change.get('summary'))}"
            )
    footer = ["", "---", f"Opened by Prove AI from case {md(case.get('id'))}."]
    link = case_link(case, case_url)
    if link:
        footer.append(f"Case: <{_url(link)}>")
    return _fit(lines, footer, GITHUB_BODY_LIMIT)


def jira_description(case: dict[str, Any], case_url: str | None) -> str:
    """The issue description in Jira wiki text, at most JIRA_BODY_LIMIT characters."""
    jt = _jira
    lines = [f"*Case* {jt(case.get('id'))}: {jt(case.get('title'))}", ""]
    lines += [
        f"* *Severity:* {jt(case.get('severity'))}",
        f"* *Service:* {jt(case.get('service'))}",
        f"* *State:* {jt(case.get('state'))}",
        f"* *Failure class:* {jt(case.get('failure_class') or 'undetermined')}",
        f"* *Opened:* {jt(case.get('opened_at'))}",
    ]
    scores = _scores(case)
    if scores:
        lines += ["", "h3. Class scores", "||class||score||"]
        lines += [f"|{jt(name)}|{value}|" for name, value in scores]
    hypotheses = _hypotheses(case)
    if hypotheses:
        lines += ["", "h3. Hypotheses"]
        lines += [
            f"# {jt(item.get('hypothesis'))} (confidence {_num(item.get('confidence'))})"
            for item in hypotheses
        ]
    suggestions = _suggestions(case)
    if suggestions:
        lines += ["", "h3. Suggestions"]
        for item in suggestions:
            lines.append(
                f"* *{jt(item.get('action'))}* (effort {jt(item.get('effort'))}, "
                f"confidence {_num(item.get('confidence'))})"
            )
            query = _verification_query(item)
            if query:
                lines += ["verification:", "{noformat}", _noformat(query), "{noformat}"]
    changes = _changes(case)
    if changes:
        lines += ["", "h3. Correlated changes"]
        for change in changes:
            lines.append(
                f"* {jt(change.get('at'))} {jt(change.get('kind'))} in "
                f"{jt(change.get('service'))}: {jt(change.get('summary'))}"
            )
    footer = ["", "----", f"Opened by Prove AI from case {jt(case.get('id'))}."]
    link = case_link(case, case_url)
    if link:
        footer.append(f"Case: [{_url(link)}]")
    return _fit(lines, footer, JIRA_BODY_LIMIT)


def _scores(case: dict[str, Any]) -> list[tuple[str, str]]:
    scores = case.get("class_scores") or {}
    if not isinstance(scores, dict):
        return []
    ordered = sorted(scores.items(), key=lambda kv: -_float(kv[1]))
    return [(str(name), _num(value)) for name, value in ordered]


def _hypotheses(case: dict[str, Any]) -> list[dict[str, Any]]:
    items = [h for h in case.get("hypotheses") or [] if isinstance(h, dict)]
    items.sort(key=lambda h: -_float(h.get("confidence")))
    return items[:MAX_HYPOTHESES]


def _suggestions(case: dict[str, Any]) -> list[dict[str, Any]]:
    items = case.get("remediation_suggestions") or []
    return [s for s in items if isinstance(s, dict)][:MAX_SUGGESTIONS]


def _changes(case: dict[str, Any]) -> list[dict[str, Any]]:
    items = [c for c in case.get("recent_changes") or [] if isinstance(c, dict)]
    correlated = [c for c in items if c.get("correlated", True)]
    return correlated[:MAX_CHANGES]


def _verification_query(suggestion: dict[str, Any]) -> str:
    verification = suggestion.get("verification") or {}
    query = verification.get("query") if isinstance(verification, dict) else None
    return _truncate(_one_line(str(query)), FIELD_LIMIT) if query else ""


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _num(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "n/a"


def _one_line(text: str) -> str:
    """Whitespace and control characters (newlines included) collapsed to single spaces."""
    return _SPACE.sub(" ", text).strip()


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _plain(value: Any) -> str:
    return _truncate(_one_line("" if value is None else str(value)), FIELD_LIMIT)


def _md(value: Any) -> str:
    """One line of text from the case, inert in Markdown: every construct is escaped."""
    return _MD_SPECIAL.sub(r"\\\1", _plain(value))


def _md_code(text: str) -> str:
    """Inline code whose fence is longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}"


def _jira(value: Any) -> str:
    """One line of text from the case, inert in Jira wiki text.

    Jira has no escape for a backslash itself (two make a line break), so a backslash
    becomes the look-alike U+29F5; the other special characters are backslash-escaped.
    """
    text = _plain(value).replace("\\", "\u29f5")
    return _JIRA_SPECIAL.sub(r"\\\1", text)


def _noformat(text: str) -> str:
    """Text for a {noformat} block, which only its own closing macro can end."""
    return re.sub(r"\{noformat", "{ noformat", text, flags=re.IGNORECASE)


def _url(link: str) -> str:
    """The configured case link, with the characters that would end the link quoted."""
    return re.sub(r"[\s<>\[\]|\"'`]", lambda m: f"%{ord(m.group()):02X}", link)


def _fit(lines: list[str], footer: list[str], limit: int) -> str:
    """Lines joined, cut at a line boundary so the footer (the link back) always fits."""
    tail = "\n".join(footer)
    note = "\n\n(truncated)"
    room = limit - len(tail) - len(note) - 1
    kept: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) + 1 > room:
            return "\n".join(kept) + note + "\n" + tail
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept) + "\n" + tail
