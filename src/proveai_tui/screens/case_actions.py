"""The case screen's actions through the agent's API: triage, investigate, fix, feedback,
tickets, notes and closing, each asked for, confirmed, sent, and answered on screen.

The console decides nothing about the lifecycle: an action the case's state does not
allow can still be sent, and the agent's reason for refusing it is what the user reads.
The state only decides which actions the footer offers.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingsMap
from textual.css.query import NoMatches
from textual.widgets import Footer

from proveai_tui import format as fmt
from proveai_tui.client import AgentClient, AgentError
from proveai_tui.widgets.dialogs import (
    Choice,
    ChoiceDialog,
    ConfirmDialog,
    TextDialog,
    printable,
    text_problem,
)
from proveai_tui.widgets.quiet_static import QuietStatic

if TYPE_CHECKING:
    from textual.screen import Screen
    from textual.worker import Worker

    class _CaseScreen(Screen):
        case_id: str
        client: AgentClient
        case: dict[str, Any] | None

        def load(self) -> Worker[None]: ...

else:
    _CaseScreen = object

logger = logging.getLogger(__name__)

ACTOR_ENV = "PROVEAI_ACTOR"
SEVERITIES = ("critical", "high", "medium", "low")
CLOSE_REASONS = (
    Choice("false_positive", "false_positive: nothing was wrong"),
    Choice("duplicate", "duplicate: another case covers it"),
    Choice("wont_fix", "wont_fix: known, and it stays as it is"),
)
TICKET_SYSTEMS = (
    Choice("github", "github: an issue in the configured repository"),
    Choice("jira", "jira: an issue in the configured project"),
)
LIMITS = {
    "actor": 200,
    "owner": 200,
    "root_cause": 200,
    "fix": 2000,
    "feedback_note": 2000,
    "note": 10_000,
    "duplicate_of": 50,
}
"""The most characters the agent's API takes for each field."""
CASE_ID = re.compile(r"CASE-\d{1,18}")
WIDE = 120
"""Columns from which the footer has room for every action that applies."""
SHOWN_CHARS = 300
"""How much of a long text the confirmation repeats."""

UNSEEN = object()

ACTION_BINDINGS: tuple[Binding, ...] = (
    Binding(
        "t",
        "triage",
        "Triage",
        tooltip="Triage: severity and owner (DETECTED to TRIAGED)",
        id="case.triage",
    ),
    Binding(
        "i",
        "investigate",
        "Investigate",
        tooltip="Start the investigation (TRIAGED to INVESTIGATING)",
        id="case.investigate",
    ),
    Binding(
        "a",
        "apply_fix",
        "Apply fix",
        tooltip="Mark a suggestion's fix applied; the agent then verifies it",
        id="case.apply_fix",
    ),
    Binding(
        "f",
        "resolve",
        "Resolve",
        tooltip="Resolve with root cause and fix as text; the agent then verifies it",
        id="case.resolve",
    ),
    Binding(
        "u",
        "not_helpful",
        "Not helpful",
        tooltip="Mark a suggestion not helpful, with an optional note",
        id="case.not_helpful",
    ),
    Binding(
        "o",
        "ticket",
        "Ticket",
        tooltip="Open a GitHub or Jira ticket for the case",
        id="case.ticket",
    ),
    Binding("n", "note", "Note", tooltip="Add a note to the case's timeline", id="case.note"),
    Binding(
        "x",
        "close_case",
        "Close",
        tooltip="Close: false positive, duplicate or won't fix",
        id="case.close",
    ),
)
"""Every action's binding; the footer shows those that `footer_actions` picks."""


def actor_name() -> str:
    """Who acts: $PROVEAI_ACTOR, else the local user's name."""
    named = os.environ.get(ACTOR_ENV, "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "console"


def footer_actions(case: dict[str, Any] | None, wide: bool = False) -> list[str]:
    """The actions that make sense for the case as it stands, most pressing first.

    At 80 columns the footer has room for the state's next step, a note and closing; a
    wide terminal also offers a ticket and "not helpful" where they apply.
    """
    if case is None:
        return []
    state = fmt.state(case.get("state"))
    suggested = bool(suggestions_of(case))
    shown = {
        "DETECTED": ["triage"],
        "TRIAGED": ["investigate"],
        "REMEDIATION_SUGGESTED": ["apply_fix", "resolve"] if suggested else ["resolve"],
    }.get(state, [])
    shown.append("note")
    if fmt.is_open(case):
        shown.append("close_case")
        if wide and suggested and state in ("INVESTIGATING", "REMEDIATION_SUGGESTED"):
            shown.append("not_helpful")
        if wide and not fmt.items(case.get("tickets")):
            shown.append("ticket")
    return shown


def suggestions_of(case: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The case's remediation suggestions that carry an id."""
    found = fmt.items((case or {}).get("remediation_suggestions"))
    return [s for s in found if isinstance(s, dict) and isinstance(s.get("id"), str)]


def verification_words(suggestion: dict[str, Any]) -> str:
    """How the agent will tell that the suggestion's fix held, in one line."""
    spec = fmt.mapping(suggestion.get("verification"))
    query = spec.get("query")
    if not query:
        return "no verification query: an engineer has to judge the fix"
    words = f"{query} {spec.get('comparator') or '?'} {fmt.number(spec.get('threshold'))}"
    if fmt.is_number(spec.get("window_s")):
        words += f" for {spec['window_s']:g} s"
    return words


def suggestion_choice(suggestion: dict[str, Any]) -> Choice:
    """A suggestion as a line to pick, with its action, effort and verification below."""
    action = str(suggestion.get("action") or fmt.DASH)
    label = f"{suggestion['id']}  {action}"
    detail = "\n".join(
        [
            f"action: {action}",
            f"effort: {suggestion.get('effort') or fmt.DASH}"
            f" · confidence {fmt.number(suggestion.get('confidence'))}",
            f"verification: {verification_words(suggestion)}",
        ]
    )
    return Choice(str(suggestion["id"]), printable(label), printable(detail))


def shown_text(text: str) -> str:
    """A text as the confirmation repeats it: whole when short, else its start and length."""
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(text):,} characters)"


def duplicate_problem(case_id: str) -> Callable[[str], str | None]:
    """The rule for the case a duplicate duplicates: another case's id."""

    def check(value: str) -> str | None:
        if not CASE_ID.fullmatch(value.upper()):
            return f"{value[:60]!r} is not a case id such as CASE-12"
        if value.upper() == case_id:
            return f"{case_id} cannot duplicate itself"
        return None

    return check


@dataclass
class Pending:
    """An action asked for and not yet sent.

    Args:
        title: the action, as the confirmation's title.
        lines: what will be sent, one fact a line.
        send: makes the request; returns the agent's answer.
        done: the agent's answer in words.
    """

    title: str
    lines: list[str]
    send: Callable[[], Awaitable[dict[str, Any]]]
    done: Callable[[dict[str, Any]], str]


def moved(answer: dict[str, Any]) -> str:
    """A transition's answer: the state the agent has the case in now."""
    state = fmt.state(answer.get("state"))
    words = f"{answer.get('id') or 'the case'} is {state} now"
    if state == "TRIAGED":
        words += f" (severity {fmt.severity(answer.get('severity'))}"
        words += f", owner {answer.get('owner') or 'none'})"
    if state == "CLOSED":
        closed = fmt.mapping(answer.get("closed"))
        words += f" ({closed.get('reason') or fmt.DASH}"
        duplicate_of = closed.get("duplicate_of")
        words += f" of {duplicate_of})" if duplicate_of else ")"
    if state == "VERIFYING":
        spec = fmt.mapping(answer.get("verification"))
        check = "runs the fix's verification" if spec.get("query") else "has no query to check"
        words += f"; the agent {check} and resolves the case when the fix holds"
    return words


def ticket_made(answer: dict[str, Any]) -> str:
    """A ticket's answer: which issue, and where."""
    system = str(answer.get("system") or "ticket")
    name = f"#{answer['number']}" if answer.get("number") is not None else answer.get("key")
    return f"{system} issue {name or fmt.DASH} opened: {answer.get('url') or fmt.DASH}"


class CaseActions(_CaseScreen):
    """The actions of a case screen; a base class of CaseScreen.

    Textual calls `on_mount` of every class of a screen, so this one mounts the notice
    line and installs the bindings without the screen's own code calling it. The screen
    calls `refresh_actions()` whenever it shows the case again.
    """

    NOTICE_ID = "action-notice"
    ACTION_STYLES: ClassVar[dict[str, str]] = {
        "pending": "-pending",
        "done": "-done",
        "refused": "-refused",
        "cancelled": "-cancelled",
    }

    _acting = False
    _wide = False
    _screen_bindings: BindingsMap | None = None
    _notice_state: object = None
    """The case state the outcome line was about: UNSEEN until the case is shown again."""

    @property
    def read_only(self) -> bool:
        return bool(getattr(self.app, "read_only", False))

    def on_mount(self) -> None:
        notice = QuietStatic("", id=self.NOTICE_ID)
        notice.display = False
        try:
            self.mount(notice, before=self.query_one(Footer))
        except NoMatches:
            self.mount(notice)
        if not self.read_only:
            self._screen_bindings = self._bindings
            self.refresh_actions()

    def refresh_actions(self) -> None:
        """Offer in the footer the actions that make sense for the case as it is now.

        They come before the screen's own keys, so that at 80 columns the next step of
        the case is what stays in sight.
        """
        if self._screen_bindings is None:
            return
        self._retire_notice()
        self._wide = self.app.size.width >= WIDE
        shown = footer_actions(self.case, self._wide)
        placed = sorted(
            ACTION_BINDINGS,
            key=lambda b: shown.index(b.action) if b.action in shown else len(shown),
        )
        actions = BindingsMap(dataclasses.replace(b, show=b.action in shown) for b in placed)
        self._bindings = BindingsMap.merge([actions, self._screen_bindings])
        self.refresh_bindings()

    def on_resize(self) -> None:
        """Offer more actions, or fewer, when the terminal crosses the wide breakpoint."""
        wide = self.app.size.width >= WIDE
        if wide != self._wide:
            self.refresh_actions()

    @property
    def notice(self) -> str:
        """The outcome line of the last action, "" before any."""
        try:
            return self.query_one(f"#{self.NOTICE_ID}", QuietStatic).plain
        except NoMatches:
            return ""

    def say(self, kind: str, words: str) -> None:
        """Show an action's outcome on the notice line, above the footer."""
        notice = self.query_one(f"#{self.NOTICE_ID}", QuietStatic)
        notice.show(Text(f"{kind}: {printable(words)}"))
        for style in self.ACTION_STYLES.values():
            notice.remove_class(style)
        notice.add_class(self.ACTION_STYLES[kind])
        notice.display = True
        self._notice_state = UNSEEN

    def _retire_notice(self) -> None:
        """Hide the outcome line once the case has moved on from the state it was about:
        "VERIFYING now" under a RESOLVED header would say the opposite of the header."""
        if self._notice_state is None:
            return
        state = (self.case or {}).get("state")
        if self._notice_state is UNSEEN:
            self._notice_state = state
        elif state != self._notice_state:
            self.query_one(f"#{self.NOTICE_ID}", QuietStatic).display = False
            self._notice_state = None

    def _start(self, ask: Callable[[], Awaitable[Pending | None]]) -> None:
        """Run one action at a time: keys pressed between its dialogs start nothing."""
        if self.read_only or self._acting:
            return
        self._acting = True
        self.run_worker(self._act(ask), group="case-action", exit_on_error=False)

    async def _act(self, ask: Callable[[], Awaitable[Pending | None]]) -> None:
        try:
            await self._ask_and_send(ask)
        except Exception as error:
            logger.exception("an action on %s failed", self.case_id)
            self.say("refused", f"the action failed in the console ({error!r})")
        finally:
            self._acting = False

    async def _ask_and_send(self, ask: Callable[[], Awaitable[Pending | None]]) -> None:
        pending = await ask()
        if pending is None:
            return
        if not await self.app.push_screen_wait(ConfirmDialog(pending.title, pending.lines)):
            self.say("cancelled", "nothing was sent to the agent")
            return
        self.say("pending", f"{pending.title} … waiting for the agent")
        try:
            answer = await pending.send()
        except AgentError as error:
            logger.info("%s on %s: %s", pending.title, self.case_id, error.message)
            word = "refused" if error.status == 409 else "failed"
            self.say("refused", f"the agent {word} it: {error.message}")
            return
        self.say("done", pending.done(answer))
        self.load()

    async def _ask(self, dialog: TextDialog | ChoiceDialog) -> str | None:
        """A dialog's answer; None (and the cancellation said) when the user cancelled."""
        answer = await self.app.push_screen_wait(dialog)
        if answer is None:
            self.say("cancelled", "nothing was sent to the agent")
        return answer

    def _actor(self) -> str | None:
        """The actor, or None (with the reason shown) when it cannot be sent."""
        actor = actor_name()
        problem = text_problem(actor, f"the actor (${ACTOR_ENV})", LIMITS["actor"], True)
        if problem:
            self.say("refused", f"{problem}; nothing was sent")
            return None
        return actor

    def _state(self) -> str:
        """The case's state as last loaded."""
        return fmt.state((self.case or {}).get("state"))

    def _pick_suggestion(self, title: str) -> ChoiceDialog | None:
        suggestions = suggestions_of(self.case)
        if not suggestions:
            self.say(
                "refused",
                f"{self.case_id} has no suggestions to pick from; nothing was sent"
                " (f resolves with the fix as text)",
            )
            return None
        choices = [suggestion_choice(s) for s in suggestions]
        return ChoiceDialog(title, "Which suggestion?", choices)

    # The actions, each asking for what its request needs.

    def action_triage(self) -> None:
        self._start(self._ask_triage)

    def action_investigate(self) -> None:
        self._start(self._ask_investigate)

    def action_apply_fix(self) -> None:
        self._start(self._ask_apply_fix)

    def action_resolve(self) -> None:
        self._start(self._ask_resolve)

    def action_not_helpful(self) -> None:
        self._start(self._ask_not_helpful)

    def action_ticket(self) -> None:
        self._start(self._ask_ticket)

    def action_note(self) -> None:
        self._start(self._ask_note)

    def action_close_case(self) -> None:
        self._start(self._ask_close)

    async def _ask_triage(self) -> Pending | None:
        actor = self._actor()
        if actor is None:
            return None
        current = fmt.severity((self.case or {}).get("severity"))
        choices = [Choice(s, s) for s in SEVERITIES]
        choices.append(Choice("", f"leave it as it is ({current})"))
        severity = await self._ask(
            ChoiceDialog("Triage", f"Severity of {self.case_id}?", choices, current)
        )
        if severity is None:
            return None
        owner = await self._ask(
            TextDialog(
                "Owner",
                "Who owns the case? (empty leaves it without an owner)",
                limit=LIMITS["owner"],
                required=False,
            )
        )
        if owner is None:
            return None
        return Pending(
            f"Triage {self.case_id}",
            [
                f"{self.case_id}: {self._state()} to TRIAGED, by {actor}",
                f"severity: {severity or 'unchanged'}",
                f"owner: {owner or 'none'}",
            ],
            lambda: self.client.transition(
                self.case_id, "TRIAGED", actor, severity=severity, owner=owner
            ),
            moved,
        )

    async def _ask_investigate(self) -> Pending | None:
        actor = self._actor()
        if actor is None:
            return None
        return Pending(
            f"Investigate {self.case_id}",
            [f"{self.case_id}: {self._state()} to INVESTIGATING, by {actor}"],
            lambda: self.client.transition(self.case_id, "INVESTIGATING", actor),
            moved,
        )

    async def _ask_apply_fix(self) -> Pending | None:
        actor = self._actor()
        dialog = self._pick_suggestion("Apply fix") if actor else None
        if actor is None or dialog is None:
            return None
        chosen = await self._ask(dialog)
        if chosen is None:
            return None
        suggestion = next(s for s in suggestions_of(self.case) if s["id"] == chosen)
        return Pending(
            f"Apply fix {chosen}",
            [
                f"{self.case_id}: {self._state()} to FIX_APPLIED with the fix of {chosen},"
                f" by {actor}",
                f"action: {suggestion.get('action') or fmt.DASH}",
                f"effort: {suggestion.get('effort') or fmt.DASH}",
                f"verification: {verification_words(suggestion)}",
                "the agent then verifies the fix and resolves the case when it holds",
            ],
            lambda: self.client.transition(
                self.case_id, "FIX_APPLIED", actor, suggestion_id=chosen
            ),
            moved,
        )

    async def _ask_resolve(self) -> Pending | None:
        actor = self._actor()
        if actor is None:
            return None
        root_cause = await self._ask(
            TextDialog(
                "Root cause",
                f"What caused the failure of {self.case_id}?",
                limit=LIMITS["root_cause"],
                required=True,
            )
        )
        if root_cause is None:
            return None
        fix = await self._ask(
            TextDialog("Fix", "What fixed it?", limit=LIMITS["fix"], required=True)
        )
        if fix is None:
            return None
        return Pending(
            f"Resolve {self.case_id}",
            [
                f"{self.case_id}: {self._state()} to FIX_APPLIED, by {actor}",
                f"root cause: {shown_text(root_cause)}",
                f"fix: {shown_text(fix)}",
                "the agent then verifies the fix and resolves the case when it holds",
            ],
            lambda: self.client.transition(
                self.case_id, "FIX_APPLIED", actor, root_cause=root_cause, fix=fix
            ),
            moved,
        )

    async def _ask_not_helpful(self) -> Pending | None:
        actor = self._actor()
        dialog = self._pick_suggestion("Not helpful") if actor else None
        if actor is None or dialog is None:
            return None
        chosen = await self._ask(dialog)
        if chosen is None:
            return None
        note = await self._ask(
            TextDialog(
                "Note",
                f"Why was {chosen} not helpful? (may stay empty)",
                limit=LIMITS["feedback_note"],
                required=False,
            )
        )
        if note is None:
            return None
        return Pending(
            f"Not helpful {chosen}",
            [
                f"{self.case_id}: {chosen} was not helpful, says {actor}",
                f"note: {shown_text(note) or 'none'}",
                "the knowledge base ranks this cause lower for such failures",
            ],
            lambda: self.client.feedback(self.case_id, chosen, False, actor, note),
            lambda _: f"{chosen} marked not helpful on {self.case_id}",
        )

    async def _ask_ticket(self) -> Pending | None:
        actor = self._actor()
        if actor is None:
            return None
        system = await self._ask(
            ChoiceDialog("Ticket", f"Where should {self.case_id} go?", TICKET_SYSTEMS)
        )
        if system is None:
            return None
        return Pending(
            f"Ticket for {self.case_id}",
            [f"{self.case_id}: open a {system} issue, by {actor}"],
            lambda: self.client.ticket(self.case_id, system, actor),
            ticket_made,
        )

    async def _ask_note(self) -> Pending | None:
        actor = self._actor()
        if actor is None:
            return None
        text = await self._ask(
            TextDialog(
                "Note",
                f"A note for the timeline of {self.case_id}",
                limit=LIMITS["note"],
                required=True,
            )
        )
        if text is None:
            return None
        return Pending(
            f"Note on {self.case_id}",
            [f"{self.case_id}: a note by {actor}", shown_text(text)],
            lambda: self.client.add_note(self.case_id, actor, text),
            lambda _: f"note added to the timeline of {self.case_id}",
        )

    async def _ask_close(self) -> Pending | None:
        actor = self._actor()
        if actor is None:
            return None
        reason = await self._ask(
            ChoiceDialog("Close", f"Why close {self.case_id}?", CLOSE_REASONS)
        )
        if reason is None:
            return None
        duplicate_of = ""
        if reason == "duplicate":
            answer = await self._ask(
                TextDialog(
                    "Duplicate of",
                    f"Which case does {self.case_id} duplicate? (e.g. CASE-12)",
                    limit=LIMITS["duplicate_of"],
                    required=True,
                    check=duplicate_problem(self.case_id),
                )
            )
            if answer is None:
                return None
            duplicate_of = answer.upper()
        lines = [f"{self.case_id}: {self._state()} to CLOSED, by {actor}", f"reason: {reason}"]
        if duplicate_of:
            lines.append(f"duplicate of: {duplicate_of}")
        return Pending(
            f"Close {self.case_id}",
            lines,
            lambda: self.client.transition(
                self.case_id, "CLOSED", actor, reason=reason, duplicate_of=duplicate_of
            ),
            moved,
        )
