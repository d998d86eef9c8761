"""OIDC bearer tokens (JWT) from `[auth.oidc.<provider>]`: GitHub Actions or any generic issuer.

Keys come from the issuer's JWKS (found through `<issuer>/.well-known/openid-configuration` unless
`jwks_uri` is configured). The key set is cached, refreshed when older than `jwks_refresh_interval`,
and refetched on a token whose `kid` is unknown at most once a minute (so a flood of forged `kid`s
cannot turn into a flood of requests to the issuer). Only asymmetric algorithms are ever accepted:
`alg=none` and HMAC algorithms (the "HS256 signed with the public key" attack) are refused whatever
`allowed_algorithms` says.

Replicas with `[cache.redis]` share the key set through that cache store: a replica about to fetch
it (stale, or a token with an unknown `kid`) first takes a newer one another replica published, so
the issuer sees about one fetch per refresh interval for the whole cluster. The once-a-minute limit
on unknown-`kid` refetches stays per replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt

from app import errors
from app.cache import shared_cache
from app.client_tls import verifying_context
from app.config import OIDCConfig

log = logging.getLogger("registry.auth")

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
GITHUB_REQUIRED_CLAIMS = ("repository", "actor")
UNKNOWN_KID_REFRESH_INTERVAL = 60.0
RETRY_AFTER_FAILURE = 5.0
FETCH_TIMEOUT = 10.0
MAX_DOCUMENT_BYTES = 1024 * 1024

# The key type each accepted algorithm needs (an RSA key never verifies an ES256 token, and so on).
KEY_TYPES = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC", "ES256K": "EC", "EdDSA": "OKP",
}


class OIDCProvider:
    def __init__(self, name: str, config: OIDCConfig) -> None:
        self.name = name
        self.config = config
        # The configuration checked that a generic provider has an issuer and the algorithms are known.
        self.issuer = config.issuer or GITHUB_ISSUER
        self.algorithms = frozenset(config.allowed_algorithms)
        self.unknown_kid_refresh_interval = UNKNOWN_KID_REFRESH_INTERVAL
        self._keys: list[dict[str, Any]] = []
        self._fetched_at = -math.inf
        self._fetched_wall = -math.inf  # when the key set we hold was fetched (by us or a replica)
        self._shared_key = "oidc:jwks:" + hashlib.sha256(
            json.dumps([self.issuer, config.jwks_uri]).encode()).hexdigest()[:32]
        self._attempted_at = -math.inf
        self._jwks_uri = config.jwks_uri
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    # --- tokens -------------------------------------------------------------------------------
    def _reject(self, reason: str) -> errors.RegistryError:
        return errors.Unauthorized(f"invalid OIDC token for provider {self.name}: {reason}")

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once signature, issuer, audience, times and algorithm are checked."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise self._reject("not a JWT") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise self._reject(f"algorithm {str(algorithm)[:20]!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise self._reject("invalid kid")
        jwk = await self._key_for(kid, algorithm)
        try:
            key = jwt.PyJWK(jwk, algorithm=algorithm)
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[algorithm], issuer=self.issuer,
                audience=self.config.required_audience, leeway=self.config.clock_skew_tolerance,
                options={"require": ["exp", "iss"] + (["aud"] if self.config.required_audience else []),
                         "verify_aud": self.config.required_audience is not None})
        except jwt.ExpiredSignatureError:
            raise self._reject("expired") from None
        except jwt.ImmatureSignatureError:
            raise self._reject("not yet valid") from None
        except jwt.InvalidIssuerError:
            raise self._reject("wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise self._reject("wrong audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise self._reject(f"missing claim {exc.claim}") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise self._reject("bad signature or malformed token") from None
        if self.config.provider == "github":
            for claim in GITHUB_REQUIRED_CLAIMS:
                if not isinstance(claims.get(claim), str) or not claims[claim]:
                    raise self._reject(f"missing claim {claim}")
        return claims

    def groups(self, claims: dict[str, Any]) -> tuple[str, ...]:
        """`identity.groups` from the configured `groups_claim` (a string or a list of strings)."""
        if self.config.groups_claim is None:
            return ()
        value = claims.get(self.config.groups_claim)
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(v for v in value if isinstance(v, str))
        return ()

    # --- keys ---------------------------------------------------------------------------------
    def _match(self, kid: str | None, algorithm: str) -> dict[str, Any] | None:
        candidates = [k for k in self._keys
                      if k.get("kty") == KEY_TYPES[algorithm] and k.get("alg", algorithm) == algorithm
                      and k.get("use", "sig") == "sig"]
        if kid is not None:
            candidates = [k for k in candidates if k.get("kid") == kid]
        return candidates[0] if len(candidates) == 1 else None

    def _stale(self) -> bool:
        """Older than the refresh interval (after a failed fetch, retried every few seconds only)."""
        now = time.monotonic()
        return (now - self._fetched_at > self.config.jwks_refresh_interval
                and now - self._attempted_at >= RETRY_AFTER_FAILURE)

    def _may_refetch(self) -> bool:
        """An unknown `kid` refetches the key set, but not more often than once a minute."""
        return time.monotonic() - self._attempted_at >= self.unknown_kid_refresh_interval

    async def _key_for(self, kid: str | None, algorithm: str) -> dict[str, Any]:
        if self._stale():
            await self._refresh(self._stale)
        key = self._match(kid, algorithm)
        if key is None and await self._adopt_shared():  # rotated, and another replica has the new set
            key = self._match(kid, algorithm)
        if key is None and self._may_refetch():
            await self._refresh(self._may_refetch)
            key = self._match(kid, algorithm)
        if key is None and not self._keys:
            raise errors.Unavailable(f"the signing keys of OIDC provider {self.name} cannot be fetched")
        if key is None:
            raise self._reject("unknown signing key" if kid is not None else "no single matching key")
        return key

    async def _refresh(self, still_needed: Callable[[], bool]) -> None:
        """Fetch the key set once for every waiter (the first one fetches, the others reuse it)."""
        async with self._lock:
            if not still_needed():
                return
            if await self._adopt_shared() and not still_needed():
                return
            self._attempted_at = time.monotonic()
            try:
                if self._jwks_uri is None:
                    discovery = await self._fetch_json(
                        self.issuer.rstrip("/") + "/.well-known/openid-configuration")
                    uri = discovery.get("jwks_uri")
                    if not isinstance(uri, str):
                        raise ValueError("the discovery document has no jwks_uri")
                    self._jwks_uri = uri
                document = await self._fetch_json(self._jwks_uri)
                keys = document.get("keys")
                if not isinstance(keys, list):
                    raise ValueError("the JWKS document has no keys")
                self._keys = [k for k in keys if isinstance(k, dict)]
                self._fetched_at = time.monotonic()
                self._fetched_wall = time.time()
                await self._publish()
                log.info("OIDC keys fetched", extra={"fields": {"provider": self.name,
                                                                 "keys": len(self._keys)}})
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("cannot fetch OIDC keys of provider %s: %s", self.name, exc)
                if not self._keys:
                    raise errors.Unavailable(
                        f"the signing keys of OIDC provider {self.name} cannot be fetched") from None

    async def _publish(self) -> None:
        shared = shared_cache()
        if shared is not None:
            document = {"fetched": self._fetched_wall, "jwks_uri": self._jwks_uri, "keys": self._keys}
            await shared.set(self._shared_key, json.dumps(document).encode(),
                             self.config.jwks_refresh_interval)

    async def _adopt_shared(self) -> bool:
        """Take the key set another replica fetched after ours, if any (True when taken)."""
        shared = shared_cache()
        if shared is None:
            return False
        raw = await shared.get(self._shared_key)
        if raw is None:
            return False
        try:
            document = json.loads(raw)
            fetched, keys, uri = float(document["fetched"]), document["keys"], document["jwks_uri"]
        except (ValueError, KeyError, TypeError):
            return False
        if fetched <= self._fetched_wall or not isinstance(keys, list) or not isinstance(uri, str):
            return False
        self._keys = [k for k in keys if isinstance(k, dict)]
        self._jwks_uri = uri
        self._fetched_wall = fetched
        self._fetched_at = time.monotonic() - max(0.0, time.time() - fetched)
        return True

    async def _fetch_json(self, url: str) -> dict[str, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
                                                  connector=aiohttp.TCPConnector(ssl=verifying_context()))
        async with self._session.get(url, headers={"Accept": "application/json"}) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered {response.status}")
            body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
            while len(body) <= MAX_DOCUMENT_BYTES and not response.content.at_eof():
                chunk = await response.content.read(MAX_DOCUMENT_BYTES + 1 - len(body))
                if not chunk:
                    break
                body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError:
            raise ValueError(f"{url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return document

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
