"""LockActor: named in-process locks with owner tokens, shared or exclusive; waiters are granted in
arrival order (consecutive shared waiters together), so neither mode starves the other."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, field

from app.actors.bridge import ActorHandle, AsyncActor


@dataclass
class _Waiter:
    token: str
    shared: bool
    granted: Future[bool]


@dataclass
class _Lock:
    exclusive: str | None = None
    shared: set[str] = field(default_factory=set)
    queue: deque[_Waiter] = field(default_factory=deque)

    def admits(self, shared: bool) -> bool:
        return self.exclusive is None and (shared or not self.shared)

    def idle(self) -> bool:
        return self.exclusive is None and not self.shared and not self.queue


class LockActor(AsyncActor):
    def __init__(self) -> None:
        super().__init__()
        self._locks: dict[str, _Lock] = {}

    def acquire(self, name: str, token: str, shared: bool = False) -> Future[bool] | None:
        """None when granted now; otherwise a future completed when the lock passes to `token`.

        Granted now only when nobody waits before it: a shared request never overtakes a waiting
        exclusive one (so a stream of shared holders cannot starve it)."""
        lock = self._locks.setdefault(name, _Lock())
        if not lock.queue and lock.admits(shared):
            self._grant(lock, token, shared)
            return None
        waiter: Future[bool] = Future()
        lock.queue.append(_Waiter(token, shared, waiter))
        return waiter

    def release(self, name: str, token: str) -> bool:
        """Only the owner releases; the next live waiters become owners. A waiter that gave up is
        forgotten so that it is never granted (and those behind it move up)."""
        lock = self._locks.get(name)
        if lock is None:
            return False
        released = True
        if lock.exclusive == token:
            lock.exclusive = None
        elif token in lock.shared:
            lock.shared.discard(token)
        else:
            released = False
            lock.queue = deque(w for w in lock.queue if w.token != token)
        self._pass_on(name, lock)
        return released

    def owner(self, name: str) -> str | None:
        """The exclusive owner's token (None when free or held shared)."""
        lock = self._locks.get(name)
        return lock.exclusive if lock is not None else None

    def holders(self, name: str) -> list[str]:
        """Every current owner's token: the exclusive one, or the shared ones."""
        lock = self._locks.get(name)
        if lock is None:
            return []
        return [lock.exclusive] if lock.exclusive is not None else sorted(lock.shared)

    @staticmethod
    def _grant(lock: _Lock, token: str, shared: bool) -> None:
        if shared:
            lock.shared.add(token)
        else:
            lock.exclusive = token

    def _pass_on(self, name: str, lock: _Lock) -> None:
        queue = lock.queue
        while queue:
            head = queue[0]
            if head.granted.cancelled():  # gave up; its release message may still be on the way
                queue.popleft()
                continue
            if not lock.admits(head.shared):
                break
            queue.popleft()
            if head.granted.set_running_or_notify_cancel():
                self._grant(lock, head.token, head.shared)
                head.granted.set_result(True)
        if lock.idle():
            del self._locks[name]


class Locks:
    """The async face of the LockActor: `async with locks.hold("blob:sha256:…"): ...`."""

    def __init__(self, actor: ActorHandle) -> None:
        self._actor = actor

    @contextlib.asynccontextmanager
    async def hold(self, name: str, wait: float = 60.0, shared: bool = False) -> AsyncIterator[str]:
        token = uuid.uuid4().hex
        try:
            waiter = await self._actor.call("acquire", name, token, shared)
            if waiter is not None:
                await asyncio.wait_for(asyncio.wrap_future(waiter), wait)
            yield token
        finally:
            # Also undoes a grant that raced with a timeout or cancellation.
            self._actor.tell("release", name, token)
