"""The token service's signing key: `[auth.token] key_file`, else a secret generated once into the store.

Default: an HS256 secret (32 random bytes) in the metadata store (`token/signing-secret`, created only
when absent, owner-only), so every replica that shares the store signs and verifies with it and a
restart keeps the tokens and refresh tokens it issued valid. Two replicas starting at once both try to
create it; one wins and both use the winner's. HS256 needs no `cryptography` at all (app/auth/jws.py):
our tokens are only ever verified by this registry.

With `key_file` (an EC P-256 or RSA private key in PEM) tokens are ES256 or RS256, signed and verified
with PyJWT and cryptography, for setups that want asymmetric tokens.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from pathlib import Path
from typing import Any, Protocol

from app.auth import jws
from app.config import ConfigError
from app.storage import NotFound, Storage, layout

log = logging.getLogger("registry.auth")

SECRET_BYTES = 32


class SigningKey(Protocol):
    algorithm: str
    kid: str

    def sign(self, claims: dict[str, Any]) -> str: ...

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this key signed (signature checked, claims not); ValueError if not."""


class HmacKey:
    algorithm = jws.ALGORITHM

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.kid = jws.b64encode(hashlib.sha256(b"kid:" + secret).digest())[:22]

    def sign(self, claims: dict[str, Any]) -> str:
        return jws.encode(claims, self._secret, self.kid)

    def verify(self, token: str) -> dict[str, Any]:
        return jws.decode(token, self._secret)


class AsymmetricKey:
    """ES256 or RS256 through PyJWT and cryptography (imported only for a `key_file`)."""

    def __init__(self, pem: bytes, where: str) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: not an unencrypted PEM private key ({exc})") from None
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if not isinstance(key.curve, ec.SECP256R1):
                raise ConfigError(f"{where}: an EC key must be on P-256 (ES256), not {key.curve.name}")
            self.algorithm = "ES256"
        elif isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 2048:
                raise ConfigError(f"{where}: an RSA key must have at least 2048 bits")
            self.algorithm = "RS256"
        else:
            raise ConfigError(f"{where}: only EC P-256 (ES256) and RSA (RS256) keys can sign tokens")
        self._private = key
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = jws.b64encode(hashlib.sha256(public).digest())[:22]

    def sign(self, claims: dict[str, Any]) -> str:
        import jwt

        return jwt.encode(claims, self._private, algorithm=self.algorithm, headers={"kid": self.kid})

    def verify(self, token: str) -> dict[str, Any]:
        import jwt

        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._private.public_key(), algorithms=[self.algorithm],
                options={"verify_signature": True, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "verify_aud": False, "verify_iss": False})
        except jwt.PyJWTError as exc:
            raise ValueError(str(exc)) from None
        return claims


def load_key_file(path: Path) -> SigningKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"auth.token.key_file: cannot read {path}: {exc.strerror or exc}") from None
    return AsymmetricKey(pem, f"auth.token.key_file {path}")


async def stored_key(storage: Storage) -> SigningKey:
    """The store's signing secret, created when there is none yet."""
    try:
        text = await storage.get(layout.TOKEN_SIGNING_SECRET)
    except NotFound:
        fresh = base64.b64encode(secrets.token_bytes(SECRET_BYTES))
        if await storage.create(layout.TOKEN_SIGNING_SECRET, fresh, private=True):
            log.info("generated the token service's signing secret", extra={"fields": {
                "key": layout.TOKEN_SIGNING_SECRET}})
        text = await storage.get(layout.TOKEN_SIGNING_SECRET)
    try:
        secret = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        secret = b""
    if len(secret) < SECRET_BYTES:
        raise ConfigError(f"the stored token signing secret ({layout.TOKEN_SIGNING_SECRET}) is damaged; "
                          "delete it to have a new one generated (every issued token becomes invalid)")
    return HmacKey(secret)
