"""Sweeper: runs one housekeeping job (upload expiry; the GC later) on the event loop, on a timer.

It owns the job's schedule and the state one run hands to the next (a scan cursor, say). The job is a
coroutine, because storage I/O is async: the actor schedules it on the loop
(`asyncio.run_coroutine_threadsafe`) and hears back through a tell when it ends, so it never blocks on
the loop, and never two runs overlap. Each run returns its state for the next run and the delay
before it. A run that fails is logged and the job tried again after `retry_delay` with the state it
was given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from app.actors.bridge import AsyncActor, tell

log = logging.getLogger("registry.housekeeping")

# (state from the previous run, None the first time) -> (state for the next run, seconds until it)
Job = Callable[[Any], Coroutine[Any, Any, tuple[Any, float]]]


class Sweeper(AsyncActor):
    def __init__(self, name: str, job: Job, loop: asyncio.AbstractEventLoop, first_delay: float,
                 retry_delay: float = 60.0) -> None:
        super().__init__()
        self.name = name
        self._job = job
        self._loop = loop
        self._first_delay = first_delay
        self._retry_delay = retry_delay
        self._state: Any = None
        self._timer: threading.Timer | None = None
        self._running: concurrent.futures.Future[tuple[Any, float]] | None = None

    def on_start(self) -> None:
        self._arm(self._first_delay)

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._running is not None:
            self._running.cancel()  # the task on the loop is cancelled too

    def _arm(self, delay: float) -> None:
        # The timer thread only posts a message: the run itself starts on the actor's thread.
        self._timer = threading.Timer(delay, tell, (self.actor_ref, "run"))
        self._timer.daemon = True
        self._timer.start()

    def run(self) -> None:
        self._timer = None
        try:
            self._running = asyncio.run_coroutine_threadsafe(self._job(self._state), self._loop)
        except RuntimeError:  # the loop is closed: the server is stopping
            return
        self._running.add_done_callback(lambda future: tell(self.actor_ref, "finished", future))

    def finished(self, future: concurrent.futures.Future[tuple[Any, float]]) -> None:
        self._running = None
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.error("%s failed; retrying in %.0f s: %s", self.name, self._retry_delay, error,
                      exc_info=error)
            self._arm(self._retry_delay)
            return
        self._state, delay = future.result()
        self._arm(delay)
