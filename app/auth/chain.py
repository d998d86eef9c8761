"""The authentication chain of SPEC 5: mTLS identity, then a bearer token (ours or OIDC), then Basic,
else anonymous.

The certificate identity (when a verified client certificate was presented) and the credentials of the
`Authorization` header are combined into one `Identity`. Credentials that are present but wrong are a
401, never a silent fall back to anonymous; `Basic Og==` (empty username and password, what some
clients send when they have none) is anonymous. A bearer token of our own token service gives the
identity it was issued to, revalidated against today's configuration, plus the grants of the token.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from app import errors
from app.auth.basic import BasicIdentity, BasicVerifier
from app.auth.identity import Identity
from app.auth.mtls import client_certificate_identity
from app.config import Config
from app.metrics import Counter
from app.storage import Storage

log = logging.getLogger("registry.auth")

MAX_AUTHORIZATION_BYTES = 8192

auth_attempts = Counter("registry_auth_attempts", "Authentication attempts", ["method", "result"])

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: list[str]) -> list[IPNetwork]:
    """The trusted proxies' networks (the configuration checked that each one parses)."""
    return [ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


if TYPE_CHECKING:
    from app.auth.oidc import OIDCProvider
    from app.auth.tokens import TokenAuthority


class Authenticator:
    """One configuration generation's identities, OIDC providers, token service and trusted proxies."""

    def __init__(self, config: Config, storage: Storage, previous: Authenticator | None = None) -> None:
        self.basic = BasicVerifier(config.auth.identity)
        self.providers: dict[str, OIDCProvider] = {}
        for name, provider_config in config.auth.oidc.items():
            reused = previous.providers.get(name) if previous is not None else None
            # Keep a provider whose settings did not change: its key set stays cached across reloads.
            if reused is not None and reused.config == provider_config:
                self.providers[name] = reused
            else:
                from app.auth.oidc import OIDCProvider  # PyJWT + cryptography only when OIDC is used

                self.providers[name] = OIDCProvider(name, provider_config)
        self.trusted_proxies = parse_networks(config.global_.trusted_proxies)
        self.accepts_credentials = self.basic.configured or bool(self.providers)
        self.tokens: TokenAuthority | None = None
        if config.auth.token_service:
            from app.auth.tokens import TokenAuthority  # PyJWT + cryptography only with the token service

            self.tokens = TokenAuthority(config.auth.token, storage,
                                         previous.tokens if previous is not None else None)

    def unauthorized(self, message: str) -> errors.RegistryError:
        """A 401; its `WWW-Authenticate` challenge is added for the request by the error middleware."""
        return errors.Unauthorized(message)

    # --- the chain ----------------------------------------------------------------------------
    async def authenticate(self, request: web.BaseRequest, accept_tokens: bool = True) -> Identity:
        """The caller's identity. `accept_tokens=False` (the token endpoint): a bearer token of ours
        proves nothing there, so the caller counts as anonymous instead of trading one token for
        another forever."""
        client_ip = self.client_ip(request)
        common_names: tuple[str, ...] = ()
        organizations: tuple[str, ...] = ()
        certificate = client_certificate_identity(request)
        if certificate is not None:
            common_names, organizations = tuple(certificate[0]), tuple(certificate[1])
            auth_attempts.labels("mtls", "success").inc()
        base = Identity(client_ip=client_ip, common_names=common_names, organizations=organizations)
        header = request.headers.get("Authorization")
        if header is None or not (self.accepts_credentials or self.tokens is not None):
            return base
        if len(header) > MAX_AUTHORIZATION_BYTES:
            auth_attempts.labels("header", "failure").inc()
            raise self.unauthorized(f"Authorization header larger than {MAX_AUTHORIZATION_BYTES} bytes")
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer":
            if self.tokens is not None and self.tokens.is_ours(value):
                return await self._token(base, value) if accept_tokens else base
            return await self._oidc(base, None, value)
        if scheme == "basic":
            username, password = self._decode_basic(value)
            return await self.credentials(base, username, password)
        auth_attempts.labels("header", "failure").inc()
        raise self.unauthorized(f"unsupported authorization scheme {scheme[:20]!r}")

    async def credentials(self, base: Identity, username: str, password: str) -> Identity:
        """A username and password (Basic, or the token service's password grant): an identity, an
        OIDC token under its provider's name, or nothing at all (anonymous)."""
        if not username and not password:
            return base  # `Basic Og==`: a client with no credentials
        if username in self.providers:
            return await self._oidc(base, username, password)
        return await self._basic(base, username, password)

    def _decode_basic(self, value: str) -> tuple[str, str]:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            auth_attempts.labels("basic", "failure").inc()
            raise self.unauthorized("malformed Basic credentials") from None
        username, separator, password = decoded.partition(":")
        if not separator:
            auth_attempts.labels("basic", "failure").inc()
            raise self.unauthorized("malformed Basic credentials")
        return username, password

    async def _basic(self, base: Identity, username: str, password: str) -> Identity:
        if not self.basic.configured:
            auth_attempts.labels("basic", "failure").inc()
            raise self.unauthorized("Basic credentials are not accepted by this registry")
        found = await self.basic.verify(username, password, base.client_ip)
        if found is None:
            auth_attempts.labels("basic", "failure").inc()
            raise self.unauthorized("invalid username or password")
        auth_attempts.labels("basic", "success").inc()
        return _basic_identity(base, found)

    async def _oidc(self, base: Identity, provider_name: str | None, token: str) -> Identity:
        provider = self.providers.get(provider_name) if provider_name else self._provider_for(token)
        if provider is None:
            auth_attempts.labels("oidc", "failure").inc()
            raise self.unauthorized("bearer token from no configured OIDC provider")
        try:
            claims = await provider.verify(token)
        except errors.Unauthorized as exc:
            auth_attempts.labels("oidc", "failure").inc()
            log.info("OIDC token rejected: %s", exc.message)
            raise self.unauthorized(exc.message) from None
        auth_attempts.labels("oidc", "success").inc()
        return _oidc_identity(base, provider, claims)

    async def _token(self, base: Identity, token: str) -> Identity:
        from app.auth.scopes import Grants
        from app.auth.tokens import ACCESS

        assert self.tokens is not None
        try:
            claims = await self.tokens.verify(token, ACCESS)
            identity = self.from_token_identity(base, claims["ident"])
        except errors.Unauthorized as exc:
            auth_attempts.labels("token", "failure").inc()
            raise self.unauthorized(exc.message) from None
        auth_attempts.labels("token", "success").inc()
        return dataclasses.replace(identity, grants=Grants(claims["access"]))

    # --- what a token says about its holder --------------------------------------------------
    def token_identity(self, identity: Identity) -> dict[str, Any]:
        """The `ident` claim of a token issued to `identity` (its certificate is not in it: a request
        bearing the token must present the same certificate again)."""
        if identity.id is not None and identity.username is not None:
            known = self.basic.identity(identity.id)
            return {"kind": "basic", "id": identity.id, "username": identity.username,
                    "fingerprint": known.fingerprint if known is not None else ""}
        if identity.oidc_provider is not None:
            return {"kind": "oidc", "provider": identity.oidc_provider, "claims": identity.oidc_claims}
        if identity.common_names or identity.organizations:
            return {"kind": "certificate", "common_names": list(identity.common_names),
                    "organizations": list(identity.organizations)}
        return {"kind": "anonymous"}

    def from_token_identity(self, base: Identity, ident: dict[str, Any]) -> Identity:
        """The identity an `ident` claim names, as today's configuration knows it; 401 when it changed
        (identity removed, password changed, provider removed, another client certificate)."""
        kind = ident.get("kind")
        if kind == "basic":
            known = self.basic.identity(str(ident.get("id")))
            if known is None or known.username != ident.get("username") \
                    or known.fingerprint != ident.get("fingerprint"):
                raise errors.Unauthorized("the identity this token was issued to no longer exists or "
                                          "changed its password; log in again")
            return _basic_identity(base, known)
        if kind == "oidc":
            provider = self.providers.get(str(ident.get("provider")))
            claims = ident.get("claims")
            if provider is None or not isinstance(claims, dict):
                raise errors.Unauthorized("the OIDC provider of this token is no longer configured")
            return _oidc_identity(base, provider, claims)
        if kind == "certificate":
            if list(base.common_names) != ident.get("common_names") \
                    or list(base.organizations) != ident.get("organizations"):
                raise errors.Unauthorized("this token was issued to another client certificate")
            return base
        if kind == "anonymous":
            return base
        raise errors.Unauthorized("invalid token (unknown identity kind)")

    def _provider_for(self, token: str) -> OIDCProvider | None:
        """The provider whose issuer the (not yet verified) token names; the only one if just one."""
        if len(self.providers) == 1:
            return next(iter(self.providers.values()))
        issuer = _unverified_issuer(token)
        for provider in self.providers.values():
            if provider.issuer == issuer:
                return provider
        return None

    # --- client address -----------------------------------------------------------------------
    def client_ip(self, request: web.BaseRequest) -> str | None:
        """The peer address, or the forwarded client address when the peer is a trusted proxy."""
        peer = request.remote
        if not self.trusted_proxies or peer is None or not self._trusted(peer):
            return peer
        forwarded = request.headers.getall("X-Forwarded-For", [])
        hops = [h.strip() for value in forwarded for h in value.split(",") if h.strip()]
        # The rightmost hop that is not one of our proxies is the first one nobody we trust can forge.
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                return peer
            if not any(address in network for network in self.trusted_proxies):
                return str(address)
        if hops:
            first = _address(hops[0])
            return str(first) if first is not None else peer
        real_ip = request.headers.get("X-Real-IP")
        if real_ip is not None:
            address = _address(real_ip)
            if address is not None:
                return str(address)
        return peer

    def _trusted(self, peer: str) -> bool:
        address = _address(peer)
        return address is not None and any(address in network for network in self.trusted_proxies)

    async def close(self, successor: Authenticator | None = None) -> None:
        """Close the providers' HTTP sessions, except those the successor generation kept."""
        kept = {id(p) for p in successor.providers.values()} if successor is not None else set()
        for provider in self.providers.values():
            if id(provider) not in kept:
                await provider.close()


def _basic_identity(base: Identity, found: BasicIdentity) -> Identity:
    return Identity(id=found.id, username=found.username, client_ip=base.client_ip,
                    common_names=base.common_names, organizations=base.organizations, groups=found.groups)


def _oidc_identity(base: Identity, provider: OIDCProvider, claims: dict[str, Any]) -> Identity:
    return Identity(client_ip=base.client_ip, common_names=base.common_names,
                    organizations=base.organizations, oidc_provider=provider.name, oidc_claims=claims,
                    groups=provider.groups(claims))


def _unverified_issuer(token: str) -> str | None:
    import jwt

    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else None


