"""LockActor: named in-process locks with owner tokens; waiters are granted in arrival order."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future

from app.actors.bridge import ActorHandle, AsyncActor


class LockActor(AsyncActor):
    def __init__(self) -> None:
        super().__init__()
        self._owners: dict[str, str] = {}
        self._waiters: dict[str, deque[tuple[str, Future[bool]]]] = {}

    def acquire(self, name: str, token: str) -> Future[bool] | None:
        """None when granted now; otherwise a future completed when the lock passes to `token`."""
        if name not in self._owners:
            self._owners[name] = token
            return None
        waiter: Future[bool] = Future()
        self._waiters.setdefault(name, deque()).append((token, waiter))
        return waiter

    def release(self, name: str, token: str) -> bool:
        """Only the owner releases; the next live waiter becomes the owner."""
        if self._owners.get(name) != token:
            # A waiter that gave up: forget it so it is never granted.
            queue = self._waiters.get(name)
            if queue:
                self._waiters[name] = deque(w for w in queue if w[0] != token)
            return False
        del self._owners[name]
        queue = self._waiters.get(name)
        while queue:
            next_token, waiter = queue.popleft()
            if waiter.set_running_or_notify_cancel():
                self._owners[name] = next_token
                waiter.set_result(True)
                break
        if queue is not None and not queue:
            del self._waiters[name]
        return True

    def owner(self, name: str) -> str | None:
        return self._owners.get(name)


class Locks:
    """The async face of the LockActor: `async with locks.hold("blob:sha256:…"): ...`."""

    def __init__(self, actor: ActorHandle) -> None:
        self._actor = actor

    @contextlib.asynccontextmanager
    async def hold(self, name: str, wait: float = 60.0) -> AsyncIterator[str]:
        token = uuid.uuid4().hex
        waiter = await self._actor.call("acquire", name, token)
        try:
            if waiter is not None:
                await asyncio.wait_for(asyncio.wrap_future(waiter), wait)
            yield token
        finally:
            # Also undoes a grant that raced with a timeout or cancellation.
            self._actor.tell("release", name, token)
