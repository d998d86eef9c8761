"""The Redis lock store: locks shared by every replica that uses one Redis (`[metadata_store.*.redis]`).

Keys (`<key_prefix>lock:{<name>}` and two companions in the same cluster hash slot):
- `…lock:{name}`: the exclusive holder's owner token, `SET NX PX ttl`;
- `…lock:{name}:readers`: a sorted set of shared holders' tokens scored by their expiry (Redis
  server time, ms), pruned on every attempt so a killed reader drops out after its ttl;
- `…lock:{name}:waiting`: the token of one exclusive holder waiting for the shared ones to drain.
  While it is set no new shared holder gets in, so a stream of readers cannot starve a writer; it
  expires after ttl if its writer dies.

Every step is one Lua script (EVALSHA through redis-py's `register_script`, reloaded by redis-py
after a Redis restart flushed its script cache): acquire (idempotent for its own token, so a retry
after a lost reply does not lock itself out), compare-and-renew, compare-and-delete. Only the owner
token's holder renews or releases.

Waiting is polling every `retry_delay_ms` (jittered) until the caller's `wait`. While held, a lease
is renewed every ttl/3; a renewal that finds the key gone or another owner marks the lease lost at
once; one that cannot reach Redis is retried until the lease would have expired, then it is lost.

Redis unreachable: a command is retried every `retry_delay_ms` for at most `timeout` seconds (and
`max_retries` times), then `LockStoreUnavailable` (HTTP 503). The client's connections are made
again on the next command, so the same store works again once Redis is back, without a restart.

`redis.asyncio` is imported only when this store is built (a registry without Redis never loads it).
Measured (`python -m tests.bench.locks`, redis-server on loopback, 2 cores shared with other work):
230-500 µs per uncontended hold/release (two round trips), against 40-60 µs for the memory store.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from app.config import RedisLockConfig
from app.locks.base import Lease, LockStoreUnavailable, LockTimeout, RenewingLockStore

# KEYS: lock, readers, waiting. ARGV: token, ttl (ms). Server time, so replicas' clocks do not matter.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_KEEP_READERS = """
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
"""

ACQUIRE_EXCLUSIVE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
local waiting = redis.call('GET', KEYS[3])
local mine = (not waiting) or waiting == ARGV[1]
if (not owner) and mine and redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  if waiting then redis.call('DEL', KEYS[3]) end
  return 1
end
if mine then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2]) end
return 0
"""

ACQUIRE_SHARED = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
""" + _KEEP_READERS + """
return 1
"""

# KEYS: lock. ARGV: token, ttl.
RENEW_EXCLUSIVE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lock, readers. ARGV: token, ttl.
RENEW_SHARED = _NOW + """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (not score) or tonumber(score) <= now then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[2]), ARGV[1])
""" + _KEEP_READERS + """
return 1
"""

# KEYS: lock, readers, waiting. ARGV: token. Compare-and-delete in every place the token may be.
RELEASE = """
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
released = released + redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return released
"""


class RedisLockStore(RenewingLockStore):
    """See the module docstring. `client` is for tests and tools that look at the keys."""

    def __init__(self, config: RedisLockConfig) -> None:
        import redis.asyncio as aioredis  # only a registry configured with Redis loads it
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ReadOnlyError, RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self.config = config
        self.default_ttl = config.ttl
        # Worth retrying: no connection (also "loading" after a restart), a timeout, a primary that
        # just became a replica in a failover. Any other Redis error fails at once.
        self._unreachable: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError,
                                                              ReadOnlyError, OSError)
        self._failed: type[BaseException] = RedisError
        # No retries inside redis-py: `_call` retries with the configured bounds instead.
        self.client: Any = aioredis.Redis.from_url(
            config.url, socket_timeout=config.timeout, socket_connect_timeout=config.timeout,
            retry=Retry(NoBackoff(), 0))
        self._acquire_exclusive = self.client.register_script(ACQUIRE_EXCLUSIVE)
        self._acquire_shared = self.client.register_script(ACQUIRE_SHARED)
        self._renew_exclusive = self.client.register_script(RENEW_EXCLUSIVE)
        self._renew_shared = self.client.register_script(RENEW_SHARED)
        self._release_script = self.client.register_script(RELEASE)

    def keys(self, name: str) -> tuple[str, str, str]:
        """The exclusive key, the readers' sorted set and the waiting-writer marker of `name`."""
        lock = f"{self.config.key_prefix}lock:{{{name}}}"
        return lock, f"{lock}:readers", f"{lock}:waiting"

    async def close(self) -> None:
        await self.client.aclose()

    def _delay(self) -> float:
        return self.config.retry_delay_ms / 1000 * random.uniform(0.5, 1.5)

    async def _call(self, script: Any, keys: tuple[str, ...], args: tuple[Any, ...],
                    retries: int | None = None) -> int:
        """Run a script; an unreachable Redis is retried within `timeout`, then LockStoreUnavailable."""
        give_up = time.monotonic() + self.config.timeout
        retries = self.config.max_retries if retries is None else retries
        attempt = 0
        while True:
            try:
                return int(await script(keys=list(keys), args=list(args)))
            except self._unreachable as exc:
                attempt += 1
                delay = self._delay()
                if attempt > retries or time.monotonic() + delay >= give_up:
                    raise LockStoreUnavailable(f"redis lock store unreachable: {exc}") from exc
                await asyncio.sleep(delay)
            except self._failed as exc:  # e.g. OOM, a script refused: nothing a retry would mend
                raise LockStoreUnavailable(f"redis lock store failed: {exc!r}") from exc

    async def _acquire(self, lease: Lease, ttl: float, deadline: float) -> None:
        ttl_ms = max(1, int(ttl * 1000))
        keys = self.keys(lease.name)
        script = self._acquire_shared if lease.shared else self._acquire_exclusive
        while True:
            started = time.monotonic()
            if await self._call(script, keys, (lease.token, ttl_ms)):
                lease.valid_until = started + ttl
                return
            delay = self._delay()
            if time.monotonic() + delay > deadline:
                raise LockTimeout(f"lock {lease.name} not acquired in time (held elsewhere)")
            await asyncio.sleep(delay)

    async def _renew(self, lease: Lease, ttl: float) -> bool:
        ttl_ms = max(1, int(ttl * 1000))
        lock, readers, _ = self.keys(lease.name)
        if lease.shared:
            return bool(await self._call(self._renew_shared, (lock, readers), (lease.token, ttl_ms)))
        return bool(await self._call(self._renew_exclusive, (lock,), (lease.token, ttl_ms)))

    async def _release(self, lease: Lease, patient: bool = True) -> None:
        await self._call(self._release_script, self.keys(lease.name), (lease.token,),
                         retries=None if patient else 0)
