"""The API-key decision of stack/envoy/auth.lua, run under luajit without Envoy.

The filter accepts a configured key in X-API-Key, as a Bearer token or as the password of
Basic auth (any user name), the forms the agent accepts; anything else is refused, and an
empty key list refuses everything.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

AUTH_LUA = Path(__file__).resolve().parents[1] / "stack" / "envoy" / "auth.lua"
LUAJIT = shutil.which("luajit")

pytestmark = pytest.mark.skipif(
    LUAJIT is None, reason="luajit not found: install the Debian package 'luajit'"
)

OLD = "old-key-0123456789abcdef"
NEW = "new-key-fedcba9876543210"
OTHER = "other-key-0a1b2c3d4e5f6789"

DECIDE = """
local auth = dofile(arg[1])
local keys = {}
for i = 2, #arg do keys[#keys + 1] = arg[i] end
io.write(auth.decide(os.getenv("T_X_API_KEY"), os.getenv("T_AUTHORIZATION"), keys)
  and "allow" or "deny")
"""

ON_REQUEST = """
local auth = dofile(arg[1])
local grpc = arg[2] == "grpc"
local keys = {}
for i = 3, #arg do keys[#keys + 1] = arg[i] end
local request_headers = {
  ["x-api-key"] = os.getenv("T_X_API_KEY"),
  ["authorization"] = os.getenv("T_AUTHORIZATION"),
  ["api-key"] = os.getenv("T_API_KEY"),
}
local handle = {}
function handle:metadata()
  return { get = function(_, name)
    if name == "api_keys" then return keys end
    if name == "grpc" then return grpc end
  end }
end
function handle:headers()
  return { get = function(_, name) return request_headers[name] end }
end
function handle:respond(headers, body)
  local names = {}
  for name in pairs(headers) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do io.write(name, "=", headers[name], "\\n") end
  io.write("body=", body, "\\n")
end
envoy_on_request(handle)
io.write("end\\n")
"""


def _luajit(script: str, args: list[str], headers: dict[str, str | None]) -> str:
    assert LUAJIT is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("T_")}
    env.update({f"T_{name}": value for name, value in headers.items() if value is not None})
    done = subprocess.run(
        [LUAJIT, "-", str(AUTH_LUA), *args],
        input=script,
        capture_output=True,
        text=True,
        env=env,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def decide(keys: list[str], x_api_key: str | None = None, authorization: str | None = None):
    """'allow' or 'deny', as auth.decide() answers for these header values and keys."""
    return _luajit(DECIDE, keys, {"X_API_KEY": x_api_key, "AUTHORIZATION": authorization})


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_no_credentials_are_refused():
    assert decide([OLD, NEW]) == "deny"
    assert decide([OLD, NEW], x_api_key="", authorization="") == "deny"


def test_a_wrong_key_is_refused():
    assert decide([OLD, NEW], x_api_key=OTHER) == "deny"
    assert decide([OLD, NEW], authorization=f"Bearer {OTHER}") == "deny"


def test_a_prefix_or_extension_of_a_key_is_refused():
    assert decide([NEW], x_api_key=NEW[:-1]) == "deny"
    assert decide([NEW], x_api_key=NEW + "x") == "deny"


@pytest.mark.parametrize("key", [OLD, NEW, OTHER])
def test_each_of_several_keys_is_accepted_in_x_api_key(key):
    assert decide([OLD, NEW, OTHER], x_api_key=key) == "allow"


@pytest.mark.parametrize("key", [OLD, NEW, OTHER])
def test_each_of_several_keys_is_accepted_as_a_bearer_token(key):
    assert decide([OLD, NEW, OTHER], authorization=f"Bearer {key}") == "allow"


def test_the_bearer_scheme_is_case_insensitive():
    assert decide([NEW], authorization=f"bearer {NEW}") == "allow"


def test_a_removed_key_is_refused_after_rotation():
    assert decide([OLD, NEW], x_api_key=OLD) == "allow"
    assert decide([NEW], x_api_key=OLD) == "deny"
    assert decide([NEW], authorization=f"Bearer {OLD}") == "deny"
    assert decide([NEW], x_api_key=NEW) == "allow"


def test_a_key_as_the_basic_password_is_accepted_with_any_user_name():
    assert decide([OLD, NEW], authorization=basic("grafana", NEW)) == "allow"
    assert decide([OLD, NEW], authorization=basic("", OLD)) == "allow"


def test_basic_with_a_wrong_password_is_refused():
    assert decide([OLD, NEW], authorization=basic("grafana", OTHER)) == "deny"


def test_basic_with_the_key_as_user_name_is_refused():
    assert decide([NEW], authorization=basic(NEW, "")) == "deny"
    assert decide([NEW], authorization=basic(NEW, "password")) == "deny"


def test_basic_that_is_not_base64_is_refused():
    assert decide([NEW], authorization=f"Basic {NEW}") == "deny"
    assert decide([NEW], authorization="Basic Zm9v=Zm9v") == "deny"


def test_a_key_without_a_known_scheme_is_refused():
    assert decide([NEW], authorization=NEW) == "deny"
    assert decide([NEW], authorization=f"Token {NEW}") == "deny"
    assert decide([NEW], authorization=f"ApiKey {NEW}") == "deny"


def test_x_api_key_decides_when_both_headers_are_present():
    assert decide([NEW], x_api_key=OTHER, authorization=f"Bearer {NEW}") == "deny"
    assert decide([NEW], x_api_key=NEW, authorization=f"Bearer {OTHER}") == "allow"


def test_an_empty_key_list_refuses_everything():
    assert decide([], x_api_key=NEW) == "deny"
    assert decide([], authorization=f"Bearer {NEW}") == "deny"
    assert decide([], authorization=basic("u", NEW)) == "deny"
    assert decide([], x_api_key="", authorization="Bearer ") == "deny"


def on_request(mode: str, keys: list[str], **headers: str | None) -> str:
    return _luajit(ON_REQUEST, [mode, *keys], {k.upper(): v for k, v in headers.items()})


def test_the_filter_lets_a_valid_key_through_without_answering():
    assert on_request("http", [NEW], x_api_key=NEW) == "end\n"


def test_the_filter_answers_401_with_a_short_body_on_http_listeners():
    reply = on_request("http", [NEW], x_api_key=OTHER)
    assert ":status=401\n" in reply
    assert "body=missing or invalid API key\n" in reply
    assert OTHER not in reply


def test_the_filter_answers_grpc_status_16_on_the_grpc_listener():
    reply = on_request("grpc", [NEW])
    assert ":status=200\n" in reply
    assert "content-type=application/grpc\n" in reply
    assert "grpc-status=16\n" in reply
    assert "body=\n" in reply


def test_the_filter_ignores_a_key_in_another_header():
    assert ":status=401\n" in on_request("http", [NEW], api_key=NEW)
