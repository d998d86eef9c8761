"""Asking a running server to stop from any thread, and hearing when it listens and when it is done.

`serve()` owns its event loop, and the things that decide to stop it do not run on that loop: a POSIX
signal handler does (through `loop.add_signal_handler`), but a Windows console handler, the Windows
service control handler (called on the service manager's thread) and a test driving a server in a
thread do not. They all call `request_stop()`, which hands the stop to the loop with
`call_soon_threadsafe`; the server then stops accepting, drains in-flight requests and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class ServerControl:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._requested = False
        self.listening = threading.Event()  # the listener is bound (a service reports RUNNING then)
        self.stopped = threading.Event()  # drained, closed; serve() is returning
        self.port: int | None = None  # the bound port, once listening

    def request_stop(self) -> None:
        """Stop the server (safe from any thread, any number of times, also before it started)."""
        with self._lock:
            self._requested = True
            loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: it has stopped anyway
                loop.call_soon_threadsafe(stop.set)

    def attach(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """Called by serve() on its loop: the event that a stop request sets (already set if one came)."""
        stop = asyncio.Event()
        with self._lock:
            self._loop, self._stop = loop, stop
            requested = self._requested
        if requested:
            stop.set()
        return stop

    def detach(self) -> None:
        with self._lock:
            self._loop = self._stop = None
        self.stopped.set()
