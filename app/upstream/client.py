"""One upstream registry over an aiohttp ClientSession: TLS, timeouts, redirects and the auth challenge.

`open()` yields the final response of a request (after authentication and redirects) for the caller to
read or stream; it raises UpstreamFailure when this upstream cannot answer (transport error, timeout,
5xx, refused credentials, too many redirects), so the caller can try the next one. 404 and other
client errors are answers and are yielded.

Timeouts: `connect_timeout` bounds connecting; `read_timeout` bounds *inactivity* between two reads
(aiohttp's `sock_read`), never a whole transfer, so a large layer on a slow link is not cut off.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from app import tracing
from app.cache import CacheStore
from app.client_tls import verifying_context
from app.config import UpstreamConfig
from app.manifest import ACCEPT_ALL
from app.upstream import auth, ratelimit
from app.upstream.errors import UpstreamFailure, UpstreamRateLimited

log = logging.getLogger("registry.upstream")

# Every manifest type we can store and serve (schema1 is refused by the manifest validation anyway).
MANIFEST_ACCEPT = ACCEPT_ALL
_REDIRECTS = {301, 302, 303, 307, 308}
# Upstream answers that mean "this upstream cannot serve us now": the next one is tried. 429 too, and
# its `Retry-After` keeps the upstream out of the rotation for a while (app/upstream/ratelimit.py).
_FAILOVER_STATUSES = {401, 403}
_RATE_LIMITED = 429
_TOKEN_BODY_LIMIT = 1024 * 1024
USER_AGENT = "simple-registry-pull-through"


def _split_url(url: str) -> tuple[str, str]:
    """`https://host/v2/library` → (`https://host`, `library`): a URL may name a path below `/v2/`
    (seed 001's form, and what Docker's `registry-mirrors` needs for official images)."""
    parsed = URL(url)
    path = parsed.path.rstrip("/")
    root, sep, below = path.partition("/v2")
    if sep and (not below or below.startswith("/")):
        return str(parsed.with_path(root or "/", encoded=True).with_query(None)).rstrip("/"), below.strip("/")
    return url, ""


def _same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


class UpstreamClient:
    """Talks to one configured upstream; holds its connection pool and what its challenge looked like."""

    def __init__(self, config: UpstreamConfig, cache: CacheStore) -> None:
        self.config = config
        self.name = config.url.rstrip("/")
        self._root, self._name_prefix = _split_url(self.name)
        self._cache = cache
        self._session: aiohttp.ClientSession | None = None
        self._basic = False  # this upstream asked for Basic once: send it up front from now on
        self._active = 0  # requests in progress (a retired client closes when the last one ends)
        self._retired = False

    # --- connection -----------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        config = self.config
        if config.server_ca_bundle is None and config.client_certificate is None:
            return verifying_context()  # the system's trust store, no client certificate
        context = ssl.create_default_context(
            cafile=str(config.server_ca_bundle) if config.server_ca_bundle else None)
        if config.client_certificate is not None:
            context.load_cert_chain(str(config.client_certificate),
                                    str(config.client_private_key) if config.client_private_key else None)
        return context

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            config = self.config
            timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout,
                                            sock_connect=config.connect_timeout,
                                            sock_read=config.read_timeout)
            connector = aiohttp.TCPConnector(ssl=self._ssl_context(), limit=64)
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=connector, auto_decompress=False,
                headers={"User-Agent": config.user_agent or USER_AGENT})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def retire(self) -> None:
        """No longer configured (hot reload): close once the requests still using it are done."""
        self._retired = True
        if self._active == 0:
            await self.close()

    # --- requests -------------------------------------------------------------------------------
    @property
    def rate_limit_key(self) -> str:
        """Rate limits are per registry and account: a reload that changes a timeout keeps the window."""
        return f"{self.name}\n{self.config.username or ''}"

    def remote_name(self, name: str) -> str:
        """The repository name upstream: `name`, below the URL's own `/v2/<path>` when it has one."""
        return f"{self._name_prefix}/{name}" if self._name_prefix else name

    @contextlib.asynccontextmanager
    async def open(self, method: str, name: str, suffix: str,
                   headers: dict[str, str] | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response to `method /v2/<name>/<suffix>` upstream, authenticated and after redirects."""
        remote = self.remote_name(name)
        scope = f"repository:{remote}:pull"
        # Names, digests and tags are validated (and a query is built by us): already URL-safe.
        url = URL(f"{self._root}/v2/{remote}/{suffix}", encoded=True)
        headers = dict(headers or {})
        self._active += 1
        # One span for the whole exchange (challenge, token, redirects) and the caller reading the body;
        # a pull-through fill started by a request is its child, also once detached from it.
        with tracing.span(f"upstream {method}", {"upstream.url": self.name, "url.path": url.path[:500],
                                                 "http.request.method": method}) as span:
            async with self._opened(method, url, headers, scope, remote) as response:
                tracing.set_attributes(span, {"http.response.status_code": response.status})
                yield response

    @contextlib.asynccontextmanager
    async def _opened(self, method: str, url: URL, headers: dict[str, str], scope: str,
                      remote: str) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            authorization = await self._known_authorization(scope)
            response = await self._send(method, url, headers, authorization)
            try:
                if response.status == 401:
                    retry = await self._answer_challenge(response, scope)
                    if retry is not None:
                        response.release()
                        response = await self._send(method, url, headers, retry)
                if response.status == _RATE_LIMITED:
                    raise self._rate_limited(f"{method} {url.path}", response)
                if response.status >= 500 or response.status in _FAILOVER_STATUSES:
                    reason = f"{method} {url.path} answered {response.status} {response.reason or ''}".strip()
                    if response.status in (401, 403):
                        reason += (f" (access to {remote} refused: it does not exist there, or the"
                                   " configured credentials may not pull it)")
                    raise UpstreamFailure(self.name, reason)
                yield response
            finally:
                response.release()
        finally:
            self._active -= 1
            if self._retired and self._active == 0:
                await self.close()

    def _rate_limited(self, what: str, response: aiohttp.ClientResponse) -> UpstreamRateLimited:
        wait = ratelimit.parse_retry_after(response.headers.get("Retry-After"))
        reason = f"{what} answered 429 {response.reason or 'Too Many Requests'}: it is rate-limiting us"
        if wait is not None:
            reason += f" (Retry-After {math.ceil(wait)} s)"
        return UpstreamRateLimited(self.name, reason, wait)

    async def _send(self, method: str, url: URL, headers: dict[str, str],
                    authorization: str | None) -> aiohttp.ClientResponse:
        """One request, following up to `max_redirect` redirects; Authorization never leaves its origin."""
        origin = url
        for _ in range(self.config.max_redirect + 1):
            sent = dict(headers)
            if authorization is not None and _same_origin(url, origin):
                sent["Authorization"] = authorization
            try:
                response = await self.session().request(method, url, headers=sent, allow_redirects=False)
            except TimeoutError as exc:
                raise UpstreamFailure(self.name, f"{method} {url.host}: timed out ({exc})",
                                      timeout=True) from exc
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                raise UpstreamFailure(self.name, f"{method} {url.host}: {type(exc).__name__}: {exc}") from exc
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                return response
            response.release()
            url = url.join(URL(location, encoded=True))
            if response.status == 303:
                method = "GET"
        raise UpstreamFailure(self.name, f"more than {self.config.max_redirect} redirects (max_redirect)")

    # --- authentication -------------------------------------------------------------------------
    def _credentials(self) -> tuple[str, str] | None:
        if self.config.username is None:
            return None
        return self.config.username, self.config.password or ""

    def _token_key(self, scope: str | None) -> str:
        username, password = self._credentials() or (None, None)
        return auth.token_cache_key(self.name, username, password, scope or "")

    async def _known_authorization(self, scope: str | None) -> str | None:
        """What to send up front: a cached token for this scope, or Basic once upstream asked for it."""
        token = await auth.cached_token(self._cache, self._token_key(scope))
        if token is not None:
            return f"Bearer {token}"
        credentials = self._credentials()
        if self._basic and credentials is not None:
            return auth.basic_header(*credentials)
        return None

    async def _answer_challenge(self, response: aiohttp.ClientResponse, scope: str | None) -> str | None:
        """The Authorization to retry with, or None when retrying cannot help (answered as is)."""
        challenges = auth.parse_challenges(response.headers.get("WWW-Authenticate", ""))
        by_scheme = {c.scheme: c for c in challenges}
        credentials = self._credentials()
        if "bearer" in by_scheme:
            # No token yet, or the cached one expired or was revoked upstream: fetch one (once).
            await self._cache.delete(self._token_key(scope))
            token = await self._fetch_token(by_scheme["bearer"], scope)
            return f"Bearer {token}"
        if "basic" in by_scheme and credentials is not None:
            self._basic = True
            return auth.basic_header(*credentials)
        return None

    async def _fetch_token(self, challenge: auth.Challenge, scope: str | None) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise UpstreamFailure(self.name, "Bearer challenge without a realm")
        params: dict[str, Any] = {}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        wanted = scope or challenge.params.get("scope")
        if wanted:
            params["scope"] = wanted
        headers = {}
        credentials = self._credentials()
        if credentials is not None:
            headers["Authorization"] = auth.basic_header(*credentials)
        realm_url = URL(realm)
        try:
            async with self.session().get(realm_url, params=params, headers=headers,
                                          allow_redirects=True, max_redirects=self.config.max_redirect) as r:
                body = await r.content.read(_TOKEN_BODY_LIMIT)
                if r.status == _RATE_LIMITED:  # Docker Hub limits token requests too
                    raise self._rate_limited(f"token endpoint {realm_url.host}", r)
                if r.status != 200:
                    raise UpstreamFailure(self.name, f"token endpoint {realm_url.host} answered {r.status}")
        except TimeoutError as exc:
            raise UpstreamFailure(self.name, f"token endpoint {realm_url.host} timed out",
                                  timeout=True) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise UpstreamFailure(self.name, f"token endpoint {realm_url.host}: {exc}") from exc
        try:
            token = auth.parse_token_response(body)
        except ValueError as exc:
            raise UpstreamFailure(self.name, f"token endpoint {realm_url.host}: {exc}") from exc
        await auth.remember_token(self._cache, self._token_key(scope), token)
        log.debug("fetched upstream token", extra={"fields": {
            "upstream": self.name, "scope": wanted, "expires_in": token.expires_in}})
        return token.value
