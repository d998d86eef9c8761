"""The TLS listener's SSLContext, built from `[server.tls]`, with certificate rotation for new connections.

An asyncio server keeps the SSLContext it was started with, so rotation cannot replace that object.
Instead the listener's context carries an SNI callback that moves every new connection, during its
ClientHello, onto the *current* inner context (certificate chain, key and client CA store). Rotation
builds a new inner context and swaps one reference: handshakes that already happened keep the context
they were made with, so in-flight connections are never cut.

Anything wrong with the files is a `ConfigError` naming the key, the file and the reason; the server
never falls back to plaintext. The files are checked with the `ssl` module alone: `cryptography`
(~11 MiB resident, mostly its Rust library) is not loaded for TLS.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from pathlib import Path

from app.config import ConfigError, TLSConfig

log = logging.getLogger("registry.tls")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
_VERIFY_MODES = {"optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----")
_PEM_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----")


def tls_files(tls: TLSConfig | None) -> list[Path]:
    """Every file a TLS section names (what the config watcher must watch)."""
    if tls is None:
        return []
    files = [tls.server_certificate_bundle, tls.server_private_key]
    if tls.client_ca_bundle is not None:
        files.append(tls.client_ca_bundle)
    return files


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"server.tls.{key}: {path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"server.tls.{key}: {path}: cannot read: {exc.strerror or exc}") from None


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ConfigError("encrypted private keys are not supported")


def _check_certificate(tls: TLSConfig, data: bytes) -> None:
    where = f"server.tls.server_certificate_bundle: {tls.server_certificate_bundle}"
    if not _PEM_CERTIFICATE.search(data):
        raise ConfigError(f"{where}: no PEM certificate found")
    try:
        # The first certificate of the file, decoded by OpenSSL (the function CPython's own tests use).
        decoded = ssl._ssl._test_decode_cert(str(tls.server_certificate_bundle))  # type: ignore[attr-defined]
    except (ssl.SSLError, ValueError):
        raise ConfigError(f"{where}: no PEM certificate found") from None
    except AttributeError:  # a Python without the helper: the expiry warning is skipped
        return
    expires = ssl.cert_time_to_seconds(decoded["notAfter"])
    if expires < time.time():
        log.warning("the server certificate %s expired on %s", tls.server_certificate_bundle,
                    decoded["notAfter"])


def _check_private_key(tls: TLSConfig, data: bytes) -> None:
    where = f"server.tls.server_private_key: {tls.server_private_key}"
    found = _PEM_KEY.search(data)
    if found is None:
        raise ConfigError(f"{where}: no usable PEM private key found")
    if b"ENCRYPTED" in found.group(1) or b"Proc-Type: 4,ENCRYPTED" in data:
        raise ConfigError(f"{where}: the key is encrypted; encrypted private keys are not supported")


def build_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server context for `tls`: TLS 1.2+, the certificate chain and key, optional client verification.

    Raises ConfigError (naming key, file and reason) when a file is missing, unreadable or unusable.
    """
    certificate = _read("server_certificate_bundle", tls.server_certificate_bundle)
    key = _read("server_private_key", tls.server_private_key)
    _check_certificate(tls, certificate)
    _check_private_key(tls, key)
    # Not `create_default_context(CLIENT_AUTH)`: that loads the system's public CAs, which would then
    # vouch for client certificates. Only `client_ca_bundle` may.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    # Session tickets would let a client resume a session verified against a client CA that has
    # since been rotated out; every TLS 1.3 connection does a full handshake instead.
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    try:
        context.load_cert_chain(tls.server_certificate_bundle, tls.server_private_key,
                                password=_no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"server.tls.server_private_key: {tls.server_private_key}: does not match "
                              f"the certificate {tls.server_certificate_bundle} ({exc.reason})") from None
        raise ConfigError(f"server.tls.server_private_key: {tls.server_private_key}: no usable PEM private "
                          f"key found ({exc.reason or exc})") from None
    if tls.client_ca_bundle is not None:
        ca = _read("client_ca_bundle", tls.client_ca_bundle)
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", errors="replace"))
        except (ssl.SSLError, ValueError):
            raise ConfigError(f"server.tls.client_ca_bundle: {tls.client_ca_bundle}: "
                              "no PEM CA certificate found") from None
        context.verify_mode = _VERIFY_MODES[tls.client_auth]
    return context


class ServerTLS:
    """The listener's SSLContext plus the inner context new connections are moved onto."""

    def __init__(self, tls: TLSConfig) -> None:
        self._current = build_context(tls)
        self.context = build_context(tls)
        self.context.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                listener: ssl.SSLContext) -> None:
        # Called for every ClientHello, with or without SNI (clients send none for IP addresses).
        connection.context = self._current

    def swap(self, context: ssl.SSLContext) -> None:
        """Use `context` (from `build_context`) for every connection accepted from now on.

        Call it on the event loop thread. The verification mode is read from the listener's context
        when a connection is created, so it is updated there too (client_auth may change live).
        """
        self.context.verify_mode = context.verify_mode
        self._current = context
