"""The cache store: small values with a time to live, shared by upstream tokens, key sets and decisions.

In memory for one process, or in Redis with `[cache.redis]` (app/cache_redis.py) so that replicas
share it, through the same interface. Keys are opaque strings built by the caller; values are
bytes (callers encode). Nothing here is authoritative: a miss is always allowed.
"""

from __future__ import annotations

import abc
import time
from collections import OrderedDict
from typing import Any

from app.config import CacheConfig


class CacheStore(abc.ABC):
    def redis(self) -> tuple[Any, str] | None:
        """The Redis client and key prefix of a store the replicas share, None for one process's."""
        return None
    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds (a ttl <= 0 stores nothing)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryCache(CacheStore):
    """A bounded LRU with per-entry expiry, for one process (event loop only: no locking needed)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)


_shared: CacheStore | None = None


def shared_cache() -> CacheStore | None:
    """The store the replicas share (`[cache.redis]`) while the registry has it open, else None. What
    one process would keep to itself (JWKS, webhook decisions, login lockouts) goes there instead."""
    return _shared


def open_cache(config: CacheConfig) -> CacheStore:
    """`[cache.redis]`: shared by every replica (app/cache_redis.py); otherwise this process's own."""
    global _shared
    if config.redis is None:
        _shared = None
        return MemoryCache()
    from app.cache_redis import RedisCache
    from app.redis_client import redis_client

    store = _shared = RedisCache(redis_client(config.redis.url), config.redis.key_prefix)
    return store


def stop_sharing(store: CacheStore) -> None:
    global _shared
    if _shared is store:
        _shared = None
