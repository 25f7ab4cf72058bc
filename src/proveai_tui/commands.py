"""The command palette's commands: every key binding that works on the current screen.

The palette (`:` or ctrl+p) finds an action by what it does, for whoever does not
remember its key: "triage", "note", "audit". The commands are the screen's active
bindings, so the palette offers exactly what the keys offer, read-only mode included,
and shows each command's key so that the next time the key can be used.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.dom import DOMNode

SKIPPED_ACTIONS = {"command_palette", "app.command_palette"}


class BindingCommands(Provider):
    """One command per binding id active on the screen the palette was opened from."""

    def _commands(self) -> Iterator[tuple[str, str, DOMNode, Binding]]:
        seen: set[str] = set()
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if binding.system or binding.action in SKIPPED_ACTIONS:
                continue
            if not active.enabled:
                continue
            name = binding.tooltip or binding.description
            if not name:
                continue
            bid = binding.id or binding.action
            if bid in seen:
                continue
            seen.add(bid)
            yield name, self.app.get_key_display(binding), active.node, binding

    def _run(self, node: DOMNode, action: str) -> None:
        self.app.call_later(self.app.run_action, action, node)

    async def discover(self) -> Hits:
        for name, key, node, binding in sorted(self._commands(), key=lambda c: c[0].lower()):
            yield DiscoveryHit(
                f"{name}  · key {key}",
                partial(self._run, node, binding.action),
                text=name,
                help=binding.id,
            )

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, key, node, binding in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(f"{name}  · key {key}"),
                    partial(self._run, node, binding.action),
                    text=name,
                    help=binding.id,
                )
