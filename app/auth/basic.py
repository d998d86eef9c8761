"""Basic credentials against `[auth.identity.*]`: Argon2id verification off the loop, bounded and cached.

Argon2id costs ~0.1 s and 64 MiB per verification by design. So:
- verifications run in a small process-wide thread pool (the loop never waits on one), shared fairly
  between usernames and client addresses (app/auth/verification.py): a flood of wrong passwords fills
  its own lane and gets 429, the logins of other users keep their turns, memory stays bounded;
- an address that keeps guessing one username is backed off from it (app/auth/lockout.py);
- a success is cached under an HMAC of the credentials with a per-process random key (never the
  password), for `SUCCESS_TTL` seconds; a configuration reload builds a new verifier, hence a new cache;
- a failure is remembered the same way for a shorter time, so a client retrying one wrong password
  costs nothing;
- an unknown username is verified against a configured hash (the result ignored), so it costs the same
  time as a wrong password.

argon2-cffi (and cffi) is imported only once an identity is configured: a registry without Basic
identities never loads it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.config import IdentityConfig
from app.ttlcache import TTLCache

if TYPE_CHECKING:
    from argon2 import PasswordHasher

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


def verify_password(phc_hash: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _default_hasher().verify(phc_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_unknown_user(decoy: str, password: str) -> bool:
    """The same work as a wrong password for a known user (a verification against a configured hash of
    the same cost); always False, whatever it finds."""
    verify_password(decoy, password)
    return False


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
        # Unknown usernames are verified against a configured hash: the same cost as a wrong password, and
        # no decoy hash to compute (64 MiB at every start and reload) or to keep.
        first = next(iter(identities.values()), None)
        self._decoy: str | None = first.password if first is not None else None
        self._successes: TTLCache[BasicIdentity] = TTLCache(CACHE_SIZE, SUCCESS_TTL)
        self._failures: TTLCache[bool] = TTLCache(CACHE_SIZE, FAILURE_TTL)

    @property
    def configured(self) -> bool:
        return bool(self._by_username)

    def identity(self, identity_id: str) -> BasicIdentity | None:
        """The configured identity with this id (for tokens issued to it), None once it is gone."""
        return self._by_id.get(identity_id)

    def _credential_key(self, username: str, password: str) -> bytes:
        message = f"{len(username)}:{username}:{password}".encode("utf-8", "surrogatepass")
        return hmac.digest(self._key, message, "sha256")

    async def verify(self, username: str, password: str, address: str | None = None) -> BasicIdentity | None:
        """The identity these credentials name, or None when they are wrong (or the user unknown).

        `address` is the client's: its wrong passwords are counted, and it is backed off from a
        username it keeps guessing (app/auth/lockout.py) while other clients are not."""
        key = self._credential_key(username, password)
        cached = self._successes.get(key)
        if cached is not None:
            return cached
        if self._failures.get(key):
            return None
        from app.auth.lockout import lockouts
        from app.auth.verification import UNKNOWN_USERS, verification_pool

        entry = self._by_username.get(username)
        lane = username if entry is not None else UNKNOWN_USERS
        client = address or "unknown"
        counts = lockouts()  # shared by the replicas with [cache.redis]: 503 when it is unreachable
        suspect = await counts.admit(client, lane)
        if entry is None:
            if self._decoy is not None:
                await verification_pool().run(lane, client, verify_unknown_user, self._decoy, password,
                                              suspect=suspect)
            self._failures.put(key, True)
            await counts.record_failure(client, lane)
            return None
        if not await verification_pool().run(lane, client, verify_password, entry[1], password,
                                             suspect=suspect):
            self._failures.put(key, True)
            await counts.record_failure(client, lane)
            return None
        await counts.record_success(client, lane)
        identity = entry[0]
        self._successes.put(key, identity)
        return identity
