"""Local stand-ins for the services the registry calls: an OIDC issuer and an authorization webhook.

Each is a real aiohttp server on a free loopback port, run from a thread with its own event loop, so
the registry process under test talks to it over real HTTP(S).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from multidict import CIMultiDict

from tests.helpers.server import free_port


class BackgroundServer:
    """An aiohttp application served from a thread until `stop()`."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.port = free_port()
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> BackgroundServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        exported = (RSAAlgorithm.to_jwk(public, as_dict=True) if isinstance(public, rsa.RSAPublicKey)
                    else ECAlgorithm.to_jwk(public, as_dict=True))
        return {**exported, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class Issuer:
    """An OIDC issuer: discovery document and JWKS, signing keys that can be rotated."""

    keys: dict[str, SigningKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    jwks_hits: int = 0
    discovery_hits: int = 0
    server: BackgroundServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start(self) -> Issuer:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/keys", self._jwks)
        self.server = BackgroundServer(app).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_hits += 1
        return web.json_response({"issuer": self.url, "jwks_uri": f"{self.url}/keys"})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        return web.json_response({"keys": [self.keys[kid].jwk() for kid in self.published]})

    def add_rsa(self, kid: str, publish: bool = True) -> SigningKey:
        return self._add(SigningKey(kid, "RS256", rsa.generate_private_key(65537, 2048)), publish)

    def add_ec(self, kid: str, publish: bool = True) -> SigningKey:
        return self._add(SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1())), publish)

    def _add(self, key: SigningKey, publish: bool) -> SigningKey:
        self.keys[key.kid] = key
        if publish:
            self.published.append(key.kid)
        return key

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url, "aud": "registry", "sub": "repo:acme/app:ref:refs/heads/main", "iat": now,
            "nbf": now - 5, "exp": now + 300, "jti": uuid.uuid4().hex, "repository": "acme/app",
            "actor": "octocat"}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str, **overrides: Any) -> str:
        key = self.keys[kid]
        return jwt.encode(self.claims(**overrides), key.private, algorithm=key.algorithm,
                          headers={"kid": kid})

    def unsigned_token(self, kid: str, **overrides: Any) -> str:
        """`alg: none`: no signature at all."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        return f"{header}.{_b64(json.dumps(self.claims(**overrides)).encode())}."

    def hs256_with_public_key(self, kid: str, **overrides: Any) -> str:
        """HS256 keyed with the issuer's *public* key: the classic algorithm-confusion forgery."""
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        payload = _b64(json.dumps(self.claims(**overrides)).encode())
        signature = hmac.new(self.keys[kid].public_pem(), f"{header}.{payload}".encode(), hashlib.sha256)
        return f"{header}.{payload}.{_b64(signature.digest())}"


Decide = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Webhook:
    """An authorization webhook that records what it was sent and answers as `decide` says."""

    decide: Decide | None = None
    received: list[CIMultiDict[str]] = field(default_factory=list)
    server: BackgroundServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url + "/authorize"

    def start(self, ssl_context: ssl.SSLContext | None = None) -> Webhook:
        app = web.Application()
        app.router.add_get("/authorize", self._handle)
        self.server = BackgroundServer(app, ssl_context).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append(CIMultiDict(request.headers))
        if self.decide is not None:
            return await self.decide(request)
        return web.Response(status=200)
