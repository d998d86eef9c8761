"""Zero-copy blob bodies: `os.sendfile` one segment at a time in a worker thread.

uvloop implements no `loop.sendfile` and refuses to watch a socket that a transport owns, so the
kernel copy runs in a thread: each job sends at most one segment and waits for writability with
`poll()` there (the loop only watches the socket for reads, and nothing else writes to the transport
while a body is being sent). Short jobs keep a slow client from pinning a thread, and a segment
bounded to a few MiB keeps the loop free, as with asyncio's own sendfile.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

SEGMENT = 4 * 1024 * 1024
POLL_MS = 1000
_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sendfile")


class ClientGone(ConnectionResetError):
    """The client's socket failed under sendfile: the client left (the loop may not know yet)."""


def supported() -> bool:
    return hasattr(os, "sendfile") and hasattr(select, "poll")


def _send_segment(socket_fd: int, file_fd: int, offset: int, count: int, stalled_after: float,
                  stop: threading.Event) -> int:
    """Send up to `count` bytes; returns how many were sent. Raises TimeoutError when the client
    accepts nothing for `stalled_after` seconds, ClientGone when it went away or `stop` is set."""
    poller = select.poll()
    poller.register(socket_fd, select.POLLOUT)
    sent = 0
    waited = 0.0
    while sent < count:
        try:
            n = os.sendfile(socket_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            n = -1
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ClientGone(str(exc)) from exc
        if n == 0:
            break  # end of file
        if n > 0:
            sent += n
            waited = 0.0
            continue
        if stop.is_set():
            raise ClientGone("the request was cancelled")
        events = poller.poll(POLL_MS)
        if not events:
            waited += POLL_MS / 1000
            if waited >= stalled_after:
                raise TimeoutError(f"client accepted no data for {stalled_after:.0f}s")
        elif any(flags & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, flags in events):
            raise ClientGone("client went away")
    return sent


async def send(transport: Any, file_fd: int, offset: int, count: int, stalled_after: float = 300.0) -> None:
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
    stop = threading.Event()
    done = 0
    job: Future[int] | None = None  # the thread's own future: done only when the worker returned
    try:
        while done < count:
            if transport.is_closing():
                raise ClientGone("client went away")
            segment = min(SEGMENT, count - done)
            job = _executor.submit(_send_segment, socket_fd, file_fd, offset + done, segment, stalled_after,
                                   stop)
            try:
                sent = await asyncio.wrap_future(job, loop=loop)
            except (ClientGone, TimeoutError, asyncio.CancelledError):
                stop.set()  # a worker still waiting on a stalled client gives up within POLL_MS
                transport.abort()  # never reuse a connection whose body was cut short
                raise
            if sent == 0:
                raise ConnectionResetError("the blob file ended early")
            done += sent
    finally:
        if job is not None and not job.done():
            # Cancelled while a worker still sends its segment: close the duplicate after it returns.
            job.add_done_callback(close_duplicates)
        else:
            close_duplicates()
