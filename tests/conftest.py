"""Shared test set-up: tests/ and src/ importable, the back-end fixtures of stackfix loaded."""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for _path in (_TESTS, _TESTS.parent / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

pytest_plugins = ["stackfix", "agentfix", "tmuxfix", "modelfix"]
