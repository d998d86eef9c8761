"""The in-process lock store: the LockActor (app/actors/locks.py) behind the `LockStore` protocol.

Why the actor and not an asyncio-native lock table: the design card gives locks to a long-lived
actor, and the actor's grants are thread-safe `concurrent.futures` futures, so holders on any thread
or event loop (the server's loop, a Windows service host thread, `registry scrub`) share one table.
The price is one actor round trip per hold (an ask through the bridge) plus one tell to release:
measured 40-60 µs per uncontended hold/release on 2 busy cores (`python -m tests.bench.locks`),
against ~1 µs for an `asyncio.Lock` per name — negligible next to the storage write every lock
guards (a 1 MiB blob push is ~27 ms at p50, docs/performance.md).

Nothing expires: a process that dies holds nothing, so `ttl` is accepted and ignored, and a lease is
never lost while the store runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from app.actors.bridge import ActorHandle
from app.actors.locks import LockActor
from app.locks.base import DEFAULT_WAIT, Lease, LockTimeout, new_token


class MemoryLockStore:
    """Locks of this process only. Given no actor, it starts a LockActor of its own and stops it on
    `close()`; given one (the supervisor's), it shares that actor's table and leaves it running."""

    def __init__(self, actor: ActorHandle | None = None) -> None:
        self._owns_actor = actor is None
        self.actor = actor if actor is not None else ActorHandle(LockActor.start())

    @contextlib.asynccontextmanager
    async def hold(self, name: str, *, ttl: float | None = None, wait: float = DEFAULT_WAIT,
                   shared: bool = False) -> AsyncIterator[Lease]:
        lease = Lease(name, new_token(), shared)
        try:
            waiter = await self.actor.call("acquire", name, lease.token, shared)
            if waiter is not None:
                try:
                    await asyncio.wait_for(asyncio.wrap_future(waiter), wait)
                except TimeoutError:
                    raise LockTimeout(f"lock {name} not acquired within {wait:g}s") from None
            yield lease
        finally:
            # Releases the grant, or withdraws a waiter that timed out or was cancelled (also when
            # the grant raced with that).
            self.actor.tell("release", name, lease.token)

    async def close(self) -> None:
        if self._owns_actor:
            await asyncio.get_running_loop().run_in_executor(None, self.actor.stop)
