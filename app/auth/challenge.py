"""The `WWW-Authenticate` challenge of a 401: what a client must do to be let in.

With the token service on: `Bearer realm="<token endpoint URL>",service="…",scope="…"` (plus
`error="insufficient_scope"` when a token was presented but lacks the action), so that docker, podman,
skopeo and containerd fetch a token for exactly what the request needs. With it off: Basic.

The realm is `[auth.token] realm`, else the token endpoint of the host the client addressed: the
request's scheme and `Host`, or `X-Forwarded-Proto`/`X-Forwarded-Host` when the peer is a trusted
proxy.
"""

from __future__ import annotations

import re

from aiohttp import web

from app.auth.chain import parse_networks
from app.auth.scopes import challenge_scope
from app.config import Config

BASIC_REALM = "Simple-Registry"
TOKEN_PATH = "/token"
INSUFFICIENT_SCOPE = "insufficient_scope"
# A host (name, IPv4, [IPv6]) with an optional port: anything else never reaches a challenge.
_HOST_RE = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


class Challenger:
    def __init__(self, config: Config) -> None:
        self.bearer = config.auth.token_service
        self.realm = config.auth.token.realm
        self.service = config.auth.token.service
        self._trusted = parse_networks(config.global_.trusted_proxies)
        self._fallback_host = f"{config.server.bind_address}:{config.server.port}"

    def header(self, request: web.BaseRequest, action: str | None, namespace: str | None,
               error: str | None = None) -> str:
        if not self.bearer:
            return f'Basic realm="{BASIC_REALM}"'
        parts = [f'realm="{self.realm_of(request)}"', f'service="{self.service}"']
        scope = challenge_scope(action, namespace) if action is not None else None
        if scope is not None:
            parts.append(f'scope="{scope}"')
        if error is not None:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    def realm_of(self, request: web.BaseRequest) -> str:
        if self.realm is not None:
            return self.realm
        scheme, host = request.scheme, request.host
        if self._from_trusted_proxy(request):
            scheme = _first(request.headers.get("X-Forwarded-Proto")) or scheme
            host = _first(request.headers.get("X-Forwarded-Host")) or host
        if scheme not in ("http", "https"):
            scheme = "http"
        if not _HOST_RE.fullmatch(host or ""):
            host = self._fallback_host
        return f"{scheme}://{host}{TOKEN_PATH}"

    def _from_trusted_proxy(self, request: web.BaseRequest) -> bool:
        if not self._trusted or request.remote is None:
            return False
        from ipaddress import ip_address

        try:
            peer = ip_address(request.remote)
        except ValueError:
            return False
        return any(peer in network for network in self._trusted)


def _first(value: str | None) -> str | None:
    """The first (client-side) entry of a comma-separated forwarded header."""
    if not value:
        return None
    return value.split(",", 1)[0].strip().lower() or None
