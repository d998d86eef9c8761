"""This registry's own bearer tokens: JWTs signed by the token service and verified by every endpoint
(HS256 with the store's secret by default, ES256/RS256 with `[auth.token] key_file`: app/auth/token_keys.py).

Access tokens carry the Docker token claims (`iss`, `sub`, `aud` = service, `exp`, `nbf`, `iat`, `jti`,
`access`) plus `ident`, what the authentication chain established about the caller, so that a request
bearing the token is decided by the policy exactly as if the caller had sent its credentials. Refresh
tokens (`use = refresh`, no `access`) carry only `ident` and live longer; `docker login` keeps one as
its identity token and trades it for access tokens on every push and pull.

A token is ours when its header's `kid` is our key's, or its issuer is ours (then an unknown `kid`
means a key that was replaced: 401, and the client fetches a new token). Anything else is left to the
OIDC providers. Verified tokens are remembered (by a hash of the token, until they expire or for a
minute at most), so a request pays the signature check once per token, not once per request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from app import errors
from app.auth.token_keys import SigningKey, load_key_file, stored_key
from app.config import TokenConfig
from app.storage import Storage
from app.ttlcache import TTLCache

log = logging.getLogger("registry.auth")

ACCESS = "access"
REFRESH = "refresh"
LEEWAY = 30.0  # clock differences between replicas
VERIFIED_CACHE_SIZE = 4096
VERIFIED_CACHE_TTL = 60.0
MAX_SEGMENT = 64 * 1024


@dataclass(frozen=True)
class Issued:
    token: str
    expires_in: int
    issued_at: str  # RFC 3339, UTC


class TokenAuthority:
    """One configuration generation of the token service: its settings and signing key."""

    def __init__(self, config: TokenConfig, storage: Storage, previous: TokenAuthority | None = None) -> None:
        self.config = config
        self._storage = storage
        self._key: SigningKey | None = None
        if previous is not None and previous.config.key_file == config.key_file:
            self._key = previous._key  # same key source: keep the key (and what it verified)
        self._key_lock = asyncio.Lock()
        self._verified: TTLCache[dict[str, Any]] = TTLCache(VERIFIED_CACHE_SIZE, VERIFIED_CACHE_TTL)

    # --- the key ------------------------------------------------------------------------------
    async def key(self) -> SigningKey:
        """The signing key, loaded on first use (503 while the store cannot be read)."""
        if self._key is not None:
            return self._key
        async with self._key_lock:
            if self._key is None:
                if self.config.key_file is not None:
                    self._key = load_key_file(self.config.key_file)
                else:
                    try:
                        self._key = await stored_key(self._storage)
                    except OSError as exc:
                        log.error("cannot load or create the token signing key: %s", exc)
                        raise errors.Unavailable("the token service's signing key cannot be read "
                                                 "from storage; retry later") from None
            return self._key

    # --- issuing ------------------------------------------------------------------------------
    async def issue(self, subject: str, ident: dict[str, Any], *, access: list[dict[str, Any]] | None,
                    lifetime: float, not_after: float | None = None) -> Issued:
        """An access token (`access` given) or a refresh token (`access` None), expiring after
        `lifetime` seconds or at `not_after` (epoch seconds), whichever comes first."""
        key = await self.key()
        now = int(time.time())
        expires = now + int(lifetime)
        if not_after is not None:
            expires = min(expires, int(not_after))
        claims: dict[str, Any] = {
            "iss": self.config.issuer, "sub": subject, "aud": self.config.service,
            "exp": expires, "nbf": now, "iat": now, "jti": secrets.token_urlsafe(16),
            "use": ACCESS if access is not None else REFRESH, "ident": ident,
        }
        if access is not None:
            claims["access"] = access
        token = key.sign(claims)
        issued_at = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Issued(token, max(expires - now, 0), issued_at)

    # --- verifying ----------------------------------------------------------------------------
    def is_ours(self, token: str) -> bool:
        """Signed with our key, or naming our issuer (a token of a replaced key: refused as ours).
        Called on every request bearing a token: a verified one is known by its fingerprint."""
        if self._verified.get(_fingerprint(token)) is not None:
            return True
        parts = token.split(".")
        if len(parts) != 3:
            return False
        header = _segment(parts[0])
        if header is None:
            return False
        if self._key is not None and header.get("kid") == self._key.kid:
            return True
        claims = _segment(parts[1])
        return claims is not None and claims.get("iss") == self.config.issuer

    async def verify(self, token: str, use: str) -> dict[str, Any]:
        """The claims of a valid token of ours of this `use`; 401 UNAUTHORIZED otherwise."""
        fingerprint = _fingerprint(token)
        cached = self._verified.get(fingerprint)
        if cached is not None and cached["exp"] + LEEWAY > time.time():
            return self._check_use(cached, use)
        key = await self.key()
        try:
            claims = key.verify(token)
        except ValueError:
            raise errors.Unauthorized("invalid token (bad signature, replaced key or malformed)") from None
        self._check_claims(claims)
        remaining = claims["exp"] + LEEWAY - time.time()
        self._verified.put(fingerprint, claims, ttl=min(VERIFIED_CACHE_TTL, remaining))
        return self._check_use(claims, use)

    def _check_claims(self, claims: dict[str, Any]) -> None:
        """RFC 7519 checks: every registered claim present and of its type, audience and issuer ours,
        inside [nbf, exp] (with LEEWAY for clocks of replicas that disagree a little)."""
        for name in ("exp", "nbf", "iat"):
            if not isinstance(claims.get(name), int | float) or isinstance(claims.get(name), bool):
                raise errors.Unauthorized(f"invalid token (no {name})")
        for name in ("iss", "aud", "sub"):
            if not isinstance(claims.get(name), str):
                raise errors.Unauthorized(f"invalid token (no {name})")
        now = time.time()
        if claims["exp"] + LEEWAY <= now:
            raise errors.Unauthorized("the token has expired")
        if claims["nbf"] - LEEWAY > now:
            raise errors.Unauthorized("the token is not valid yet")
        if claims["aud"] != self.config.service:
            raise errors.Unauthorized("the token was issued for another service")
        if claims["iss"] != self.config.issuer:
            raise errors.Unauthorized("the token was issued by another token service")
        if not isinstance(claims.get("ident"), dict):
            raise errors.Unauthorized("invalid token (no identity)")

    @staticmethod
    def _check_use(claims: dict[str, Any], use: str) -> dict[str, Any]:
        if claims.get("use") != use:
            what = "a refresh token" if use == ACCESS else "an access token"
            raise errors.Unauthorized(f"{what} cannot be used here")
        if use == ACCESS and not isinstance(claims.get("access"), list):
            raise errors.Unauthorized("invalid token (no access claim)")
        return claims


def _fingerprint(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _segment(text: str) -> dict[str, Any] | None:
    """A JWT's header or payload, unverified (small and malformed ones alike are None)."""
    if len(text) > MAX_SEGMENT:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        return None
    return value if isinstance(value, dict) else None
