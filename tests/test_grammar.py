from __future__ import annotations

import pytest

from app import errors
from app.grammar import Digest, parse_reference, validate_name, validate_tag

HEX = "a" * 64


@pytest.mark.parametrize("name", ["a", "library/ubuntu", "a.b/c_d/e__f/g-h--i", "x" * 255, "a0/b1"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [
    "", "A", "a/", "/a", "a//b", "a/../b", "..", "a/.", "%2e%2e", "a%2Fb", "a\\b", "a\x00b", "-a", "a-",
    "a___b", "x" * 256, "a/B",
])
def test_invalid_names(name: str) -> None:
    with pytest.raises(errors.NameInvalid):
        validate_name(name)


@pytest.mark.parametrize("tag", ["latest", "v1.0", "_x", "A" * 128, "1"])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "A" * 129, "a/b", "a b", "..", "a\x00"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(errors.TagInvalid):
        validate_tag(tag)


def test_digests() -> None:
    assert str(Digest.parse(f"sha256:{HEX}")) == f"sha256:{HEX}"
    assert Digest.parse("sha512:" + "b" * 128).algorithm == "sha512"
    assert Digest.of(b"hello").hex == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    for bad in ["sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 32, "sha512:" + "a" * 64,
                "sha256:../../etc", f"sha256:{HEX}\x00"]:
        with pytest.raises(errors.DigestInvalid):
            Digest.parse(bad)


def test_reference_is_tag_or_digest() -> None:
    assert parse_reference("v1") == "v1"
    assert parse_reference(f"sha256:{HEX}") == Digest("sha256", HEX)
    with pytest.raises(errors.DigestInvalid):
        parse_reference("sha256:nothex")
