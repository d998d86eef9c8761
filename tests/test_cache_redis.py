"""The cache store in Redis (`[cache.redis]`, app/cache_redis.py), against a real redis-server: what one
replica cached, another one uses; Redis away is a miss, never an error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.cache_redis import RedisCache
from app.redis_client import redis_client
from tests.helpers.distribution import DistributionProcess
from tests.helpers.oci import make_image
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import RegistryProcess, toml_value
from tests.helpers.upstreams import TokenServer, pull_through_config, push

USER, PASSWORD = "puller", "s3cret"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


async def test_values_are_shared_expire_and_are_deleted(redis_server: RedisServer) -> None:
    one = RedisCache(redis_client(redis_server.url), "t:")
    other = RedisCache(redis_client(redis_server.url), "t:")
    try:
        await one.set("token", b"abc", ttl=0.5)
        assert await other.get("token") == b"abc"  # another process's store sees it
        assert redis_server.cli("PTTL", "t:registry:cache:token") > 0  # expiry kept by Redis
        await asyncio.sleep(0.7)
        assert await other.get("token") is None
        await one.set("k", b"v", ttl=60)
        await other.delete("k")
        assert await one.get("k") is None
        await one.set("k", b"v", ttl=0)  # a ttl <= 0 stores nothing
        assert await one.get("k") is None
        third = RedisCache(redis_client(redis_server.url), "other:")  # another prefix: other keys
        try:
            await one.set("token", b"abc", ttl=60)
            assert await third.get("token") is None
        finally:
            await third.close()
    finally:
        await one.close()
        await other.close()


async def test_redis_away_is_a_miss_and_it_is_used_again_when_back(redis_server: RedisServer) -> None:
    cache = RedisCache(redis_client(redis_server.url))
    try:
        await cache.set("k", b"v", ttl=60)
        redis_server.stop()
        assert await cache.get("k") is None  # a miss, not an exception
        await cache.set("k2", b"v", ttl=60)  # dropped quietly
        await cache.delete("k")
        redis_server.start()  # empty
        assert await cache.get("k") is None
        await cache.set("k", b"again", ttl=60)
        assert await cache.get("k") == b"again"
    finally:
        await cache.close()


def test_replicas_share_the_upstream_token(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two pull-through replicas with one [cache.redis]: the token one fetched from the upstream's token
    service, the other uses (one token request, not one per replica)."""
    upstream_dir = tmp_path / "upstream"
    upstream_dir.mkdir()
    tokens = TokenServer(upstream_dir, username=USER, password=PASSWORD)
    tokens.start()
    upstream = DistributionProcess(upstream_dir, tmp_path / "upstream-data", auth=tokens.distribution_auth())
    upstream.start()
    servers: list[RegistryProcess] = []
    try:
        session = requests.Session()
        grant = requests.get(f"{tokens.url}/token", params={"service": tokens.service,
                                                           "scope": "repository:team/app:pull,push"},
                             auth=(USER, PASSWORD), timeout=10).json()["token"]
        session.headers["Authorization"] = f"Bearer {grant}"
        image = make_image()
        push(session, upstream.url, "team/app", image, "1.0")
        before = len(tokens.requests)
        config = (pull_through_config([{"url": upstream.url, "username": USER, "password": PASSWORD}])
                  + f"\n[cache.redis]\nurl = {toml_value(redis_server.url)}\n")
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            servers.append(RegistryProcess(workdir, config).start())
        accept = {"Accept": image.media_type}
        first = servers[0].get("/v2/cache/team/app/manifests/1.0", headers=accept)
        assert first.status_code == 200 and first.content == image.manifest
        asked = len(tokens.requests) - before
        assert asked >= 1
        second = servers[1].get("/v2/cache/team/app/manifests/1.0", headers=accept)
        assert second.status_code == 200 and second.content == image.manifest
        assert len(tokens.requests) - before == asked  # B used A's token
    finally:
        for server in servers:
            server.kill()
        upstream.stop()
        tokens.stop()
