"""The token service's decisions: who asks, what the policy grants them, which tokens they get.

The HTTP handler (`app/http/token.py`) parses the two request forms (GET with query parameters, and the
OAuth2 POST form) into a `TokenRequest` and asks here. Grants are the intersection of the requested
actions and what the access policies allow the caller (SPEC 5.1); a caller granted nothing still gets
a token (it is not the token service's job to refuse, the registry endpoints do that).

Lifetimes: access tokens `expires_in`; refresh tokens `refresh_token_expires_in`. A caller who proved
itself with an OIDC token never gets a token that outlives that OIDC token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from app import errors
from app.auth.chain import Authenticator
from app.auth.identity import Identity
from app.auth.scopes import Scope, access_claim, scope_text
from app.auth.tokens import REFRESH, TokenAuthority
from app.policy import Authorizer

log = logging.getLogger("registry.auth")


@dataclass(frozen=True)
class TokenRequest:
    service: str | None
    scopes: list[Scope] = field(default_factory=list)
    offline: bool = False  # a refresh token is wanted too
    client_id: str | None = None


class TokenService:
    """Built for one request from the configuration generation that serves it."""

    def __init__(self, authenticator: Authenticator, authorizer: Authorizer) -> None:
        assert authenticator.tokens is not None, "the token service is off"
        self.tokens: TokenAuthority = authenticator.tokens
        self.authenticator = authenticator
        self.authorizer = authorizer

    def check_service(self, service: str | None) -> None:
        if service is not None and service != self.tokens.config.service:
            raise errors.RegistryError(
                f"this token service issues tokens for service {self.tokens.config.service!r}, not "
                f"{service[:100]!r}", status=400)

    async def caller(self, request: web.BaseRequest) -> Identity:
        return await self.authenticator.authenticate(request, accept_tokens=False)

    async def login(self, base: Identity, username: str, password: str) -> Identity:
        """The OAuth2 password grant: the same credentials Basic would accept."""
        return await self.authenticator.credentials(base, username, password)

    async def refreshed(self, base: Identity, refresh_token: str) -> Identity:
        """The identity a refresh token was issued to, as today's configuration knows it."""
        if not self.tokens.is_ours(refresh_token):
            raise errors.Unauthorized("not a refresh token of this registry")
        claims = await self.tokens.verify(refresh_token, REFRESH)
        return self.authenticator.from_token_identity(base, claims["ident"])

    async def answer(self, identity: Identity, request: TokenRequest, *, grant: str, oauth: bool = False,
                     refresh_token: str | None = None) -> dict[str, Any]:
        """The JSON answer: an access token for the granted scopes, and a refresh token when asked
        (a refresh grant gets back the refresh token it presented)."""
        config = self.tokens.config
        granted = {scope: self.authorizer.granted(identity, scope) for scope in request.scopes}
        access = access_claim(request.scopes, granted)
        ident = self.authenticator.token_identity(identity)
        not_after = _oidc_expiry(identity)
        issued = await self.tokens.issue(identity.subject, ident, access=access, lifetime=config.expires_in,
                                         not_after=not_after)
        body: dict[str, Any] = {"token": issued.token, "access_token": issued.token,
                                "expires_in": issued.expires_in, "issued_at": issued.issued_at}
        if oauth:
            body["scope"] = scope_text(access)
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        elif request.offline and not identity.anonymous:
            refresh = await self.tokens.issue(identity.subject, ident, access=None,
                                              lifetime=config.refresh_token_expires_in, not_after=not_after)
            body["refresh_token"] = refresh.token
        log.info("token issued", extra={"fields": {
            "subject": identity.subject or "(anonymous)", "client_id": (request.client_id or "")[:100],
            "granted": scope_text(access) or "(nothing)", "requested": " ".join(map(str, request.scopes)),
            "grant": grant, "refresh": "refresh_token" in body}})
        return body


def _oidc_expiry(identity: Identity) -> float | None:
    expiry = identity.oidc_claims.get("exp") if identity.oidc_provider is not None else None
    return float(expiry) if isinstance(expiry, int | float) else None
