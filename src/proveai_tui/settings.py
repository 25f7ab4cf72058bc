"""The console's configuration file: key bindings remapped by their id.

    # ~/.config/proveai/console.toml (or the file $PROVEAI_CONSOLE_CONFIG names)
    [keys]
    "app.quit" = "ctrl+q"
    "cases.down" = "down,n"

Every binding of the console has an id (the `?` screen lists them). A remapped id takes
the keys given, comma-separated, in place of its own. A file that cannot be used is
reported in one line and the console starts with the default keys: a typo in the file
must not lock anyone out of the console at 3 a.m.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

MAX_BYTES = 64 * 1024
KEY = re.compile(r"^[A-Za-z0-9_+\-]+$")
"""One key as Textual names it: `j`, `ctrl+x`, `shift+tab`, `question_mark`, `f5`."""


@dataclass(frozen=True)
class Settings:
    """What the configuration file asks for, and what in it could not be used."""

    keymap: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def default_path() -> Path:
    """$PROVEAI_CONSOLE_CONFIG, else console.toml in the user's configuration folder."""
    named = os.environ.get("PROVEAI_CONSOLE_CONFIG")
    if named:
        return Path(named)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "proveai" / "console.toml"


def load(path: Path | None = None, known_ids: set[str] | None = None) -> Settings:
    """Read the file; a missing file is no settings, never a problem.

    Args:
        path: the file; `default_path()` when None.
        known_ids: the binding ids there are; a remap of any other id is a problem.
    """
    path = path or default_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Settings()
    except OSError as error:
        return Settings(problems=[f"{path}: cannot read it: {error.strerror or error}"])
    if len(raw) > MAX_BYTES:
        return Settings(problems=[f"{path}: more than {MAX_BYTES // 1024} KiB; not read"])
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Settings(problems=[f"{path}: not UTF-8 text; not read"])
    except tomllib.TOMLDecodeError as error:
        return Settings(problems=[f"{path}: not valid TOML ({error}); not read"])
    keys = document.get("keys", {})
    if not isinstance(keys, dict):
        return Settings(problems=[f"{path}: [keys] must be a table of binding id = keys"])
    keymap: dict[str, str] = {}
    problems: list[str] = []
    for binding_id, value in keys.items():
        if known_ids is not None and binding_id not in known_ids:
            problems.append(f"{path}: no binding has the id {binding_id!r}; see ?")
            continue
        if not isinstance(value, str) or not value.strip():
            problems.append(f'{path}: {binding_id!r} needs keys as a string, e.g. "ctrl+q"')
            continue
        parts = [part.strip() for part in value.split(",")]
        bad = [part for part in parts if not KEY.match(part)]
        if bad:
            problems.append(f"{path}: {binding_id!r}: {bad[0]!r} is not a key name")
            continue
        keymap[binding_id] = ",".join(parts)
    for name in document:
        if name != "keys":
            problems.append(f"{path}: unknown section or setting {name!r}")
    return Settings(keymap=keymap, problems=problems)
