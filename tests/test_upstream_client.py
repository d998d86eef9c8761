"""The upstream client against real registries: token flow details (access_token, default expiry, refresh,
cache keyed by credentials and scope), TLS with a private CA and a client certificate (mTLS), and
read_timeout as an inactivity limit rather than a whole-transfer one."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.cache import MemoryCache
from app.config import UpstreamConfig
from app.upstream.client import UpstreamClient
from app.upstream.errors import UpstreamFailure
from tests.helpers.distribution import DistributionProcess
from tests.helpers.oci import digest_of
from tests.helpers.upstreams import Proxy, TokenServer, issue_tls_files, upload_blob

USER, PASSWORD = "puller", "pw"


@pytest.fixture
def token_upstream(tmp_path: Path) -> Iterator[tuple[DistributionProcess, TokenServer]]:
    # `access_token` instead of `token`, and no `expires_in` (60 s by default).
    tokens = TokenServer(tmp_path, username=USER, password=PASSWORD, expires_in=None, field="access_token")
    tokens.start()
    registry = DistributionProcess(tmp_path / "upstream", tmp_path / "data", auth=tokens.distribution_auth())
    registry.start()
    yield registry, tokens
    registry.stop()
    tokens.stop()


async def status(client: UpstreamClient, name: str, suffix: str = "tags/list") -> int:
    async with client.open("GET", name, suffix) as response:
        await response.read()
        return response.status


async def test_token_flow_caches_per_scope_and_credentials(
        token_upstream: tuple[DistributionProcess, TokenServer]) -> None:
    registry, tokens = token_upstream
    cache = MemoryCache()
    client = UpstreamClient(UpstreamConfig(url=registry.url, username=USER, password=PASSWORD), cache)
    try:
        assert await status(client, "team/a") == 404  # authenticated; the repository does not exist
        assert len(tokens.requests) == 1
        assert tokens.requests[0] == {"service": tokens.service, "scope": "repository:team/a:pull"}
        assert await status(client, "team/a") == 404
        assert len(tokens.requests) == 1  # the cached token was sent up front
        assert await status(client, "team/b") == 404
        assert len(tokens.requests) == 2  # another scope, another token

        # Same upstream, other credentials: never the other client's token.
        other = UpstreamClient(UpstreamConfig(url=registry.url, username=USER, password="wrong"), cache)
        with pytest.raises(UpstreamFailure, match=r"token endpoint .* answered 401"):
            await status(other, "team/a")
        assert tokens.refused == 1
        await other.close()
    finally:
        await client.close()


async def test_expired_tokens_are_fetched_again(tmp_path: Path) -> None:
    tokens = TokenServer(tmp_path, expires_in=2)  # anonymous pulls; tokens live 2 s
    tokens.start()
    registry = DistributionProcess(tmp_path / "upstream", tmp_path / "data", auth=tokens.distribution_auth())
    registry.start()
    client = UpstreamClient(UpstreamConfig(url=registry.url), MemoryCache())
    try:
        assert await status(client, "team/a") == 404
        assert await status(client, "team/a") == 404
        assert len(tokens.requests) == 1
        await asyncio.sleep(1.2)  # kept for half its life when that is this short
        assert await status(client, "team/a") == 404
        assert len(tokens.requests) == 2
    finally:
        await client.close()
        registry.stop()
        tokens.stop()


async def test_private_ca_and_client_certificate(tmp_path: Path) -> None:
    files = issue_tls_files(tmp_path / "tls")
    registry = DistributionProcess(tmp_path / "upstream", tmp_path / "data", tls={
        "certificate": str(files["server_cert"]), "key": str(files["server_key"]),
        "clientcas": [str(files["ca"])]})
    registry.start()
    cache = MemoryCache()
    mtls = UpstreamClient(UpstreamConfig(
        url=registry.url, server_ca_bundle=files["ca"], client_certificate=files["client_cert"],
        client_private_key=files["client_key"]), cache)
    no_client_cert = UpstreamClient(UpstreamConfig(url=registry.url, server_ca_bundle=files["ca"]), cache)
    untrusted = UpstreamClient(UpstreamConfig(url=registry.url, connect_timeout=5), cache)
    try:
        assert await status(mtls, "team/a") == 404
        with pytest.raises(UpstreamFailure):
            await status(no_client_cert, "team/a")
        with pytest.raises(UpstreamFailure, match="certificate"):
            await status(untrusted, "team/a")
    finally:
        for client in (mtls, no_client_cert, untrusted):
            await client.close()
        registry.stop()


@pytest.fixture
def blob_upstream(tmp_path: Path) -> Iterator[tuple[DistributionProcess, bytes]]:
    registry = DistributionProcess(tmp_path / "upstream", tmp_path / "data").start()
    blob = os.urandom(3 * 1024 * 1024)
    upload_blob(requests.Session(), registry.url, "team/app", blob)
    yield registry, blob
    registry.stop()


async def read_blob(client: UpstreamClient, digest: str) -> bytes:
    async with client.open("GET", "team/app", f"blobs/{digest}") as response:
        assert response.status == 200
        return await response.read()


async def test_read_timeout_limits_inactivity_not_the_transfer(
        blob_upstream: tuple[DistributionProcess, bytes]) -> None:
    registry, blob = blob_upstream
    digest = digest_of(blob)
    slow = Proxy(registry.url, throttle=1024 * 1024)  # 3 s for the blob, never silent for long
    stalling = Proxy(registry.url, stall_after=512 * 1024, stall_seconds=5)
    slow.start()
    stalling.start()
    cache = MemoryCache()
    steady = UpstreamClient(UpstreamConfig(url=slow.url, read_timeout=1), cache)
    stalled = UpstreamClient(UpstreamConfig(url=stalling.url, read_timeout=1), cache)
    try:
        started = time.monotonic()
        assert await read_blob(steady, digest) == blob
        assert time.monotonic() - started > 2  # longer than read_timeout, and still complete
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await read_blob(stalled, digest)
        assert time.monotonic() - started < 4
    finally:
        await steady.close()
        await stalled.close()
        slow.stop()
        stalling.stop()


async def test_connect_timeout_and_refused_connections_are_failures() -> None:
    client = UpstreamClient(UpstreamConfig(url="http://127.0.0.1:9", connect_timeout=2), MemoryCache())
    try:
        with pytest.raises(UpstreamFailure) as failure:
            await status(client, "team/a")
        assert failure.value.url == "http://127.0.0.1:9"
    finally:
        await client.close()
