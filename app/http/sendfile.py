"""Zero-copy blob bodies: `os.sendfile` one segment at a time in a worker thread, never waiting there.

uvloop implements no `loop.sendfile` and refuses to watch a socket that a transport owns, so the
kernel copy runs in a thread. A worker only ever copies what the socket accepts right now (the socket
is non-blocking) and returns; when the client's receive window is full, the wait for writability
happens in one watcher thread that multiplexes every waiting socket (epoll/kqueue through
`selectors`), not in the pool. So a stalled reader costs one registered descriptor, never a pool
thread: twenty clients that request a blob and never read cannot make everyone else's downloads wait.

A segment is bounded to a few MiB so each job is short and the loop stays free, as with asyncio's own
sendfile. The transfer guard (app/http/transfers.py) cuts a reader that stalls or crawls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import selectors
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from app.http import traffic
from app.http.transfers import TransferGuard, reset

SEGMENT = 4 * 1024 * 1024
_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sendfile")


class ClientGone(ConnectionResetError):
    """The client's socket failed under sendfile: the client left (the loop may not know yet)."""


def supported() -> bool:
    return hasattr(os, "sendfile") and hasattr(select, "poll")


def _send_available(socket_fd: int, file_fd: int, offset: int, count: int) -> int:
    """Copy up to `count` bytes, as many as the socket takes without blocking: the number sent, 0 when
    the socket is full now, -1 at the end of the file. ClientGone when the client went away."""
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(socket_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            return sent
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ClientGone(str(exc)) from exc
        if n == 0:
            return sent if sent else -1
        sent += n
    return sent


class _Watcher:
    """One thread waiting for many sockets to become writable; each waiter gets an asyncio future."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._requests: deque[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sendfile-watcher", daemon=True)
        self._thread.start()

    def writable(self, fd: int) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._requests.append((fd, loop, future))
        os.write(self._wake_write, b"x")
        return future

    def _run(self) -> None:
        waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}
        while True:
            for key, _ in self._selector.select(timeout=1.0):
                if key.fd == self._wake_read:
                    try:
                        while os.read(self._wake_read, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                self._selector.unregister(key.fd)
                loop, future = waiting.pop(key.fd)
                _resolve(loop, future)
            with self._lock:
                requests, self._requests = self._requests, deque()
            for fd, loop, future in requests:
                if fd in waiting:  # a previous wait on this descriptor was cancelled: replace it
                    self._selector.unregister(fd)
                    _resolve(*waiting.pop(fd))
                try:
                    self._selector.register(fd, selectors.EVENT_WRITE)
                except (OSError, ValueError):  # closed meanwhile: let the sender find out
                    _resolve(loop, future)
                    continue
                waiting[fd] = (loop, future)
            for fd, (_loop, future) in list(waiting.items()):
                if future.done():  # the sender gave up (cancelled, timed out)
                    self._selector.unregister(fd)
                    del waiting[fd]


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    def resolve() -> None:
        if not future.done():
            future.set_result(None)

    with contextlib.suppress(RuntimeError):  # the loop is closed
        loop.call_soon_threadsafe(resolve)


_watcher: _Watcher | None = None


def _writability() -> _Watcher:
    global _watcher
    if _watcher is None:
        _watcher = _Watcher()
    return _watcher


async def send(transport: Any, file_fd: int, offset: int, count: int, guard: TransferGuard) -> None:
    """Send `count` bytes of the file from `offset` on the transport's socket, then return."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise NotImplementedError("no socket (TLS or a test transport)")
    # The worker sends from and to its own duplicates: if the loop closes the connection (or the caller
    # the file) meanwhile, the numbers may be reused by another connection or file, which must never
    # receive or supply these bytes.
    socket_fd = os.dup(sock.fileno())
    file_fd = os.dup(file_fd)

    def close_duplicates(_: object = None) -> None:
        os.close(socket_fd)
        os.close(file_fd)

    loop = asyncio.get_running_loop()
    watcher = _writability()  # started with the first body sent, not with the first stalled client
    done = 0
    job: Future[int] | None = None  # the thread's own future: done only when the worker returned
    try:
        while done < count:
            if transport.is_closing():
                raise ClientGone("client went away")
            segment = min(SEGMENT, count - done)
            job = _executor.submit(_send_available, socket_fd, file_fd, offset + done, segment)
            try:
                sent = await asyncio.wrap_future(job, loop=loop)
                if sent < 0:
                    raise ConnectionResetError("the blob file ended early")
                traffic.sent(sent)  # this body bypasses aiohttp's writer, which counts the others
                guard.moved(sent)
                if sent == 0:  # the client's window is full: wait for it without holding a thread
                    await guard.wait(lambda: watcher.writable(socket_fd))
            except BaseException:
                reset(transport)  # never reuse a connection whose body was cut short
                raise
            done += sent
    finally:
        if job is not None and not job.done():
            # Cancelled while a worker still sends its segment: close the duplicate after it returns.
            job.add_done_callback(close_duplicates)
        else:
            close_duplicates()
