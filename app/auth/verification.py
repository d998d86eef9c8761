"""The Argon2 verification threads, shared fairly so that a flood of wrong passwords cannot starve
the logins of everyone else.

Argon2id costs ~0.1-0.25 s and 64 MiB per verification, so at most `WORKERS` run at once (the memory
bound) and the rest wait in *lanes*: one lane per known username, one shared by every unknown
username. Lanes are served round-robin, so a login of bob waits behind at most one verification of
each other busy lane, however many guesses for alice are queued. Within a lane one client address may
have at most `ADDRESS_DEPTH` verifications waiting, and a lane at most `LANE_DEPTH`; beyond that a
request is answered 429 at once (a flood from one address fills its own share, not the lane). Work from
addresses that sent several wrong passwords lately (app/auth/lockout.py) waits behind everyone else's,
except every `SUSPECT_TURN`-th turn, so a flood only ever gets the share nobody else wants.

Used from the event loop only; the work runs in the pool's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from app import errors

WORKERS = 2
LANE_DEPTH = 8
ADDRESS_DEPTH = 2
UNKNOWN_USERS = "?unknown"  # never a username (usernames come from the configuration)
MAX_PENDING = 256  # all lanes together: a backstop, each entry costs a few hundred bytes
SUSPECT_TURN = 4


@dataclass
class _Lane:
    waiting: deque[tuple[asyncio.Future[bool], str, bool, Callable[..., bool], tuple[Any, ...]]] = \
        field(default_factory=deque)
    per_address: Counter[str] = field(default_factory=Counter)


def _too_many(message: str) -> errors.RegistryError:
    return errors.TooManyRequests(message, headers={"Retry-After": "1"})


class VerificationPool:
    def __init__(self, workers: int = WORKERS) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="argon2")
        self._workers = workers
        self._running = 0
        self._pending = 0
        self._lanes: dict[str, _Lane] = {}
        self._turns: deque[str] = deque()  # lanes with waiting work, in round-robin order
        self._since_suspect = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, lane: str, address: str, check: Callable[..., bool], *args: Any,
                  suspect: bool = False) -> bool:
        """`check(*args)` in a worker thread, when this lane's turn comes."""
        self._loop = asyncio.get_running_loop()
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = _Lane()
        if self._pending >= MAX_PENDING or len(queue.waiting) >= LANE_DEPTH:
            raise _too_many("too many password verifications waiting for this user; retry later")
        if queue.per_address[address] >= ADDRESS_DEPTH:
            raise _too_many("too many password verifications waiting from this client; retry later")
        future: asyncio.Future[bool] = self._loop.create_future()
        queue.waiting.append((future, address, suspect, check, args))
        queue.per_address[address] += 1
        self._pending += 1
        if len(queue.waiting) == 1:
            self._turns.append(lane)
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._running < self._workers and self._turns:
            lane = self._next_lane()
            queue = self._lanes[lane]
            future, address, _suspect, check, args = queue.waiting.popleft()
            queue.per_address[address] -= 1
            if not queue.per_address[address]:
                del queue.per_address[address]
            self._pending -= 1
            if queue.waiting:
                self._turns.append(lane)  # back of the line: the other lanes go first
            else:
                del self._lanes[lane]
            if future.done():  # the caller gave up (disconnected, timed out): no work for nobody
                continue
            self._running += 1
            job = self._executor.submit(check, *args)
            job.add_done_callback(functools.partial(self._finished, waiter=future))

    def _next_lane(self) -> str:
        """The next lane in turn, skipping lanes whose next verification is a suspect's while a clean
        one waits (but not more than SUSPECT_TURN - 1 times in a row)."""
        self._since_suspect += 1
        if self._since_suspect < SUSPECT_TURN:
            for _ in range(len(self._turns)):
                if not self._lanes[self._turns[0]].waiting[0][2]:
                    return self._turns.popleft()
                self._turns.rotate(-1)
        self._since_suspect = 0
        return self._turns.popleft()

    def _finished(self, job: Future[bool], waiter: asyncio.Future[bool]) -> None:
        """On the worker thread: hand the outcome to the loop, where the next turn is dispatched."""
        assert self._loop is not None

        def settle() -> None:
            self._running -= 1
            if not waiter.done():
                error = job.exception()
                if error is not None:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(job.result())
            self._dispatch()

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(settle)


_pool: VerificationPool | None = None


def verification_pool() -> VerificationPool:
    global _pool
    if _pool is None:
        _pool = VerificationPool()
    return _pool
