"""TLS for the agent's listener: the server context from its certificate and key files,
swapped for a new one when the files change.

A rotated certificate is picked up without a restart: the files are read every few
seconds and, when their content changed and the new pair loads, new connections get it
(through the listener's SNI callback, so no live context is ever modified); connections
already open keep the certificate they started with. A pair that does not load (a key
written before its certificate, say) is reported once and the previous one stays in use.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from pathlib import Path

logger = logging.getLogger(__name__)

_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class TlsError(ValueError):
    """A certificate or key file that cannot be served, with the file named."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsError(f"{what} {path}: is a folder, not a file") from None
    except PermissionError:
        raise TlsError(f"{what} {path}: cannot read it (permission denied)") from None
    except OSError as exc:
        raise TlsError(f"{what} {path}: {exc.strerror or exc}") from None


def _check_certificate(path: Path, pem: bytes) -> None:
    """Refuse a certificate file without a PEM certificate that parses, before the pair is
    loaded: OpenSSL's own error would not say which of the two files is wrong."""
    blocks = _CERTIFICATE.findall(pem.decode("ascii", "replace"))
    if not blocks:
        raise TlsError(f"TLS certificate {path}: holds no PEM certificate")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cadata="\n".join(blocks))
    except ssl.SSLError as exc:
        raise TlsError(f"TLS certificate {path}: not a valid certificate ({exc})") from None


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context serving `cert` (PEM, the chain after the leaf) with `key`.

    Raises:
        TlsError: a file is missing or unreadable, holds no certificate or key, the key is
            encrypted (nobody could type its password into a daemon), or it does not belong
            to the certificate.
    """
    _check_certificate(cert, _read(cert, "TLS certificate"))
    _read(key, "TLS key")

    def no_password() -> str:
        raise TlsError(f"TLS key {key}: is encrypted; give the agent an unencrypted key")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                f"TLS key {key}: does not belong to the certificate in {cert}"
            ) from None
        raise TlsError(f"TLS key {key}: not a PEM private key ({exc})") from None
    return context


class ServerTls:
    """The listener's TLS: `context` goes to the server; `run()` follows the files.

    Args:
        cert: the certificate file (PEM: leaf first, then any intermediates).
        key: its unencrypted private key file (PEM).

    Raises:
        TlsError: when the pair cannot be served at start (see `server_context`).
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self._seen = self._state()
        self.context = server_context(cert, key)
        self.context.sni_callback = self._pick
        self.current = self.context

    def _state(self) -> tuple[bytes, bytes] | str:
        """Both files' content, or why they cannot be read."""
        try:
            return _read(self.cert, "TLS certificate"), _read(self.key, "TLS key")
        except TlsError as exc:
            return str(exc)

    def _pick(
        self, connection: ssl.SSLObject, server_name: str | None, listener: ssl.SSLContext
    ) -> None:
        """Called on every handshake, with or without SNI: hand it the newest pair."""
        if self.current is not listener:
            connection.context = self.current

    def reload(self) -> bool:
        """Read the files; when they changed and load, serve them. True when swapped.

        Each change is reported once, not on every read while it lasts."""
        state = self._state()
        if state == self._seen:
            return False
        self._seen = state
        if isinstance(state, str):
            logger.warning("TLS certificate not reloaded, the previous one stays: %s", state)
            return False
        try:
            fresh = server_context(self.cert, self.key)
        except TlsError as exc:
            logger.warning("TLS certificate not reloaded, the previous one stays: %s", exc)
            return False
        self.current = fresh
        logger.info("TLS certificate reloaded from %s", self.cert)
        return True

    async def run(self, interval_s: float) -> None:
        """Reload every `interval_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.reload()
