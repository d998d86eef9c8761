"""Give memory back to the OS after bursts (glibc only).

Uploads and downloads use ~1 MiB buffers. Once glibc has freed one such buffer it raises its mmap
threshold and serves later ones from its heaps, where freed space in the middle is kept, not returned:
after 8 concurrent 100 MiB pushes a server can sit at 78 MiB instead of its 54 MiB idle for good.
`malloc_trim(0)` returns those free pages. A cheap periodic check (one read of /proc/self/statm) calls
it in a worker thread when the resident size is 16 MiB above the lowest seen and has moved since the
last trim.
Elsewhere (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable

log = logging.getLogger("registry")

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident set size, or None where /proc is not available."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def glibc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None when the C library is not glibc."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (AttributeError, ValueError, OSError):
        return None
    import ctypes  # only on glibc systems, and only once a trim is due

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    trim = libc.malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return functools.partial(trim, 0)


class HeapTrimmer:
    """Trims the heap when the RSS is more than `slack` above the lowest seen and has moved since the
    last trim (so a server that holds memory for real work is not trimmed again and again for nothing)."""

    def __init__(self, slack: int = 16 * 1024 * 1024) -> None:
        self.slack = slack
        self.floor = resident_bytes()
        self.last: int | None = None  # the RSS right after the last trim

    def due(self) -> bool:
        now = resident_bytes()
        if now is None or self.floor is None:
            return False
        self.floor = min(self.floor, now)
        moved = self.last is None or abs(now - self.last) > 1024 * 1024
        return now - self.floor > self.slack and moved

    def trim(self) -> int:
        """Trim now (blocking: call it from a worker thread); returns the bytes given back."""
        trim = glibc_trim()
        before = resident_bytes() or 0
        if trim is not None:
            trim()
        after = resident_bytes() or 0
        self.last = after
        return max(0, before - after)

    async def run(self, interval: float = 5.0) -> None:
        """Check every `interval` seconds until cancelled."""
        if resident_bytes() is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            if self.due():
                released = await loop.run_in_executor(None, self.trim)
                if released:
                    log.debug("returned %d KiB of free heap to the OS", released // 1024)


@contextlib.asynccontextmanager
async def trimming(interval: float = 5.0) -> AsyncIterator[asyncio.Task[None]]:
    """Run a HeapTrimmer in the background for the duration of the block."""
    task = asyncio.create_task(HeapTrimmer().run(interval))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
