"""The OCI grammar of repository names, tags and digests; everything a URL may carry into storage.

Anything that does not match is rejected here, before it can reach a storage path: the grammars admit
no `..`, `%`, backslash, NUL or leading `/`, so path traversal cannot survive validation.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from app import errors

MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_DIGEST_HEX = {"sha256": 64, "sha512": 128}
DIGEST_RE = re.compile(r"(sha256):([a-f0-9]{64})|(sha512):([a-f0-9]{128})")
# Anything that looks like an `algorithm:encoded` digest, valid or not (to tell a bad digest from a tag).
DIGEST_LIKE_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        match = DIGEST_RE.fullmatch(value)
        if match is None:
            raise errors.DigestInvalid(f"invalid digest {value[:200]!r}: expected sha256:<64 hex> or "
                                       "sha512:<128 hex>")
        algorithm, _, hexpart = value.partition(":")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def is_digest(value: str) -> bool:
    return DIGEST_RE.fullmatch(value) is not None


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or NAME_RE.fullmatch(name) is None:
        raise errors.NameInvalid(f"invalid repository name {name[:300]!r}")
    return name


def validate_tag(tag: str) -> str:
    if TAG_RE.fullmatch(tag) is None:
        raise errors.TagInvalid(f"invalid tag {tag[:200]!r}")
    return tag


def parse_reference(reference: str) -> Digest | str:
    """A manifest reference is a digest (when it has a colon) or a tag."""
    if ":" in reference:
        return Digest.parse(reference)
    return validate_tag(reference)
