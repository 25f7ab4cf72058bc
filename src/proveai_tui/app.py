"""The console application: command line, the live link to the agent, and the screens."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.dom import DOMNode
from textual.reactive import var
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from proveai_tui import __version__
from proveai_tui import settings as console_settings
from proveai_tui.client import DEFAULT_URL, AgentClient, AgentError, check_url
from proveai_tui.commands import BindingCommands
from proveai_tui.feed import CASE_PAGE, SAFETY_POLL_S, LiveSource, Snapshot, StreamSource
from proveai_tui.screens.audit import AuditScreen
from proveai_tui.screens.case import CaseScreen
from proveai_tui.screens.case_actions import ACTION_BINDINGS
from proveai_tui.screens.cases import CasesScreen
from proveai_tui.screens.changes import ChangesScreen
from proveai_tui.screens.help import HelpScreen, KeyGroup, KeyRow, help_title
from proveai_tui.screens.overview import OverviewScreen
from proveai_tui.widgets.status_bar import Link

logger = logging.getLogger(__name__)


def link_after(error: AgentError | None, agent: str, last_data: datetime | None) -> Link:
    """The connection state that a delivery implies."""
    if error is None:
        return Link("connected", agent, last_data=last_data)
    if error.unreachable:
        state = "disconnected"
    elif error.status in (401, 403, 429):  # 429: locked out after too many bad keys
        state = "refused"
    else:
        state = "failing"
    return Link(state, agent, reason=error.message, last_data=last_data)


class ConsoleApp(App[None], inherit_bindings=False):
    """Prove AI's console: keeps the last data on screen whatever the agent does.

    Args:
        client: the agent client, also used by screens for one-off reads.
        source: where live data comes from; the agent's stream by default.
        read_only: show no action at all: no key, footer entry or help line changes a case.
    """

    CSS_PATH = "app.tcss"
    TITLE = "Prove AI"
    ENABLE_COMMAND_PALETTE = True
    COMMANDS: ClassVar[set[Any]] = {BindingCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]  # noqa: RUF012
    VERTICAL_BREAKPOINTS = [(0, "-short"), (40, "-tall")]  # noqa: RUF012

    help_title = "Everywhere"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("ctrl+c,ctrl+q", "quit", "Quit", show=False, priority=True, id="app.quit"),
        Binding(
            "question_mark",
            "show_keys",
            "Keys",
            tooltip="List every key of this screen",
            key_display="?",
            id="app.keys",
        ),
        Binding(
            "colon,ctrl+p",
            "command_palette",
            "Commands",
            tooltip="Find a command by what it does",
            key_display=":",
            show=False,
            id="app.palette",
        ),
        Binding(
            "1",
            "overview",
            "Overview",
            tooltip="Go to the overview",
            show=False,
            id="app.overview",
        ),
        Binding("2", "cases", "Cases", tooltip="Go to every case", show=False, id="app.cases"),
        Binding(
            "3",
            "changes",
            "Changes",
            tooltip="Go to the change log",
            show=False,
            id="app.changes",
        ),
        Binding(
            "4", "audit", "Audit", tooltip="Go to the audit log", show=False, id="app.audit"
        ),
    ]
    DEFAULT_MODE = "overview"
    """The screens `1` to `4` go to are modes, each with a stack of its own: a screen keeps
    its cursor and filter, and the case opened from it, while another is shown."""

    # A var, not a reactive: a reactive repaints the whole app, every cell of the terminal,
    # each time it changes, and the link changes with every delivery.
    link: var[Link | None] = var(None)

    def __init__(
        self,
        client: AgentClient,
        source: LiveSource | None = None,
        read_only: bool = False,
        settings: console_settings.Settings | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.read_only = read_only
        self.settings = settings or console_settings.Settings()
        if self.settings.keymap:
            self.set_keymap(self.settings.keymap)
        self.source = source or StreamSource(client)
        self.last_data: datetime | None = None
        self.overview_screen = OverviewScreen()
        self.add_mode("overview", lambda: self.overview_screen)
        self.add_mode("cases", lambda: CasesScreen(self.client))
        self.add_mode("changes", lambda: ChangesScreen(self.client))
        self.add_mode("audit", lambda: AuditScreen(self.client))

    def get_default_screen(self) -> Screen:
        return self.overview_screen

    def on_mount(self) -> None:
        self.link = Link("connecting", self.client.base_url)
        for problem in self.settings.problems:
            logger.warning("%s", problem)
            self.notify(problem, title="Configuration", severity="warning", timeout=15)
        self._start_live()

    async def on_unmount(self) -> None:
        await self.client.close()

    def _start_live(self) -> None:
        self.run_worker(
            self.source.run(self.receive),
            name="live",
            group="live",
            exclusive=True,
            exit_on_error=False,
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name == "live" and event.state == WorkerState.ERROR:
            logger.error("the live source stopped: %r", event.worker.error)
            reason = f"live updates stopped ({event.worker.error!r}); restarting"
            self.link = Link("failing", self.client.base_url, reason, self.last_data)
            self.set_timer(2.0, self._start_live)

    def receive(self, snapshot: Snapshot) -> None:
        """Take one delivery from the live source to every screen that shows it."""
        if snapshot.overview is not None or snapshot.cases is not None:
            self.last_data = snapshot.at
        self.overview_screen.show(snapshot.overview, snapshot.cases)
        if snapshot.cases is not None:
            complete = len(snapshot.cases) < CASE_PAGE  # else there may be more open cases
            for stack in self._screen_stacks.values():  # every screen, whichever mode
                for screen in stack:
                    if isinstance(screen, CaseScreen):
                        screen.cases_changed(snapshot.cases)
                    elif isinstance(screen, CasesScreen) and screen.is_mounted:
                        screen.cases_changed(snapshot.cases, complete)
        link = link_after(snapshot.error, self.client.base_url, self.last_data)
        same = self.link is not None and self.link.state == link.state
        since = self.link.since if same and self.link is not None else snapshot.at
        self.link = replace(link, since=since)

    def on_overview_screen_case_chosen(self, message: OverviewScreen.CaseChosen) -> None:
        self.push_screen(CaseScreen(message.case_id, self.client))

    def on_overview_screen_refresh_asked(self, message: OverviewScreen.RefreshAsked) -> None:
        self.source.refresh()

    def action_overview(self) -> None:
        self.go_to("overview")

    def action_cases(self) -> None:
        self.go_to("cases")

    def action_changes(self) -> None:
        self.go_to("changes")

    def action_audit(self) -> None:
        self.go_to("audit")

    def go_to(self, name: str) -> None:
        """Show a screen as it was left; asked again, go back from what was opened on it."""
        if self.current_mode != name:
            self.switch_mode(name)
            return
        while len(self.screen_stack) > 1:
            self.pop_screen()

    def action_show_keys(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.binding_groups()))

    def binding_groups(self) -> list[KeyGroup]:
        """Every binding that works on this screen, grouped by where it works.

        The focused pane comes first, then the other panes in Tab order, then the screen's
        own bindings, then the app's, which work everywhere.
        """
        screen = self.screen
        panes = sorted(screen.focus_chain, key=lambda widget: widget is not screen.focused)
        groups = []
        # A key of the focused pane hides the same key of the screen and the app; the other
        # panes' keys hide nothing, as they work only once that pane has the focus.
        taken: set[str] = set()
        for widget in panes:
            rows = self._binding_rows(widget, taken if widget is screen.focused else set())
            if rows:
                title = help_title(widget)
                if widget is screen.focused:
                    title += " (focused)"
                groups.append(KeyGroup(title, rows))
        for node in (screen, self):
            rows = self._binding_rows(node, taken)
            if rows:
                groups.append(KeyGroup(help_title(node), rows))
        return groups

    def _binding_rows(self, node: DOMNode, taken: set[str]) -> list[KeyRow]:
        """Keys, description and id of each binding of one node, keys of one id together,
        as remapped by the keymap, without the keys that `taken` already has (which are then
        added to it)."""
        rows: dict[str, tuple[list[str], str]] = {}
        mine: set[str] = set()
        for key, bindings in node._bindings.key_to_bindings.items():
            for binding in bindings:
                if binding.system:
                    continue
                bid = binding.id or binding.action
                remapped = self._keymap.get(binding.id or "")
                bound = remapped.split(",") if remapped else [key]
                for one in bound:
                    if one in taken:
                        continue
                    mine.add(one)
                    keys, _ = rows.setdefault(bid, ([], binding.tooltip or binding.description))
                    shown = self.get_key_display(replace(binding, key=one))
                    if shown not in keys:
                        keys.append(shown)
        taken |= mine
        return [KeyRow(" ".join(keys), does, bid) for bid, (keys, does) in rows.items()]


def binding_ids() -> set[str]:
    """The id of every binding the console has, for checking a configuration file."""
    ids = {b.id for b in ACTION_BINDINGS if b.id}
    pending: list[type] = [DOMNode]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("proveai_tui"):
            ids |= {b.id for b in cls.__dict__.get("BINDINGS", []) if getattr(b, "id", None)}
    return ids


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="proveai-console",
        description="Prove AI's terminal console: live service panels and the agent's cases.",
    )
    parser.add_argument(
        "--agent",
        metavar="URL",
        default=os.environ.get("PROVEAI_URL") or DEFAULT_URL,
        help=f"the agent's API (default: $PROVEAI_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="API key sent as X-API-Key (default: $PROVEAI_API_KEY, which keeps it out of ps)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        default=os.environ.get("PROVEAI_CA_FILE") or None,
        help="the CA (PEM) that an https:// agent's certificate must chain to, for a private"
        " CA (default: $PROVEAI_CA_FILE, else the system's trusted CAs)",
    )
    parser.add_argument(
        "--interval",
        metavar="SECONDS",
        type=float,
        default=SAFETY_POLL_S,
        help="seconds between full reads of the agent besides its live stream, which catch"
        f" anything the stream missed (default: {SAFETY_POLL_S:g})",
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="look without touching: no action on cases (triage, fix, note, ticket, close)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="key bindings remapped by id (default: $PROVEAI_CONSOLE_CONFIG, else"
        " ~/.config/proveai/console.toml)",
    )
    parser.add_argument("--log", metavar="FILE", help="write the console's log to FILE")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be more than 0")
    try:
        check_url(args.agent)
    except ValueError as error:
        parser.error(f"--agent: {error}")
    try:
        args.client = AgentClient(
            args.agent,
            args.api_key or os.environ.get("PROVEAI_API_KEY"),
            ca_file=args.ca_file,
        )
    except ValueError as error:
        parser.error(f"--ca-file: {error}")
    return args


def configure_logging(path: str | None) -> None:
    """Log to a file when asked; never to the terminal, which the console owns."""
    package = logging.getLogger("proveai_tui")
    if path:
        handler: logging.Handler = logging.FileHandler(path)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
        package.setLevel(logging.DEBUG)
    else:
        handler = logging.NullHandler()
    package.addHandler(handler)
    package.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console until the user quits."""
    args = parse_args(argv)
    configure_logging(args.log)
    loaded = console_settings.load(args.config, binding_ids())
    ConsoleApp(
        args.client,
        StreamSource(args.client, args.interval),
        read_only=args.read_only,
        settings=loaded,
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
