"""HS256 JSON Web Signatures (RFC 7515 compact form) with the standard library: the token service's
default, for tokens that only this registry (and its replicas, which share the secret) ever verifies.

PyJWT would do the same, but importing it loads `cryptography` (~11 MiB resident) whether or not an
asymmetric algorithm is used; HMAC-SHA256 needs only `hmac`. Nothing but HS256 is accepted here, so
there is no algorithm to confuse (`alg: none`, or an RSA public key used as an HMAC secret).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

ALGORITHM = "HS256"
MAX_TOKEN = 64 * 1024


class InvalidSignature(ValueError):
    """Malformed, another algorithm, or a signature that does not verify."""


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSignature("not base64url") from None


def _json(value: dict[str, Any]) -> str:
    return b64encode(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def _signature(secret: bytes, signing_input: str) -> bytes:
    return hmac.digest(secret, signing_input.encode("ascii"), hashlib.sha256)


def encode(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    signing_input = f"{_json({'alg': ALGORITHM, 'typ': 'JWT', 'kid': kid})}.{_json(claims)}"
    return f"{signing_input}.{b64encode(_signature(secret, signing_input))}"


def decode(token: str, secret: bytes) -> dict[str, Any]:
    """The claims of a token whose HS256 signature verifies with `secret` (claims not yet checked)."""
    parts = token.split(".")
    if len(token) > MAX_TOKEN or len(parts) != 3:
        raise InvalidSignature("not a compact JWS")
    header_text, payload_text, signature_text = parts
    try:
        header = json.loads(b64decode(header_text))
    except ValueError:
        raise InvalidSignature("malformed header") from None
    if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
        raise InvalidSignature("not an HS256 token")
    expected = _signature(secret, f"{header_text}.{payload_text}")
    if not hmac.compare_digest(expected, b64decode(signature_text)):
        raise InvalidSignature("the signature does not verify")
    try:
        claims = json.loads(b64decode(payload_text))
    except ValueError:
        raise InvalidSignature("malformed payload") from None
    if not isinstance(claims, dict):
        raise InvalidSignature("the payload is not a JSON object")
    return claims
