"""Body transfers that stall or crawl are cut, so they free their connection, buffers and file handles.

A transfer (a request body being received, a response body being sent) is cut when it moves no byte
for `body_inactivity_timeout`, or moves fewer than `min_transfer_rate` bytes per second over a
`transfer_rate_window` (a slowloris sending one byte a second never reaches the end of any window in
good standing). The guard wraps each wait on the peer: it never waits longer than the time left until
it must look again, then judges the transfer and waits once more if it is still in good standing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.config import LimitsConfig

T = TypeVar("T")


class TransferTooSlow(Exception):
    """The peer stalled or crawled below the minimum rate: the transfer is cut."""


class TransferGuard:
    def __init__(self, limits: LimitsConfig) -> None:
        self.inactivity = limits.body_inactivity_timeout
        self.min_rate = limits.min_transfer_rate
        self.window = limits.transfer_rate_window
        now = time.monotonic()
        self._window_start = now
        self._window_bytes = 0
        self._last_progress = now

    def moved(self, count: int) -> None:
        """`count` bytes went through; raises TransferTooSlow when the window just closed too slow."""
        if count:
            self._window_bytes += count
            self._last_progress = time.monotonic()
        self.check()

    def check(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= self.inactivity:
            raise TransferTooSlow(f"no data moved for {self.inactivity:.0f}s")
        elapsed = now - self._window_start
        if self.min_rate and elapsed >= self.window:
            rate = self._window_bytes / elapsed
            if rate < self.min_rate:
                raise TransferTooSlow(f"{rate:.0f} bytes/s over the last {elapsed:.0f}s, below the minimum "
                                      f"of {self.min_rate} bytes/s")
            self._window_start, self._window_bytes = now, 0

    def _next_look(self) -> float:
        now = time.monotonic()
        until = self._last_progress + self.inactivity
        if self.min_rate:
            until = min(until, self._window_start + self.window)
        return max(until - now, 0.001) if math.isfinite(until) else 3600.0

    async def wait(self, operation: Callable[[], Awaitable[T]]) -> T:
        """The result of `operation()` (a wait on the peer), started again after each look that finds
        the transfer still in good standing; TransferTooSlow once it is not."""
        while True:
            try:
                return await asyncio.wait_for(operation(), self._next_look())
            except TimeoutError:
                self.check()

    async def drain(self, write: Awaitable[None], buffered: Callable[[], int]) -> None:
        """Wait for a response write that completes as the peer reads. Progress is the shrinking of
        `buffered()` (the transport's write buffer) between looks: a write is never started twice."""
        # Time spent before this write (waiting for the data to send) is not the reader's doing.
        self._last_progress = max(self._last_progress, time.monotonic())
        task = asyncio.ensure_future(write)
        try:
            last = buffered()
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._next_look())
                now = buffered()
                if now < last:
                    self._window_bytes += last - now
                    self._last_progress = time.monotonic()
                last = now
                if task in done:
                    task.result()
                    return
                self.check()
        except BaseException:
            task.cancel()
            raise


def reset(transport: asyncio.Transport | None) -> None:
    """Cut a connection at once: a reset, not a close, so the kernel drops what it still buffers for
    the peer (megabytes of a blob a stalled reader would otherwise keep in the server's memory)."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
