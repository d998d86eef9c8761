"""The login lockout shared by replicas (`[cache.redis]`, app/auth/lockout.py), against a real
redis-server: wrong passwords sent to one replica count on the others, and a Redis that cannot be
reached refuses password verifications (503) rather than let guesses go uncounted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from app import errors
from app.auth import lockout
from app.auth.lockout import FIRST_LOCKOUT, SUSPECT_AFTER, THRESHOLD, RedisLockouts
from app.cache import MemoryCache, open_cache, shared_cache
from app.cache_redis import RedisCache
from app.config import CacheConfig
from app.redis_client import redis_client
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import RegistryProcess, toml_value

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


async def test_failures_on_one_replica_lock_the_pair_out_on_another(redis_server: RedisServer) -> None:
    one = RedisLockouts(redis_client(redis_server.url), "t:")
    other = RedisLockouts(redis_client(redis_server.url), "t:")
    try:
        for attempt in range(THRESHOLD - 1):
            assert await (one if attempt % 2 else other).admit("10.0.0.1", "alice") == (
                attempt >= SUSPECT_AFTER)
            await (one if attempt % 2 else other).record_failure("10.0.0.1", "alice")
        await other.admit("10.0.0.1", "alice")  # one guess left
        await one.record_failure("10.0.0.1", "alice")
        with pytest.raises(errors.TooManyRequests) as locked:
            await other.admit("10.0.0.1", "alice")
        assert 0 < int(locked.value.headers["Retry-After"]) <= FIRST_LOCKOUT + 1
        assert await other.admit("10.0.0.2", "alice") is False  # another address: not affected
        assert await other.admit("10.0.0.1", "bob") is True  # another user: tried, but a suspect
        # No address or username in Redis; every key expires.
        keys = redis_server.cli("KEYS", "t:registry:lockout:*")
        assert keys and not any("10.0.0.1" in key or "alice" in key for key in keys)
        assert all(redis_server.cli("PTTL", key) > 0 for key in keys)
        # The next lockout of the pair lasts twice as long.
        locked_key = next(key for key in keys if ":locked:" in key)
        redis_server.cli("DEL", locked_key)
        for _ in range(THRESHOLD):
            await one.record_failure("10.0.0.1", "alice")
        assert redis_server.cli("PTTL", locked_key) > FIRST_LOCKOUT * 1000
        # A success clears the pair.
        redis_server.cli("DEL", locked_key)
        await one.record_success("10.0.0.1", "alice")
        await other.admit("10.0.0.1", "alice")
        assert not [key for key in redis_server.cli("KEYS", "t:registry:lockout:*") if ":failures:" in key]
    finally:
        for store in (one, other):
            await store._client.aclose()


async def test_redis_away_refuses_verifications_but_not_a_success(redis_server: RedisServer) -> None:
    store = RedisLockouts(redis_client(redis_server.url))
    try:
        await store.admit("10.0.0.1", "alice")
        redis_server.stop()
        with pytest.raises(errors.RegistryError) as refused:
            await store.admit("10.0.0.1", "alice")
        assert refused.value.status == 503
        with pytest.raises(errors.RegistryError):
            await store.record_failure("10.0.0.1", "alice")
        await store.record_success("10.0.0.1", "alice")  # logged, the login stands
        redis_server.start()
        assert await store.admit("10.0.0.1", "alice") is False  # back by itself
    finally:
        await store._client.aclose()


async def test_the_shared_lockouts_follow_the_registry_cache_store(redis_server: RedisServer) -> None:
    cache = open_cache(CacheConfig.model_validate({"redis": {"url": redis_server.url}}))
    try:
        assert isinstance(cache, RedisCache) and shared_cache() is cache
        assert isinstance(lockout.lockouts(), RedisLockouts)
    finally:
        await cache.close()
    assert shared_cache() is None
    assert isinstance(lockout.lockouts(), lockout.Lockouts)
    assert isinstance(open_cache(CacheConfig()), MemoryCache) and shared_cache() is None


def _replica(tmp_path: Path, name: str, redis_url: str, password_hash: str) -> RegistryProcess:
    workdir = tmp_path / name
    workdir.mkdir()
    return RegistryProcess(workdir, f"""
[blob_store.fs]
root_dir = {toml_value(tmp_path / "shared")}

[cache.redis]
url = {toml_value(redis_url)}

[auth.identity.alice]
username = "alice"
password = "{password_hash}"

[global.access_policy]
rules = ['identity.username == "alice"']
""").start()


def test_guesses_spread_over_two_replicas_add_up(tmp_path: Path, redis_server: RedisServer) -> None:
    a = _replica(tmp_path, "a", redis_server.url, FAST.hash("right"))
    try:
        b = _replica(tmp_path, "b", redis_server.url, FAST.hash("right"))
        try:
            statuses = [(a if n % 2 else b).get("/v2/", auth=("alice", f"guess-{n}")).status_code
                        for n in range(THRESHOLD)]
            assert statuses == [401] * THRESHOLD  # each replica saw only half of them
            for replica in (a, b):  # locked out of alice on both, even with the right password
                response = replica.get("/v2/", auth=("alice", "right"))
                assert response.status_code == 429, response.text
                assert int(response.headers["Retry-After"]) > 0
            redis_server.cli("FLUSHALL")
            assert a.get("/v2/", auth=("alice", "right")).status_code == 200
            redis_server.stop()  # fail closed: a password not verified before is not verified now
            response = b.get("/v2/", auth=("alice", "right"))
            assert response.status_code == 503, response.text
            assert a.get("/v2/", auth=("alice", "right")).status_code == 200  # verified before: cached
        finally:
            b.kill()
    finally:
        a.kill()

