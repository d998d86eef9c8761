"""What replicas share through the cache store in Redis (`[cache.redis]`) besides upstream tokens: OIDC
key sets (app/auth/oidc.py) and webhook decisions (app/webhook.py), against a real redis-server. One
replica's fetch or question answers the others; without Redis each process keeps its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from app.auth.oidc import OIDCProvider
from app.cache import open_cache, shared_cache
from app.config import CacheConfig, OIDCConfig
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import RegistryProcess, toml_value
from tests.helpers.services import Issuer, Webhook

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    issuer = Issuer().start()
    issuer.add_rsa("rsa-1")
    yield issuer
    issuer.stop()


async def test_one_replica_fetches_the_key_set_for_all(redis_server: RedisServer, issuer: Issuer) -> None:
    cache = open_cache(CacheConfig.model_validate({"redis": {"url": redis_server.url}}))
    config = OIDCConfig(provider="generic", issuer=issuer.url)
    one, other = OIDCProvider("ci", config), OIDCProvider("ci", config)  # as on two replicas
    for provider in (one, other):
        provider.unknown_kid_refresh_interval = 0  # a minute in production
    try:
        assert (await one.verify(issuer.token("rsa-1")))["repository"] == "acme/app"
        assert (await other.verify(issuer.token("rsa-1")))["repository"] == "acme/app"
        assert issuer.jwks_hits == 1
        issuer.add_ec("ec-2")  # a rotation: the first replica to see the new kid fetches
        await one.verify(issuer.token("ec-2"))
        await other.verify(issuer.token("ec-2"))
        assert issuer.jwks_hits == 2
    finally:
        await one.close()
        await other.close()
        await cache.close()
    assert shared_cache() is None
    alone = OIDCProvider("ci", config)  # no shared store: the process fetches for itself
    try:
        await alone.verify(issuer.token("ec-2"))
        assert issuer.jwks_hits == 3
    finally:
        await alone.close()


def _replica(tmp_path: Path, name: str, redis_url: str | None, webhook: Webhook,
             hashed: str) -> RegistryProcess:
    workdir = tmp_path / name
    workdir.mkdir()
    shared = f"[cache.redis]\nurl = {toml_value(redis_url)}\n" if redis_url else ""
    return RegistryProcess(workdir, f"""
[blob_store.fs]
root_dir = {toml_value(tmp_path / "shared")}

{shared}
[auth.token]
enabled = false

[auth.identity.alice]
username = "alice"
password = "{hashed}"

[auth.webhook.gate]
url = "{webhook.url}"
bearer_token = "hook-secret"

[global]
authorization_webhook = "gate"

[global.access_policy]
default_allow = true
""").start()


@pytest.mark.parametrize("shared", [True, False])
def test_a_webhook_decision_made_for_one_replica_answers_the_other(
        tmp_path: Path, redis_server: RedisServer, shared: bool) -> None:
    webhook = Webhook().start()
    hashed = FAST.hash("pw")
    url = redis_server.url if shared else None
    a = _replica(tmp_path, "a", url, webhook, hashed)
    b = _replica(tmp_path, "b", url, webhook, hashed)
    try:
        # Behind a load balancer every replica sees the same Host.
        headers = {"Host": "registry.example"}
        for replica in (a, b, a, b):
            response = replica.get("/v2/team/app/tags/list", auth=("alice", "pw"), headers=headers)
            assert response.status_code == 404, response.text  # allowed, the repository is empty
        asked = sum(1 for h in webhook.received if h.get("X-Registry-Namespace") == "team/app")
        assert asked == (1 if shared else 2)
        if shared:
            keys = redis_server.cli("KEYS", "registry:cache:webhook:*")
            assert len(keys) == 1 and redis_server.cli("PTTL", keys[0]) > 0
    finally:
        a.kill()
        b.kill()
        webhook.stop()
