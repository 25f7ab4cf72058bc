"""The top line of every screen: where you are, and whether the agent is answering."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from proveai_tui import palette
from proveai_tui.widgets.quiet_static import QuietStatic


@dataclass(frozen=True)
class Link:
    """The connection to the agent as the console last saw it.

    Args:
        state: connecting, connected, disconnected (no answer), refused (401/403) or failing
            (the agent answered with an error).
        agent: the agent's address.
        reason: the readable cause when not connected.
        last_data: when data last arrived, None if it never did.
        since: when the link entered this state, None if not known.
    """

    state: str
    agent: str
    reason: str = ""
    last_data: datetime | None = None
    since: datetime | None = None


def clock(at: datetime) -> str:
    """A time of day in the local zone, as the status line writes it."""
    return at.astimezone().strftime("%H:%M:%S")


def reason_text(link: Link) -> str:
    """The second line while not connected: since when, and why."""
    if link.since is None:
        return link.reason
    return (
        f"since {clock(link.since)}: {link.reason}"
        if link.reason
        else f"since {clock(link.since)}"
    )


def link_text(link: Link) -> Text:
    """The right side of the top line, in words first; colour only repeats them."""
    host = link.agent.split("://", 1)[-1]
    text = Text(no_wrap=True, overflow="ellipsis")
    if link.state == "connected":
        text.append("● connected", style=palette.GOOD)
        text.append(f"  {host}", style="dim")
        return text
    if link.state == "connecting":
        text.append(f"connecting to {host} …", style="dim")
        return text
    words = {
        "disconnected": "disconnected — retrying",
        "refused": "key refused — retrying",
        "failing": "agent error — retrying",
    }
    text.append("✕ " + words.get(link.state, f"{link.state} — retrying"), style=palette.ALARM)
    if link.last_data is not None:
        text.append(f"  last data {clock(link.last_data)}", style="dim")
    return text


class StatusBar(Vertical):
    """Screen title and connection state; the cause of a failure on a second line."""

    def __init__(self, title: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self._title = title

    def compose(self) -> ComposeResult:
        with Horizontal(classes="status-line"):
            yield QuietStatic(Text(self._title, style="bold"), classes="status-title")
            yield QuietStatic("", classes="status-link")
        yield QuietStatic("", classes="status-reason")

    def on_mount(self) -> None:
        self.watch(self.app, "link", self.show_link)

    def show_link(self, link: Link | None) -> None:
        if link is None:
            return
        self.query_one(".status-link", QuietStatic).show(link_text(link))
        reason = self.query_one(".status-reason", QuietStatic)
        reason.show(reason_text(link) if link.state != "connected" else "")
        reason.display = link.state not in ("connected", "connecting")
