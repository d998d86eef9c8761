"""The token service's signing key: from `[auth.token] key_file`, else generated once and kept in the store.

A generated key lives in the metadata store (`token/signing-key.pem`, created only when absent), so
every replica that shares the store signs and verifies with the same key and a restart keeps the
tokens and refresh tokens it issued valid. Two replicas starting at once both try to create it; one
wins and both use the winner's key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.config import ConfigError
from app.storage import Storage, layout

log = logging.getLogger("registry.auth")


@dataclass(frozen=True)
class SigningKey:
    private_key: Any  # ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    algorithm: str
    kid: str

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()


def _thumbprint(public_key: Any) -> str:
    """RFC 7638-style JWK thumbprint (base64url of SHA-256), shortened: the `kid` of our tokens."""
    numbers = public_key.public_numbers()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        size = (public_key.curve.key_size + 7) // 8
        members = {"crv": "P-256", "kty": "EC", "x": _b64(numbers.x.to_bytes(size, "big")),
                   "y": _b64(numbers.y.to_bytes(size, "big"))}
    else:
        members = {"e": _b64(_int_bytes(numbers.e)), "kty": "RSA", "n": _b64(_int_bytes(numbers.n))}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return _b64(hashlib.sha256(canonical).digest())[:22]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def parse_key(pem: bytes, where: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(f"{where}: an EC key must be on P-256 (ES256), not {key.curve.name}")
        algorithm = "ES256"
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError(f"{where}: an RSA key must have at least 2048 bits")
        algorithm = "RS256"
    else:
        raise ConfigError(f"{where}: only EC P-256 (ES256) and RSA (RS256) keys can sign tokens")
    return SigningKey(key, algorithm, _thumbprint(key.public_key()))


def load_key_file(path: Path) -> SigningKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"auth.token.key_file: cannot read {path}: {exc.strerror or exc}") from None
    return parse_key(pem, f"auth.token.key_file {path}")


def _generate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


async def stored_key(storage: Storage) -> SigningKey:
    """The store's signing key, created (ES256) when there is none yet."""
    try:
        pem = await storage.get(layout.TOKEN_SIGNING_KEY)
    except FileNotFoundError:
        if await storage.create(layout.TOKEN_SIGNING_KEY, _generate(), private=True):
            log.info("generated the token service's signing key", extra={"fields": {
                "key": layout.TOKEN_SIGNING_KEY}})
        pem = await storage.get(layout.TOKEN_SIGNING_KEY)
    return parse_key(pem, f"the stored token signing key ({layout.TOKEN_SIGNING_KEY})")
