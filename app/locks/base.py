"""The lock-store protocol every lock of the registry goes through, and what the stores share.

`async with store.hold(name, ttl=, wait=, shared=) as lease:` is the shape of `Locks.hold`
(app/actors/locks.py) with what several processes need on top: an owner token that only its holder
releases with, shared and exclusive modes, and a lease that is renewed in the background while held
(stores with expiry, i.e. Redis) and says at once when it was lost. Lock names are built in
app/storage/locks.py, next to the storage layout they guard.

A holder that writes under a lock calls `lease.check()` right before each step that must not happen
unprotected (a commit, a tag move): it raises `LockLost` when the lease was lost, so the write is
abandoned instead of finished without the lock. `lease.lost` is an `asyncio.Event` for holders that
would rather wait on it (e.g. race a long copy against it).

Modes: any number of shared holders at once, or one exclusive holder and no shared one. No waiter
starves: the in-process store grants in arrival order (consecutive shared waiters together), the file
and Redis stores prefer a waiting exclusive holder over new shared ones.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from app.storage.base import StorageError

log = logging.getLogger("registry.locks")

DEFAULT_WAIT = 60.0


class LockTimeout(TimeoutError):
    """The lock could not be had within `wait` (a TimeoutError, as `Locks.hold` has always raised)."""


class LockLost(StorageError):
    """A held lock was lost: it expired and may have another owner, or its renewal failed. The write
    it guarded is abandoned, and the request answered 503 like a storage failure (try again)."""


class LockStoreUnavailable(StorageError):
    """The lock store cannot be reached (Redis down): answered 503 like any storage failure."""


def new_token() -> str:
    return uuid.uuid4().hex


@dataclass(eq=False)
class Lease:
    """One holder's grip on a lock: its name, owner token and mode; `lost` is set once it is gone."""

    name: str
    token: str
    shared: bool = False
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    # time.monotonic() until which the lock is known to be ours (stores with expiry); None: no expiry.
    valid_until: float | None = None
    reason: str = ""

    def mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()
            log.warning("lock %s lost: %s", self.name, reason)

    def check(self) -> None:
        """Raise `LockLost` unless the lock is still held (also when renewal has not run in time, e.g.
        because the event loop was blocked past the lease's expiry)."""
        if not self.lost.is_set() and self.valid_until is not None and time.monotonic() >= self.valid_until:
            self.mark_lost("the lease expired before it could be renewed")
        if self.lost.is_set():
            raise LockLost(f"lock {self.name} was lost: {self.reason}")


class LockStore(Protocol):
    """Named locks with owner tokens; see the module docstring."""

    def hold(self, name: str, *, ttl: float | None = None, wait: float = DEFAULT_WAIT,
             shared: bool = False) -> AbstractAsyncContextManager[Lease]:
        """Wait up to `wait` seconds for the lock (`LockTimeout`), hold it while the block runs,
        release it on the way out (also on errors and cancellation). `ttl`: how long the lock
        outlives a holder that stops renewing it (a killed process), for stores with expiry; the
        store's configured ttl when None. Raises `LockStoreUnavailable` when the store is unreachable."""
        ...

    async def close(self) -> None:
        """Release what the store holds open (connections, threads, its own actor)."""
        ...


class RenewingLockStore(abc.ABC):
    """A store whose locks expire unless renewed: `hold` renews every ttl/3 while the block runs and
    marks the lease lost when renewal says the lock is no longer ours or cannot reach the store in
    time. Subclasses implement `_acquire`, `_renew`, `_release` for one attempt each."""

    default_ttl: float = 10.0

    @abc.abstractmethod
    async def _acquire(self, lease: Lease, ttl: float, deadline: float) -> None:
        """Take the lock for `lease` before `deadline` (monotonic) or raise `LockTimeout`; set
        `lease.valid_until`."""

    @abc.abstractmethod
    async def _renew(self, lease: Lease, ttl: float) -> bool:
        """Extend the lock by `ttl`; False when it is no longer ours. Raises LockStoreUnavailable."""

    @abc.abstractmethod
    async def _release(self, lease: Lease, patient: bool = True) -> None:
        """Give the lock up if it is still ours (compare-and-delete). Not `patient`: one attempt, no
        retries (the store was just found unreachable; the lock expires by itself)."""

    async def close(self) -> None:
        return None

    @contextlib.asynccontextmanager
    async def hold(self, name: str, *, ttl: float | None = None, wait: float = DEFAULT_WAIT,
                   shared: bool = False) -> AsyncIterator[Lease]:
        ttl = self.default_ttl if ttl is None else ttl
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        lease = Lease(name, new_token(), shared)
        try:
            await self._acquire(lease, ttl, time.monotonic() + wait)
        except BaseException as exc:
            # A grant whose answer was lost (cancelled, timed out mid-call) must not linger until ttl.
            await self._release_quietly(lease, patient=not isinstance(exc, LockStoreUnavailable))
            raise
        renewer = asyncio.ensure_future(self._keep_renewed(lease, ttl))
        try:
            yield lease
        finally:
            renewer.cancel()
            # Waited for briefly, never indefinitely: under uvloop a renewer cancelled right as its
            # sleep ended was seen to stay pending for good, holding the request that owned it.
            done, _ = await asyncio.wait({renewer}, timeout=1.0)
            if not done:
                log.warning("lock %s: its renewal did not stop within 1 s of the release", name)
            await self._release_quietly(lease)

    async def _release_quietly(self, lease: Lease, patient: bool = True) -> None:
        try:
            # Shielded: a cancelled holder still gives the lock back instead of leaving it to expire.
            await asyncio.shield(self._release(lease, patient))
        except LockStoreUnavailable as exc:
            log.warning("could not release lock %s (it expires by itself): %s", lease.name, exc)

    async def _keep_renewed(self, lease: Lease, ttl: float) -> None:
        interval = ttl / 3
        retry = min(interval, 0.05)
        next_at = time.monotonic() + interval
        while not lease.lost.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            started = time.monotonic()
            if lease.valid_until is not None and started >= lease.valid_until:
                lease.mark_lost("the lease expired before it could be renewed")
                return
            try:
                if not await self._renew(lease, ttl):
                    lease.mark_lost("the lock expired and is no longer ours")
                    return
            except LockStoreUnavailable as exc:
                # Keep trying while the lease is still valid; lost once it may have expired.
                log.warning("renewing lock %s failed, retrying: %s", lease.name, exc)
                next_at = time.monotonic() + retry
                continue
            except Exception as exc:  # a bug or an unexpected reply: never believe we still hold it
                lease.mark_lost(f"renewal failed: {exc!r}")
                return
            lease.valid_until = started + ttl
            next_at = started + interval


@contextlib.asynccontextmanager
async def hold_all(store: LockStore, names: Iterable[str], *, wait: float = DEFAULT_WAIT,
                   shared: bool = False) -> AsyncIterator[list[Lease]]:
    """Hold every lock of `names` (duplicates once) for the block, taken one after another in sorted
    order and released in reverse. Everyone who holds several locks of one kind at once takes them in
    this order (a manifest PUT its blobs' shared, the GC sweeper a batch of them exclusive), so no two
    holders can each wait for a lock the other has: the order rules out deadlock, also with the
    stores' preference for a waiting exclusive holder (docs/gc.md)."""
    async with contextlib.AsyncExitStack() as stack:
        leases = [await stack.enter_async_context(store.hold(name, wait=wait, shared=shared))
                  for name in sorted(set(names))]
        yield leases


def check_all(leases: Iterable[Lease]) -> None:
    """`Lease.check()` of each: raise `LockLost` when any of them was lost."""
    for lease in leases:
        lease.check()
