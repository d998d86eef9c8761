"""Webhook authorization (SPEC 6.2): after the CEL policy allows, ask an HTTP service.

`GET <url>` with the request described in `X-Forwarded-*` and `X-Registry-*` headers. 2xx allows;
any other status, a transport error or the timeout denies (fail closed). Answers other than 429 and
5xx are cached for `cache_ttl` seconds, keyed by every header that was sent: in this process, or
in the cache store the replicas share when it is Redis (`[cache.redis]`), so that one replica's
question answers the others' (a Redis that is away is a miss: the webhook is asked).
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
from typing import TYPE_CHECKING

import aiohttp
from multidict import CIMultiDict

from app.auth.identity import Identity
from app.cache import shared_cache
from app.client_tls import verifying_context
from app.config import WebhookConfig
from app.metrics import Counter
from app.ttlcache import TTLCache

if TYPE_CHECKING:
    from app.policy import AccessRequest

log = logging.getLogger("registry.webhook")

CACHE_SIZE = 10_000
webhook_requests = Counter("registry_webhook_requests", "Authorization webhook decisions",
                           ["webhook", "result"])

_CONTROL = {c: None for c in [*range(32), 127]}


def _clean(value: str) -> str:
    """Header values never carry control characters (no header injection from claims or names)."""
    return value.translate(_CONTROL)


class WebhookClient:
    def __init__(self, name: str, config: WebhookConfig) -> None:
        self.name = name
        self.config = config
        self.timeout = aiohttp.ClientTimeout(total=config.timeout_ms / 1000)
        self.ssl_context = _ssl_context(name, config)
        self.cache: TTLCache[bool] = TTLCache(CACHE_SIZE, config.cache_ttl)
        self._session: aiohttp.ClientSession | None = None
        # Shared decisions are keyed by the webhook too (its URL and credentials, hashed): another
        # webhook, or the same one called with other credentials, is another question.
        who = json.dumps([config.url, config.bearer_token,
                          config.basic_auth.model_dump() if config.basic_auth else None])
        self._shared_prefix = f"webhook:{hashlib.sha256(who.encode()).hexdigest()[:24]}:"

    def _shared_key(self, sent: list[tuple[str, str]]) -> str:
        return self._shared_prefix + hashlib.sha256(json.dumps(sent).encode()).hexdigest()

    def headers(self, identity: Identity, access: AccessRequest) -> list[tuple[str, str]]:
        """What is sent for this request, in a fixed order (it is also the cache key)."""
        pairs: list[tuple[str, str | None]] = [
            ("X-Forwarded-Method", access.method),
            ("X-Forwarded-Proto", access.scheme),
            ("X-Forwarded-Host", access.host),
            ("X-Forwarded-Uri", access.uri),
            ("X-Forwarded-For", identity.client_ip),
            ("X-Registry-Action", access.action),
            ("X-Registry-Namespace", access.namespace),
            ("X-Registry-Reference", access.reference),
            ("X-Registry-Digest", access.digest),
            ("X-Registry-Username", identity.username),
            ("X-Registry-Identity-ID", identity.id),
            ("X-Registry-OIDC-Provider", identity.oidc_provider),
            ("X-Registry-OIDC-Subject", identity.oidc_subject),
        ]
        pairs += [("X-Registry-Certificate-CN", cn) for cn in identity.common_names]
        pairs += [("X-Registry-Certificate-O", o) for o in identity.organizations]
        for name in self.config.forward_headers:
            pairs += [(name, value) for value in access.headers.getall(name, [])]
        return [(name, _clean(value)) for name, value in pairs if value is not None]

    async def allows(self, identity: Identity, access: AccessRequest) -> bool:
        sent = self.headers(identity, access)
        key = tuple(sent)
        shared = shared_cache()
        if shared is not None:
            answer = await shared.get(self._shared_key(sent))
            cached = None if answer is None else answer == b"1"
        else:
            cached = self.cache.get(key)
        if cached is not None:
            webhook_requests.labels(self.name, "cached").inc()
            return cached
        headers = CIMultiDict(sent)
        auth = None
        if self.config.bearer_token:
            headers["Authorization"] = f"Bearer {self.config.bearer_token}"
        elif self.config.basic_auth is not None:
            auth = aiohttp.BasicAuth(self.config.basic_auth.username, self.config.basic_auth.password)
        try:
            async with self._client().get(self.config.url, headers=headers, auth=auth, allow_redirects=False,
                                          ssl=self.ssl_context or verifying_context()
                                          ) as response:
                status = response.status
        except TimeoutError:
            webhook_requests.labels(self.name, "timeout").inc()
            log.warning("authorization webhook %s timed out after %d ms: denied", self.name,
                        self.config.timeout_ms)
            return False
        except (aiohttp.ClientError, OSError) as exc:
            webhook_requests.labels(self.name, "error").inc()
            log.warning("authorization webhook %s unreachable (%s): denied", self.name, exc)
            return False
        allowed = 200 <= status < 300
        webhook_requests.labels(self.name, "allow" if allowed else "deny").inc()
        if status != 429 and status < 500:
            if shared is None:
                self.cache.put(key, allowed)
            elif self.config.cache_ttl > 0:
                await shared.set(self._shared_key(sent), b"1" if allowed else b"0", self.config.cache_ttl)
        elif not allowed:
            log.warning("authorization webhook %s answered %d: denied", self.name, status)
        return allowed

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _ssl_context(name: str, config: WebhookConfig) -> ssl.SSLContext | None:
    if config.server_ca_bundle is None and config.client_certificate_bundle is None:
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(config.server_ca_bundle) if config.server_ca_bundle else None)
        if config.client_certificate_bundle is not None:
            context.load_cert_chain(str(config.client_certificate_bundle),
                                    str(config.client_private_key) if config.client_private_key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"auth.webhook.{name}: cannot load its TLS files: {exc}") from None
    return context
