"""Basic credentials against `[auth.identity.*]`: Argon2id verification off the loop, bounded and cached.

Argon2id costs ~0.1 s and 64 MiB per verification by design. So:
- verifications run in a small process-wide thread pool (the loop never waits on one), and at most
  `MAX_PENDING` may be running or queued at once: beyond that a request gets 429 at once, so a flood of
  wrong passwords cannot grow memory or latency without bound;
- a success is cached under an HMAC of the credentials with a per-process random key (never the
  password), for `SUCCESS_TTL` seconds; a configuration reload builds a new verifier, hence a new cache;
- a failure is remembered the same way for a shorter time, so a client retrying one wrong password
  costs nothing;
- an unknown username is verified against a dummy hash with the same parameters, so it costs the same
  time as a wrong password.

argon2-cffi (and cffi) is imported only once an identity is configured: a registry without Basic
identities never loads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app import errors
from app.config import IdentityConfig
from app.ttlcache import TTLCache

if TYPE_CHECKING:
    from argon2 import Parameters, PasswordHasher

WORKERS = 2
MAX_PENDING = 16
SUCCESS_TTL = 300.0
FAILURE_TTL = 30.0
CACHE_SIZE = 4096

_hasher: PasswordHasher | None = None


def _default_hasher() -> PasswordHasher:
    global _hasher
    if _hasher is None:
        from argon2 import PasswordHasher

        _hasher = PasswordHasher()
    return _hasher


@dataclass(frozen=True, slots=True)
class BasicIdentity:
    id: str
    username: str
    groups: tuple[str, ...] = ()
    # Names this identity's password hash without revealing it: a token or refresh token issued to the
    # identity stops working once its password (hence its hash) changes.
    fingerprint: str = ""


def password_fingerprint(phc_hash: str) -> str:
    return hashlib.sha256(phc_hash.encode()).hexdigest()[:16]


class VerificationPool:
    """The argon2 threads and the admission bound, shared by every configuration generation."""

    def __init__(self, workers: int = WORKERS, max_pending: int = MAX_PENDING) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="argon2")
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    def _release(self, _future: Future[bool]) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, check: Callable[..., bool], *args: Any) -> bool:
        with self._lock:
            if self._pending >= self._max_pending:
                raise errors.TooManyRequests("too many password verifications in progress; retry later",
                                             headers={"Retry-After": "1"})
            self._pending += 1
        # Released when the thread is done, not when the caller stops waiting: the bound is on real work.
        future = self._executor.submit(check, *args)
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def warm(self, parameters: Parameters) -> None:
        """Compute the dummy hash in the background, outside the admission bound."""
        self._executor.submit(dummy_hash, parameters)


def verify_password(phc_hash: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _default_hasher().verify(phc_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_unknown_user(parameters: Parameters, password: str) -> bool:
    """The same work as a wrong password for a known user; always False."""
    verify_password(dummy_hash(parameters), password)
    return False


_dummy_hashes: dict[tuple[Any, ...], str] = {}
_dummy_lock = threading.Lock()


def dummy_hash(parameters: Parameters) -> str:
    """A hash of a random password with these parameters: what unknown usernames are verified against."""
    key = dataclasses.astuple(parameters)
    with _dummy_lock:
        found = _dummy_hashes.get(key)
        if found is None:
            from argon2 import PasswordHasher

            hasher = PasswordHasher.from_parameters(parameters)
            found = _dummy_hashes[key] = hasher.hash(secrets.token_urlsafe(16))
        return found


_pool: VerificationPool | None = None


def verification_pool() -> VerificationPool:
    global _pool
    if _pool is None:
        _pool = VerificationPool()
    return _pool


class BasicVerifier:
    """One configuration generation's identities and its verification caches."""

    def __init__(self, identities: dict[str, IdentityConfig]) -> None:
        self._key = secrets.token_bytes(32)
        self._by_username: dict[str, tuple[BasicIdentity, str]] = {}
        self._by_id: dict[str, BasicIdentity] = {}
        for identity_id, identity in identities.items():  # hashes and usernames checked by the config
            known = BasicIdentity(identity_id, identity.username, tuple(identity.groups),
                                  password_fingerprint(identity.password))
            self._by_username[identity.username] = (known, identity.password)
            self._by_id[identity_id] = known
        first = next(iter(identities.values()), None)
        self._dummy_parameters: Parameters | None = None
        if first is not None:
            from argon2 import extract_parameters

            self._dummy_parameters = extract_parameters(first.password)
        self._successes: TTLCache[BasicIdentity] = TTLCache(CACHE_SIZE, SUCCESS_TTL)
        self._failures: TTLCache[bool] = TTLCache(CACHE_SIZE, FAILURE_TTL)
        if self._dummy_parameters is not None:
            verification_pool().warm(self._dummy_parameters)

    @property
    def configured(self) -> bool:
        return bool(self._by_username)

    def identity(self, identity_id: str) -> BasicIdentity | None:
        """The configured identity with this id (for tokens issued to it), None once it is gone."""
        return self._by_id.get(identity_id)

    def _credential_key(self, username: str, password: str) -> bytes:
        message = f"{len(username)}:{username}:{password}".encode("utf-8", "surrogatepass")
        return hmac.digest(self._key, message, "sha256")

    async def verify(self, username: str, password: str) -> BasicIdentity | None:
        """The identity these credentials name, or None when they are wrong (or the user unknown)."""
        key = self._credential_key(username, password)
        cached = self._successes.get(key)
        if cached is not None:
            return cached
        if self._failures.get(key):
            return None
        entry = self._by_username.get(username)
        if entry is None:
            if self._dummy_parameters is not None:
                await verification_pool().run(verify_unknown_user, self._dummy_parameters, password)
            self._failures.put(key, True)
            return None
        if not await verification_pool().run(verify_password, entry[1], password):
            self._failures.put(key, True)
            return None
        identity = entry[0]
        self._successes.put(key, identity)
        return identity
