"""Backing off the attacker, not the user: wrong passwords are counted per client address and username.

After `THRESHOLD` wrong passwords for one username (or for unknown usernames) from one address within
`WINDOW`, that address may not try that username again for a while (429 with Retry-After): 30 s, then
doubling with each lockout up to 15 minutes. The same user logging in from anywhere else, and every
other user from this address, are not affected; credentials verified before (the success cache) keep
working. Counted verifications only: repeating one wrong password is answered from the failure cache
and counts once.

One process: in memory, bounded (least recently used entries go first). Replicas with `[cache.redis]`
keep the counters in Redis (`RedisLockouts`), so guesses spread over replicas add up. When that Redis
cannot be reached, a password that needs verifying is answered 503 (fail closed): an attacker who
can make Redis unreachable must not get unlimited guesses. Credentials verified before (the success
cache), tokens and anonymous access are not affected.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app import errors

if TYPE_CHECKING:
    from app.cache import CacheStore

log = logging.getLogger("registry.auth")

THRESHOLD = 10
WINDOW = 300.0
FIRST_LOCKOUT = 30.0
MAX_LOCKOUT = 900.0
MAX_ENTRIES = 65_536
LOCKOUT_MEMORY = 86_400.0  # Redis: how long the doubling of lockouts is remembered after the last one


@dataclass
class _Record:
    failures: int = 0
    since: float = 0.0
    locked_until: float = 0.0
    lockouts: int = 0


SUSPECT_AFTER = 3  # wrong passwords from one address (any username) within WINDOW


class Lockouts:
    def __init__(self) -> None:
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()
        self._addresses: OrderedDict[str, _Record] = OrderedDict()

    def suspect(self, address: str) -> bool:
        """Whether this address sent several wrong passwords lately: its verifications wait behind
        those of other clients (app/auth/verification.py)."""
        record = self._addresses.get(address)
        return record is not None and record.failures >= SUSPECT_AFTER \
            and time.monotonic() - record.since <= WINDOW

    def check(self, address: str, lane: str) -> None:
        """429 while this address is locked out of this username."""
        record = self._records.get((address, lane))
        if record is None:
            return
        remaining = record.locked_until - time.monotonic()
        if remaining > 0:
            raise errors.TooManyRequests(
                "too many wrong passwords from this client for this user; retry later",
                headers={"Retry-After": str(int(remaining) + 1)})

    def failed(self, address: str, lane: str) -> None:
        key = (address, lane)
        now = time.monotonic()
        record = self._records.pop(key, None) or _Record(since=now)
        if now - record.since > WINDOW:
            record.failures, record.since = 0, now
        record.failures += 1
        if record.failures >= THRESHOLD:
            record.locked_until = now + min(FIRST_LOCKOUT * 2 ** record.lockouts, MAX_LOCKOUT)
            record.lockouts += 1
            record.failures, record.since = 0, now
        self._records[key] = record
        while len(self._records) > MAX_ENTRIES:
            self._records.popitem(last=False)
        seen = self._addresses.pop(address, None) or _Record(since=now)
        if now - seen.since > WINDOW:
            seen.failures, seen.since = 0, now
        seen.failures += 1
        self._addresses[address] = seen
        while len(self._addresses) > MAX_ENTRIES:
            self._addresses.popitem(last=False)

    def succeeded(self, address: str, lane: str) -> None:
        self._records.pop((address, lane), None)

    # What app/auth/basic.py calls, the same for RedisLockouts.
    async def admit(self, address: str, lane: str) -> bool:
        """429 while this address is locked out of this username; else whether it is a suspect."""
        self.check(address, lane)
        return self.suspect(address)

    async def record_failure(self, address: str, lane: str) -> None:
        self.failed(address, lane)

    async def record_success(self, address: str, lane: str) -> None:
        self.succeeded(address, lane)


# One wrong password, atomically: count it for (address, username) and for the address; the
# THRESHOLD-th within WINDOW locks the pair out for FIRST_LOCKOUT * 2^(lockouts so far), capped.
# KEYS: pair failures, pair lockouts, pair locked, address failures. Answers the lockout in ms (0: none).
_FAILED = """
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local locked = 0
if failures >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  local lockouts = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  locked = math.floor(math.min(tonumber(ARGV[3]) * 2 ^ (lockouts - 1), tonumber(ARGV[4])))
  redis.call('SET', KEYS[3], '1', 'PX', locked)
end
local seen = redis.call('INCR', KEYS[4])
if seen == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[2]) end
return locked
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RedisLockouts:
    """The same rules, with the counters in Redis (expiring there), shared by every replica."""

    def __init__(self, client: Any, key_prefix: str = "") -> None:
        self._client = client
        self._prefix = f"{key_prefix}registry:lockout:"
        self._failed = client.register_script(_FAILED)

    def _keys(self, address: str, lane: str) -> tuple[str, str, str, str]:
        # Hashed (no usernames or addresses in Redis), one hash tag per address.
        base = f"{self._prefix}{{{_digest(address)}}}:"
        pair = _digest(f"{len(lane)}:{lane}")
        return f"{base}failures:{pair}", f"{base}lockouts:{pair}", f"{base}locked:{pair}", f"{base}address"

    def _unavailable(self, exc: Exception) -> errors.RegistryError:
        log.warning("login lockout state (redis) unreachable, refusing to verify passwords: %s: %s",
                    type(exc).__name__, exc)
        return errors.Unavailable("the login lockout state cannot be reached; retry later")

    async def admit(self, address: str, lane: str) -> bool:
        _, _, locked, seen = self._keys(address, lane)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.pttl(locked)
                pipe.get(seen)
                remaining_ms, failures = await pipe.execute()
        except Exception as exc:
            raise self._unavailable(exc) from exc
        if remaining_ms > 0:
            raise errors.TooManyRequests(
                "too many wrong passwords from this client for this user; retry later",
                headers={"Retry-After": str(remaining_ms // 1000 + 1)})
        return failures is not None and int(failures) >= SUSPECT_AFTER

    async def record_failure(self, address: str, lane: str) -> None:
        try:
            await self._failed(keys=list(self._keys(address, lane)), args=[
                THRESHOLD, int(WINDOW * 1000), int(FIRST_LOCKOUT * 1000), int(MAX_LOCKOUT * 1000),
                int(LOCKOUT_MEMORY * 1000)])
        except Exception as exc:
            raise self._unavailable(exc) from exc

    async def record_success(self, address: str, lane: str) -> None:
        failures, lockouts_, locked, _ = self._keys(address, lane)
        try:
            await self._client.delete(failures, lockouts_, locked)
        except Exception as exc:  # the login stands; only its counters could not be cleared
            log.warning("login lockout state (redis): cannot clear counters: %s: %s",
                        type(exc).__name__, exc)


_lockouts: Lockouts | None = None
_shared: tuple[CacheStore, RedisLockouts] | None = None


def lockouts() -> Lockouts | RedisLockouts:
    """The replicas' shared lockouts while the registry's cache store is Redis, else this process's."""
    global _lockouts, _shared
    from app.cache import shared_cache

    cache = shared_cache()
    if cache is not None:
        if _shared is None or _shared[0] is not cache:
            shared = cache.redis()
            assert shared is not None
            _shared = (cache, RedisLockouts(*shared))
        return _shared[1]
    if _lockouts is None:
        _lockouts = Lockouts()
    return _lockouts
