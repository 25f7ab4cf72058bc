"""`proveai-agent stack render`: write Envoy's envoy.yaml from the stack's .env file."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .envoy import EnvFileError, EnvoyConfigError, parse_env_file, render_settings, settings

DEFAULT_ENV = Path("stack/.env")
DEFAULT_OUT = Path("stack/envoy/envoy.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `stack render`."""
    parser.add_argument(
        "--env",
        type=Path,
        default=DEFAULT_ENV,
        help=f"the variables, in .env syntax (default {DEFAULT_ENV})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where envoy.yaml is written, mode 0600 (default {DEFAULT_OUT})",
    )


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text` at once, readable by its owner only (it holds keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    """Render and write envoy.yaml; 0 on success, 1 with a message on stderr otherwise."""
    env_path: Path = args.env
    out: Path = args.out
    if not env_path.is_file():
        print(
            f"stack render: {env_path} not found; copy stack/.env.example to it and set "
            "ENVOY_API_KEYS (or AUTH_MODE=basic and ENVOY_HTPASSWD_FILE)",
            file=sys.stderr,
        )
        return 1
    try:
        env = parse_env_file(env_path)
        checked = settings(env, env_path.resolve().parent)
        text = render_settings(checked)
    except (OSError, EnvFileError, EnvoyConfigError) as exc:
        print(f"stack render: {exc}", file=sys.stderr)
        return 1
    try:
        write_private(out, text)
    except OSError as exc:
        print(f"stack render: cannot write {out}: {exc}", file=sys.stderr)
        return 1

    auth = (
        f"api-key ({len(checked.api_keys)} {'key' if len(checked.api_keys) == 1 else 'keys'})"
        if checked.auth_mode == "api-key"
        else "basic (htpasswd)"
    )
    transport = "TLS" if checked.tls else "plaintext"
    print(f"wrote {out}: auth {auth}, {transport}")
    for listener in checked.listeners:
        upstream = f"{listener.upstream.host}:{listener.upstream.port}"
        print(f"  {listener.name:<18} {checked.listen_address}:{listener.port} -> {upstream}")
    return 0
