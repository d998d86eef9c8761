"""The cache store in Redis (`[cache.redis]`): what one replica learnt (an upstream's token, say) the
others use instead of asking again.

Nothing in a cache is authoritative, so Redis being away is a miss, never an error: a `get` answers
None and a `set` is dropped, each logged once per outage, and the callers do the work themselves
(fetch the token again). Values expire in Redis (`PX`), keys are the callers' under `key_prefix`.
"""

from __future__ import annotations

import logging
from typing import Any

from app.cache import CacheStore

log = logging.getLogger("registry")


class RedisCache(CacheStore):
    def __init__(self, client: Any, key_prefix: str = "") -> None:
        self._client = client
        self._key_prefix = key_prefix
        self._prefix = f"{key_prefix}registry:cache:"
        self._failing = False

    def redis(self) -> tuple[Any, str]:
        return self._client, self._key_prefix

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _failed(self, action: str, exc: Exception) -> None:
        if not self._failing:
            log.warning("cache store (redis) failed on %s, serving without it: %s: %s", action,
                        type(exc).__name__, exc)
        self._failing = True

    def _worked(self) -> None:
        if self._failing:
            log.info("cache store (redis) answers again")
        self._failing = False

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._client.get(self._key(key))
        except Exception as exc:  # a miss: the caller does the work itself
            self._failed("get", exc)
            return None
        self._worked()
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        milliseconds = int(ttl * 1000)
        try:
            if milliseconds <= 0:
                await self._client.delete(self._key(key))
            else:
                await self._client.set(self._key(key), value, px=milliseconds)
        except Exception as exc:
            self._failed("set", exc)
            return
        self._worked()

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete(self._key(key))
        except Exception as exc:
            self._failed("delete", exc)
            return
        self._worked()

    async def close(self) -> None:
        from app.cache import stop_sharing

        stop_sharing(self)
        await self._client.aclose()
