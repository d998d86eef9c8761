"""TLS for the registry's outgoing HTTPS (upstreams, OIDC issuers, webhooks), and a leaner aiohttp.

Importing aiohttp builds two client SSL contexts at once and loads the system's CA certificates into
both (~2 MiB resident for ~150 certificates), even in a registry that never makes an HTTPS request.
`import_aiohttp()` imports it with that loading switched off, so its default contexts trust nothing;
every client of ours passes `verifying_context()` (or a context of its own configuration) instead, a
verifying context with the system's CAs built on first use. A client that forgot to would fail closed
(certificate verify failed), never open.

`import_aiohttp()` must run before anything else imports aiohttp (the command line does it first); when
aiohttp is already imported it does nothing.
"""

from __future__ import annotations

import ssl
import sys
import threading
from typing import Any

_verifying: ssl.SSLContext | None = None
_lock = threading.Lock()


def verifying_context() -> ssl.SSLContext:
    """A verifying client context with the system's trust store (SSL_CERT_FILE/SSL_CERT_DIR honoured)."""
    global _verifying
    with _lock:
        if _verifying is None:
            _verifying = ssl.create_default_context()
            _verifying.set_alpn_protocols(("http/1.1",))
        return _verifying


def import_aiohttp() -> None:
    if "aiohttp" in sys.modules:
        return
    original_default = ssl.create_default_context
    original_paths = ssl.SSLContext.set_default_verify_paths

    def without_cas(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifying, and trusting nothing
        return context

    def no_default_paths(self: ssl.SSLContext) -> None:
        return None

    ssl.create_default_context = without_cas
    ssl.SSLContext.set_default_verify_paths = no_default_paths  # type: ignore[method-assign]
    try:
        import aiohttp.connector  # noqa: F401
    finally:
        ssl.create_default_context = original_default
        ssl.SSLContext.set_default_verify_paths = original_paths  # type: ignore[method-assign]
