"""The console's configuration file: remapped keys, and every way a file can be unusable."""

from __future__ import annotations

from pathlib import Path

import pytest

from proveai_tui import settings

KNOWN = {"app.quit", "cases.down", "case.triage"}


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "console.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_a_missing_file_is_no_settings_and_no_problem(tmp_path: Path) -> None:
    loaded = settings.load(tmp_path / "absent.toml", KNOWN)
    assert loaded.keymap == {} and loaded.problems == []


def test_keys_are_remapped_by_binding_id(tmp_path: Path) -> None:
    path = write(tmp_path, '[keys]\n"app.quit" = "ctrl+q"\n"cases.down" = "down , n"\n')
    loaded = settings.load(path, KNOWN)
    assert loaded.keymap == {"app.quit": "ctrl+q", "cases.down": "down,n"}
    assert loaded.problems == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[keys]\n"no.such" = "x"\n', "no binding has the id 'no.such'"),
        ('[keys]\n"app.quit" = 3\n', "'app.quit' needs keys as a string"),
        ('[keys]\n"app.quit" = ""\n', "'app.quit' needs keys as a string"),
        ('[keys]\n"app.quit" = "ctrl+q;rm -rf"\n', "'ctrl+q;rm -rf' is not a key name"),
        ('keys = "q"\n', "[keys] must be a table"),
        ('[keys]\n"app.quit" = "q"\n[colours]\n', "unknown section or setting 'colours'"),
    ],
)
def test_an_unusable_entry_is_named_and_the_rest_still_applies(
    tmp_path: Path, text: str, problem: str
) -> None:
    loaded = settings.load(write(tmp_path, text), KNOWN)
    assert len(loaded.problems) == 1
    assert problem in loaded.problems[0]
    assert "app.quit" not in loaded.keymap or loaded.keymap["app.quit"] == "q"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[keys\n", "not valid TOML"),
        (b"\xff\xfe[keys]", "not UTF-8"),
        (b"#" * (settings.MAX_BYTES + 1), "more than 64 KiB"),
    ],
)
def test_a_file_that_cannot_be_read_is_one_line_and_no_keymap(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    loaded = settings.load(write(tmp_path, content), KNOWN)
    assert loaded.keymap == {}
    assert len(loaded.problems) == 1 and problem in loaded.problems[0]


def test_the_file_is_found_by_variable_then_in_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVEAI_CONSOLE_CONFIG", str(tmp_path / "mine.toml"))
    assert settings.default_path() == tmp_path / "mine.toml"
    monkeypatch.delenv("PROVEAI_CONSOLE_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert settings.default_path() == tmp_path / "proveai" / "console.toml"
