"""The asyncio Redis client the replicas share their state through (app/coherence.py, app/cache_redis.py).

`redis` is imported only when a Redis is configured (tests/test_lazy_imports.py).
"""

from __future__ import annotations

from typing import Any


def redis_client(url: str) -> Any:
    """An asyncio Redis client (connections made on first use, remade after a failure) whose calls
    fail within seconds when Redis is away, rather than hang the requests waiting on it."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    # One retry on a fresh connection: a pooled connection to a Redis that restarted is dead, and the
    # first command on it fails although Redis is back.
    return redis.asyncio.Redis.from_url(
        url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=15,
        retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError, RedisTimeoutError])
