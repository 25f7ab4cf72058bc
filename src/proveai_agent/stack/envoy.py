"""Envoy's configuration, generated from the variables of the stack's `.env` file.

Envoy is the stack's only door from outside. `render()` turns the variables (documented in
stack/.env.example) into an `envoy.yaml` from the fragments of stack/envoy/envoy.yaml.tmpl:
one listener for each configured upstream, authentication by API key (the Lua filter
stack/envoy/auth.lua) or by Basic auth (Envoy's own filter and an htpasswd file), optional
TLS on every listener, and credentials stripped before a request goes upstream, except that
requests to the agent carry the agent's own key.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

STACK_DIR = Path(__file__).resolve().parents[3] / "stack"
DEFAULT_TEMPLATE = STACK_DIR / "envoy" / "envoy.yaml.tmpl"
DEFAULT_LUA = STACK_DIR / "envoy" / "auth.lua"

AUTH_MODES = ("api-key", "basic")
AGENT_ROLES = ("operator", "read")
MIN_KEY_LENGTH = 16

DEFAULTS: dict[str, str] = {
    "AUTH_MODE": "api-key",
    "ENVOY_API_KEYS": "",
    "ENVOY_HTPASSWD_FILE": "",
    "ENVOY_LISTEN_ADDRESS": "0.0.0.0",
    "ENVOY_TLS_CERT": "",
    "ENVOY_TLS_KEY": "",
    "OTLP_GRPC_PORT": "4317",
    "OTLP_HTTP_PORT": "4318",
    "PROMETHEUS_PORT": "9090",
    "VM_PORT": "8428",
    "COLLECTOR_METRICS_PORT": "8889",
    "AGENT_PORT": "8470",
    "COLLECTOR_HOST": "collector",
    "COLLECTOR_OTLP_GRPC_PORT": "4317",
    "COLLECTOR_OTLP_HTTP_PORT": "4318",
    "COLLECTOR_METRICS_UPSTREAM_PORT": "8889",
    "PROMETHEUS_UPSTREAM": "prometheus:9090",
    "VM_UPSTREAM": "victoriametrics:8428",
    "AGENT_UPSTREAM": "proveai-agent:8470",
    "AGENT_API_KEY": "",
}

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FRAGMENT = re.compile(r"^#@ fragment (\w+)\s*$", re.MULTILINE)
_HTPASSWD_LINE = re.compile(r"[^:\s]+:\{SHA\}[A-Za-z0-9+/]{27}=")
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")
_OMIT = "\x00"


class EnvoyConfigError(ValueError):
    """The variables do not make a usable Envoy configuration; the message says which."""


@dataclass(frozen=True)
class Upstream:
    """Where a listener forwards to."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def same_as(self, other: Upstream | None) -> bool:
        return (
            other is not None
            and self.host.lower() == other.host.lower()
            and self.port == other.port
        )


@dataclass(frozen=True)
class Listener:
    """One of Envoy's listeners: its name (also its cluster's), port and upstream."""

    name: str
    port: int
    upstream: Upstream
    grpc: bool = False
    agent_api: bool = False


@dataclass(frozen=True)
class EnvoySettings:
    """The checked meaning of the variables: what `render()` turns into envoy.yaml."""

    auth_mode: str
    api_keys: tuple[str, ...]
    htpasswd: str | None
    listen_address: str
    tls: tuple[str, str] | None
    agent_upstream: Upstream | None
    agent_api_key: str | None
    listeners: tuple[Listener, ...]

    def to_agent(self, listener: Listener) -> bool:
        """Whether the listener forwards to the agent (which needs a key of its own)."""
        return listener.agent_api or listener.upstream.same_as(self.agent_upstream)


class EnvFileError(ValueError):
    """A `.env` file that cannot be read as KEY=VALUE lines; the message names the line."""


def parse_env_file(path: Path | str) -> dict[str, str]:
    """The variables of a `.env` file, in the syntax docker compose reads.

    Lines are `KEY=VALUE`, optionally after `export `; blank lines and lines starting
    with `#` are skipped. A value in single quotes is taken literally, one in double
    quotes understands `\\n`, `\\t`, `\\"` and `\\\\`; an unquoted value ends at ` #`
    and is stripped. `${VAR}` is not expanded.

    Raises:
        EnvFileError: for a line that is none of these, naming the file and line.
        OSError: when the file cannot be read.
    """
    path = Path(path)
    result: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _ENV_NAME.fullmatch(name):
            raise EnvFileError(f"{path}:{number}: expected KEY=VALUE, got {raw.strip()!r}")
        try:
            result[name] = _env_value(value.strip())
        except ValueError as exc:
            raise EnvFileError(f"{path}:{number}: {name}: {exc}") from None
    return result


def _env_value(text: str) -> str:
    if text[:1] in ("'", '"'):
        quote = text[0]
        end = _closing_quote(text, quote)
        if end < 0:
            raise ValueError(f"unterminated {quote} quote")
        rest = text[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            raise ValueError(f"unexpected text after the closing quote: {rest!r}")
        inner = text[1:end]
        return inner if quote == "'" else _unescape(inner)
    value = re.split(r"\s+#", text, maxsplit=1)[0]
    return value.strip()


def _closing_quote(text: str, quote: str) -> int:
    i = 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i
        i += 1
    return -1


def _unescape(text: str) -> str:
    escapes = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(0)), text)


def _get(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    return (DEFAULTS[name] if value is None else value).strip()


def _port(env: Mapping[str, str], name: str) -> int:
    text = _get(env, name)
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise EnvoyConfigError(f"{name}={text!r} is not a port (a number from 1 to 65535)")
    return int(text)


def _upstream(env: Mapping[str, str], name: str) -> Upstream | None:
    """HOST:PORT from `name`; None when it is set to nothing (no such service)."""
    text = _get(env, name)
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EnvoyConfigError(
            f"{name}={text!r} is not HOST:PORT (leave it empty when there is no such service)"
        )
    return Upstream(host, int(port))


def _collector(env: Mapping[str, str], port_name: str) -> Upstream | None:
    host = _get(env, "COLLECTOR_HOST")
    if not host or not _get(env, port_name):
        return None
    return Upstream(host, _port(env, port_name))


def _api_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    keys: list[str] = []
    for raw in _get(env, "ENVOY_API_KEYS").split(","):
        key = raw.strip()
        if not key:
            continue
        position = len(keys) + 1
        _, _, role = key.rpartition(":")
        if ":" in key and role in AGENT_ROLES:
            raise EnvoyConfigError(
                f"ENVOY_API_KEYS: key {position} ends in ':{role}', but Envoy has no roles: "
                "every listed key passes; roles belong to the agent's PROVEAI_API_KEYS"
            )
        if not _KEY_CHARS.fullmatch(key):
            raise EnvoyConfigError(
                f"ENVOY_API_KEYS: key {position} has spaces or characters that are not "
                "printable ASCII, which cannot travel in an HTTP header"
            )
        if len(key) < MIN_KEY_LENGTH:
            raise EnvoyConfigError(
                f"ENVOY_API_KEYS: key {position} is shorter than {MIN_KEY_LENGTH} characters; "
                "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def _htpasswd(env: Mapping[str, str], base_dir: Path | None) -> str:
    name = _get(env, "ENVOY_HTPASSWD_FILE")
    if not name:
        raise EnvoyConfigError(
            "AUTH_MODE=basic needs ENVOY_HTPASSWD_FILE, an htpasswd file of {SHA} entries "
            "(htpasswd -s -c FILE USER)"
        )
    path = Path(name)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvoyConfigError(f"ENVOY_HTPASSWD_FILE: cannot read {path}: {exc}") from exc
    lines = [line.strip() for line in text.splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    for number, line in enumerate(lines, 1):
        if line and not line.startswith("#") and not _HTPASSWD_LINE.fullmatch(line):
            raise EnvoyConfigError(
                f"ENVOY_HTPASSWD_FILE: {path}:{number} is not USER:{{SHA}}BASE64; Envoy "
                "accepts only SHA-1 entries (htpasswd -s), not bcrypt, MD5 or crypt"
            )
    if not entries:
        raise EnvoyConfigError(f"ENVOY_HTPASSWD_FILE: {path} has no users")
    return "\n".join(entries) + "\n"


def _listen_address(env: Mapping[str, str]) -> str:
    text = _get(env, "ENVOY_LISTEN_ADDRESS")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise EnvoyConfigError(
            f"ENVOY_LISTEN_ADDRESS={text!r} is not an IP address (0.0.0.0, 127.0.0.1, ::)"
        ) from None


def _tls(env: Mapping[str, str]) -> tuple[str, str] | None:
    cert, key = _get(env, "ENVOY_TLS_CERT"), _get(env, "ENVOY_TLS_KEY")
    if bool(cert) != bool(key):
        raise EnvoyConfigError("ENVOY_TLS_CERT and ENVOY_TLS_KEY go together: set both or none")
    return (cert, key) if cert else None


def _listeners(env: Mapping[str, str]) -> tuple[Listener, ...]:
    candidates = [
        ("otlp_grpc", "OTLP_GRPC_PORT", _collector(env, "COLLECTOR_OTLP_GRPC_PORT"), True),
        ("otlp_http", "OTLP_HTTP_PORT", _collector(env, "COLLECTOR_OTLP_HTTP_PORT"), False),
        (
            "collector_metrics",
            "COLLECTOR_METRICS_PORT",
            _collector(env, "COLLECTOR_METRICS_UPSTREAM_PORT"),
            False,
        ),
        ("prometheus", "PROMETHEUS_PORT", _upstream(env, "PROMETHEUS_UPSTREAM"), False),
        ("victoriametrics", "VM_PORT", _upstream(env, "VM_UPSTREAM"), False),
        ("agent", "AGENT_PORT", _upstream(env, "AGENT_UPSTREAM"), False),
    ]
    listeners: list[Listener] = []
    taken: dict[int, str] = {}
    for name, port_name, upstream, grpc in candidates:
        if upstream is None:
            continue
        port = _port(env, port_name)
        if port in taken:
            raise EnvoyConfigError(
                f"{port_name}={port} is also {taken[port]}: each listener needs its own port"
            )
        taken[port] = port_name
        listeners.append(Listener(name, port, upstream, grpc, agent_api=name == "agent"))
    if not listeners:
        raise EnvoyConfigError(
            "no upstream is configured (COLLECTOR_HOST, PROMETHEUS_UPSTREAM, VM_UPSTREAM, "
            "AGENT_UPSTREAM are all empty): Envoy would have nothing to listen for"
        )
    return tuple(listeners)


def settings(env: Mapping[str, str], base_dir: Path | None = None) -> EnvoySettings:
    """Check the variables and say what they mean; missing ones take their defaults.

    Args:
        env: the variables, for example from `parse_env_file`.
        base_dir: where a relative ENVOY_HTPASSWD_FILE is found (the .env file's folder);
            the current directory when None.

    Raises:
        EnvoyConfigError: naming the variable that is wrong and what it should be.
    """
    mode = _get(env, "AUTH_MODE").lower()
    if mode not in AUTH_MODES:
        raise EnvoyConfigError(
            f"AUTH_MODE={_get(env, 'AUTH_MODE')!r} is unknown: use api-key or basic"
        )
    keys: tuple[str, ...] = ()
    htpasswd = None
    if mode == "api-key":
        keys = _api_keys(env)
        if not keys:
            raise EnvoyConfigError(
                "AUTH_MODE=api-key needs at least one key in ENVOY_API_KEYS "
                "(comma-separated); make one with: "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
    else:
        htpasswd = _htpasswd(env, base_dir)
    agent_key = _get(env, "AGENT_API_KEY") or None
    if agent_key is not None and not _KEY_CHARS.fullmatch(agent_key):
        raise EnvoyConfigError(
            "AGENT_API_KEY has spaces or characters that are not printable ASCII"
        )
    return EnvoySettings(
        auth_mode=mode,
        api_keys=keys,
        htpasswd=htpasswd,
        listen_address=_listen_address(env),
        tls=_tls(env),
        agent_upstream=_upstream(env, "AGENT_UPSTREAM"),
        agent_api_key=agent_key,
        listeners=_listeners(env),
    )


def load_fragments(text: str) -> dict[str, Template]:
    """The template's fragments by name; the text before the first one is its header."""
    parts = _FRAGMENT.split(text)
    return {
        name: Template(body.strip("\n"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else "" for line in text.splitlines())


def _yaml_string(value: str) -> str:
    return json.dumps(value)


def _listener_yaml(
    fragments: Mapping[str, Template], s: EnvoySettings, listener: Listener, lua_source: str
) -> str:
    if s.auth_mode == "api-key":
        auth_filter = fragments["lua_auth"].substitute(lua_source=_indent(lua_source, 18))
        metadata = fragments["lua_metadata"].substitute(
            api_keys=json.dumps(list(s.api_keys)), grpc=json.dumps(listener.grpc)
        )
    else:
        auth_filter = fragments["basic_auth"].substitute(
            htpasswd=_yaml_string(s.htpasswd or "")
        )
        metadata = _OMIT

    if not s.to_agent(listener):
        upstream_headers = fragments["strip_auth"].substitute()
    elif s.agent_api_key is not None:
        upstream_headers = fragments["agent_key"].substitute(
            agent_key=_yaml_string(s.agent_api_key)
        )
    else:
        upstream_headers = _OMIT

    tls = _OMIT
    if s.tls is not None:
        tls = fragments["tls"].substitute(
            cert=_yaml_string(s.tls[0]), key=_yaml_string(s.tls[1])
        )

    return fragments["listener"].substitute(
        name=listener.name,
        address=_yaml_string(s.listen_address),
        port=listener.port,
        websocket=fragments["websocket"].substitute() if listener.agent_api else _OMIT,
        timeout="0s" if listener.agent_api else "120s",
        metadata=metadata,
        upstream_headers=upstream_headers,
        auth_filter=auth_filter,
        tls=tls,
    )


def _cluster_yaml(fragments: Mapping[str, Template], listener: Listener) -> str:
    upstream = listener.upstream
    return fragments["cluster"].substitute(
        name=listener.name,
        cluster_type="STATIC" if upstream.is_ip else "STRICT_DNS",
        host=_yaml_string(upstream.host),
        port=upstream.port,
        protocol=fragments["cluster_http2"].substitute() if listener.grpc else _OMIT,
    )


def render(
    env: Mapping[str, str],
    *,
    base_dir: Path | None = None,
    template: str | None = None,
    lua_source: str | None = None,
) -> str:
    """The text of envoy.yaml for these variables.

    Args:
        env: the variables of a `.env` file; missing ones take the defaults of
            stack/.env.example.
        base_dir: where a relative ENVOY_HTPASSWD_FILE is found.
        template: the template's text; stack/envoy/envoy.yaml.tmpl when None.
        lua_source: the Lua filter's code; stack/envoy/auth.lua when None.

    Raises:
        EnvoyConfigError: when the variables are wrong, saying which and why.
    """
    return render_settings(settings(env, base_dir), template=template, lua_source=lua_source)


def render_settings(
    s: EnvoySettings, *, template: str | None = None, lua_source: str | None = None
) -> str:
    """The text of envoy.yaml for settings already checked by `settings()`."""
    fragments = load_fragments(
        template if template is not None else DEFAULT_TEMPLATE.read_text()
    )
    if lua_source is None:
        lua_source = DEFAULT_LUA.read_text()
    listeners = "\n".join(_listener_yaml(fragments, s, ln, lua_source) for ln in s.listeners)
    clusters = "\n".join(_cluster_yaml(fragments, ln) for ln in s.listeners)
    text = fragments["config"].substitute(listeners=listeners, clusters=clusters)
    lines = [line.rstrip() for line in text.splitlines() if line.strip() != _OMIT]
    return "\n".join(lines) + "\n"
