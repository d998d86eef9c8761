"""A loopback TCP proxy in front of a server (moto): added latency, and an outage that can be switched
on and off while the server behind it keeps its data.

The proxy runs its own event loop in a thread. Latency delays every piece of data the client sends by
`latency` seconds (a request arrives that much later; streams are delayed, not slowed down). Down, it
resets every open connection and every new one, as a store that went away; up again, it forwards as
before.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Future


class TcpProxy:
    def __init__(self, target_port: int, latency: float = 0.0) -> None:
        self.target_port = target_port
        self.latency = latency
        self.port = 0
        self.up = True
        self.connections = 0  # accepted and forwarded
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="tcp-proxy")
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coroutine: object) -> object:
        future: Future[object] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        return future.result(30)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def go_down(self) -> None:
        """Reset every open connection; refuse new ones until `go_up`."""
        self.up = False
        self._call(self._reset_all())

    def go_up(self) -> None:
        self.up = True

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed():  # its self-pipe sockets too (an unclosed loop warns at GC)
            self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()
        # Every connection's tasks end here, on a running loop: left pending, they were destroyed when
        # the closed loop was collected, and pytest blamed whichever test was running then.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _reset_all(self) -> None:
        for writer in list(self._open):
            _reset(writer)
        self._open.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if not self.up:
            _reset(client_writer)
            return
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(client_writer)
            return
        self.connections += 1
        self._open.update((client_writer, server_writer))
        try:
            await asyncio.gather(self._pump(client_reader, server_writer, self.latency),
                                 self._pump(server_reader, client_writer, 0.0))
        finally:
            for writer in (client_writer, server_writer):
                self._open.discard(writer)
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
        if latency <= 0:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()
            return
        # Each piece is forwarded `latency` after it arrived, in order: delayed, not throttled.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(forward())
        try:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await reader.read(65536):
                    queue.put_nowait((time.monotonic() + latency, data))
            queue.put_nowait((time.monotonic() + latency, b""))
            with contextlib.suppress(OSError):
                await sender
        finally:
            sender.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST (SO_LINGER 0): the peer sees the connection reset, not a clean end."""
    import socket
    import struct

    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
