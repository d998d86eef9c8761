"""Upstream authentication: `WWW-Authenticate` challenges, Bearer tokens (cached), Basic credentials.

The token flow is the Docker Registry one (Docker Hub, GHCR, Quay, distribution with `auth.token`):
a 401 names a realm, a service and a scope; a GET on the realm with those parameters (and the
configured credentials as Basic auth, when there are some) returns `token` or `access_token` and
`expires_in` (60 s when absent). Tokens are cached in the cache store under a key hashing the
upstream URL, the credentials and the scope, never per host alone (two repositories mirroring one
host with different credentials must not share tokens).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field

from app.cache import CacheStore

# auth-param = token "=" ( token / quoted-string ), RFC 9110 section 11
_PARAM_RE = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*(?:,|$)')
_SCHEME_RE = re.compile(r"\s*,?\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:\s+|$)")
# Tokens are refreshed this long before their advertised expiry (clock skew, request latency).
EXPIRY_MARGIN = 5.0
DEFAULT_EXPIRES_IN = 60.0
MAX_EXPIRES_IN = 86400.0


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge of a `WWW-Authenticate` header value (schemes lower-cased, params as given)."""
    challenges: list[Challenge] = []
    position = 0
    while position < len(header):
        scheme_match = _SCHEME_RE.match(header, position)
        if scheme_match is None or not scheme_match.group(1):
            break
        position = scheme_match.end()
        params: dict[str, str] = {}
        while position < len(header):
            param = _PARAM_RE.match(header, position)
            if param is None:
                break
            name, value = param.group(1), param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[name.lower()] = value
            position = param.end()
        challenges.append(Challenge(scheme_match.group(1).lower(), params))
    return challenges


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def token_cache_key(upstream_url: str, username: str | None, password: str | None, scope: str) -> str:
    """Hashed, so credentials never appear in a cache key (a shared Redis is visible to operators)."""
    material = json.dumps([upstream_url, username, password, scope]).encode()
    return "upstream-token:" + hashlib.sha256(material).hexdigest()


@dataclass(frozen=True)
class Token:
    value: str
    expires_in: float


def parse_token_response(body: bytes) -> Token:
    """`{"token": ...}` or `{"access_token": ...}`, with `expires_in` seconds (default 60)."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("token response is not a JSON object")
    value = data.get("token") or data.get("access_token")
    if not isinstance(value, str) or not value:
        raise ValueError("token response has neither `token` nor `access_token`")
    expires_in = data.get("expires_in")
    if not isinstance(expires_in, int | float) or isinstance(expires_in, bool) or not expires_in > 0:
        expires_in = DEFAULT_EXPIRES_IN
    # An upstream cannot make us keep its token forever (`1e400` is infinity, `nan` compares false).
    return Token(value, min(float(expires_in), MAX_EXPIRES_IN))


async def cached_token(cache: CacheStore, key: str) -> str | None:
    value = await cache.get(key)
    return value.decode() if value is not None else None


async def remember_token(cache: CacheStore, key: str, token: Token) -> None:
    ttl = token.expires_in - EXPIRY_MARGIN if token.expires_in > 2 * EXPIRY_MARGIN else token.expires_in / 2
    await cache.set(key, token.value.encode(), ttl)
