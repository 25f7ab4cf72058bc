"""API keys: sources, roles and the file that is re-read on change."""

from __future__ import annotations

import os

import pytest

from proveai_agent.api.auth import KeyRing, ensure_keys_file, parse_entries


def test_env_keys_are_comma_separated_with_optional_role():
    keys = parse_entries(" k1 ,k2:read, k3:operator,,weird:key", ",")
    assert keys == {"k1": "operator", "k2": "read", "k3": "operator", "weird:key": "operator"}


def test_keys_file_lines_with_roles_and_comments():
    text = "# rotated monthly\nabc operator\n\ndef read  # dashboards\nghi\n"
    assert parse_entries(text, None) == {"abc": "operator", "def": "read", "ghi": "operator"}


def test_keys_file_with_an_unknown_role_is_an_error():
    with pytest.raises(ValueError, match="unknown role"):
        parse_entries("abc admin\n", None)


def test_keyring_rereads_the_file_when_it_changes(tmp_path):
    path = tmp_path / "keys"
    path.write_text("old operator\n")
    ring = KeyRing(None, path)
    assert ring.role_of("old") == "operator"
    path.write_text("new read\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert ring.role_of("new") == "read"
    assert ring.role_of("old") is None


def test_a_broken_keys_file_keeps_the_previous_keys(tmp_path):
    path = tmp_path / "keys"
    path.write_text("good operator\n")
    ring = KeyRing(None, path)
    assert ring.role_of("good") == "operator"
    path.write_text("good superuser\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert ring.role_of("good") == "operator"


def test_no_keys_means_nothing_is_accepted(tmp_path):
    ring = KeyRing("", tmp_path / "absent")
    assert len(ring) == 0
    assert ring.role_of("") is None
    assert ring.role_of("anything") is None


def test_ensure_keys_file_creates_a_private_operator_key_once(tmp_path):
    path = tmp_path / "keys"
    key = ensure_keys_file(path)
    assert len(key) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert ensure_keys_file(path) == key


def test_a_keys_file_moved_into_place_with_the_old_size_and_time_is_reread(tmp_path):
    path, staged = tmp_path / "keys", tmp_path / "keys.new"
    path.write_text("aaaa operator\n")
    ring = KeyRing(None, path)
    assert ring.role_of("aaaa") == "operator"
    staged.write_text("bbbb operator\n")
    st = path.stat()
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(staged, path)
    assert ring.role_of("bbbb") == "operator"
    assert ring.role_of("aaaa") is None
