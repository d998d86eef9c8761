"""Upstream auth pieces without I/O: WWW-Authenticate parsing, token responses, cache keys; the cache."""

from __future__ import annotations

import asyncio

from app.cache import MemoryCache
from app.upstream.auth import Challenge, parse_challenges, parse_token_response, token_cache_key


def test_bearer_challenge_of_docker_hub() -> None:
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/alpine:pull"')
    assert parse_challenges(header) == [Challenge("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull"})]


def test_several_challenges_quoted_commas_and_escapes() -> None:
    header = 'Basic realm="a, b", Bearer realm="https://x/token",error="invalid_token",scope="r:a\\"b:pull"'
    assert parse_challenges(header) == [
        Challenge("basic", {"realm": "a, b"}),
        Challenge("bearer", {"realm": "https://x/token", "error": "invalid_token", "scope": 'r:a"b:pull'}),
    ]
    assert parse_challenges("") == []
    assert parse_challenges("Basic") == [Challenge("basic", {})]
    assert parse_challenges('BASIC realm=registry') == [Challenge("basic", {"realm": "registry"})]


def test_token_responses() -> None:
    assert parse_token_response(b'{"token": "t", "expires_in": 300}').expires_in == 300
    assert parse_token_response(b'{"access_token": "a"}').value == "a"
    assert parse_token_response(b'{"token": "t"}').expires_in == 60  # the default
    assert parse_token_response(b'{"token": "t", "expires_in": "x"}').expires_in == 60
    # An upstream cannot have its token kept forever, or for NaN seconds.
    assert parse_token_response(b'{"token": "t", "expires_in": 1e400}').expires_in == 86400
    assert parse_token_response(b'{"token": "t", "expires_in": NaN}').expires_in == 60
    for bad in (b"[]", b'{"expires_in": 3}', b'{"token": ""}'):
        try:
            parse_token_response(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_token_cache_keys_hash_credentials_and_separate_scopes() -> None:
    key = token_cache_key("https://r", "user", "secret-password", "repository:a:pull")
    assert "secret-password" not in key and "user" not in key
    assert key != token_cache_key("https://r", "user", "other", "repository:a:pull")
    assert key != token_cache_key("https://r", "user", "secret-password", "repository:b:pull")
    assert key != token_cache_key("https://mirror", "user", "secret-password", "repository:a:pull")
    assert key == token_cache_key("https://r", "user", "secret-password", "repository:a:pull")


async def test_memory_cache_expiry_and_bound() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", b"1", 0.05)
    await cache.set("b", b"2", 10)
    assert await cache.get("a") == b"1"
    await asyncio.sleep(0.06)
    assert await cache.get("a") is None
    await cache.set("c", b"3", 10)
    await cache.set("d", b"4", 10)
    assert await cache.get("b") is None and await cache.get("d") == b"4"
    await cache.set("d", b"x", 0)
    assert await cache.get("d") is None
    await cache.delete("c")
    assert await cache.get("c") is None
