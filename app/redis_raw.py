"""A minimal pipelined Redis connection for the one command on every request's path: the MGET of the
index versions (app/coherence.py).

redis-py costs several coroutine layers, a connection pool and a lock per command, and one command
waits for the previous one's reply. Here a read joins the MGET that is written at the end of the
current loop turn; several MGETs may be in flight on the one connection at once (Redis answers them
in order). A read therefore never waits for an MGET that was sent before it was asked for, and it
never shares one: the guarantee of `VersionReader` holds by construction.

Only what the version reads need: RESP2 replies, `redis://` and `rediss://` URLs with an optional
user, password and database. Other URLs keep the redis-py client (`open_version_reads`). A reply
that does not come within `timeout` seconds, or a lost connection, fails every read in flight with
`ConnectionError`; the next read connects again.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote, urlsplit

Reply = Any  # bytes | int | None | list[Reply] | RedisReplyError
Batch = tuple[list[str], list["asyncio.Future[str | None]"]]


class RedisReplyError(Exception):
    """Redis answered an error (`-ERR ...`)."""


def supports(url: str) -> bool:
    return urlsplit(url).scheme in ("redis", "rediss")


def encode(*args: str | bytes) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def parse(buffer: bytes | bytearray, position: int) -> tuple[Reply, int] | None:
    """One reply from `buffer` at `position` and where the next begins; None while incomplete."""
    end = buffer.find(b"\r\n", position)
    if end < 0:
        return None
    kind, line = buffer[position:position + 1], buffer[position + 1:end]
    after = end + 2
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, after
        if len(buffer) < after + length + 2:
            return None
        return bytes(buffer[after:after + length]), after + length + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items: list[Reply] = []
        for _ in range(count):
            parsed = parse(buffer, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    if kind == b":":
        return int(line), after
    if kind == b"+":
        return bytes(line), after
    if kind == b"-":
        return RedisReplyError(bytes(line).decode(errors="replace")), after
    raise ConnectionError(f"not a Redis reply: {bytes(buffer[position:end + 2])[:40]!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, on_reply: Callable[[_Protocol, Reply], None],
                 on_lost: Callable[[_Protocol, Exception], None]) -> None:
        self._buffer = bytearray()
        self._on_reply = on_reply
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        position = 0
        try:
            while position < len(buffer):
                parsed = parse(buffer, position)
                if parsed is None:
                    break
                reply, position = parsed
                self._on_reply(self, reply)
        except (ValueError, ConnectionError) as exc:
            self._on_lost(self, ConnectionError(f"bad reply from Redis: {exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        del buffer[:position]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(self, ConnectionError(f"connection to Redis lost: {exc or 'closed by Redis'}"))


class PipelinedReader:
    """`read(key)`: the key's value as text (None when absent), from an MGET written after the call."""

    def __init__(self, url: str, timeout: float = 2.0,
                 failure: Callable[[Exception], Exception] = lambda exc: exc) -> None:
        parts = urlsplit(url)
        self._failure = failure  # what the reads of a batch raise when it fails (made once per batch)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 6379
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._setup: list[bytes] = []
        password = unquote(parts.password) if parts.password else None
        if password is not None:
            user = unquote(parts.username) if parts.username else None
            self._setup.append(encode("AUTH", user, password) if user else encode("AUTH", password))
        database = parts.path.strip("/")
        if database and database != "0":
            self._setup.append(encode("SELECT", str(int(database))))
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._batch: Batch | None = None  # the reads of this loop turn
        self._unsent: list[Batch] = []  # batches waiting for the connection
        self._in_flight: deque[tuple[float, Batch | None]] = deque()  # None: a setup command's reply
        self._timer: asyncio.TimerHandle | None = None

    def read(self, key: str) -> asyncio.Future[str | None]:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        batch = self._batch
        if batch is None:
            batch = self._batch = ([], [])
            loop.call_soon(self._flush)
        batch[0].append(key)
        batch[1].append(future)
        return future

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        protocol = self._protocol
        if protocol is None or protocol.transport is None or protocol.transport.is_closing():
            self._unsent.append(batch)
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return
        self._send(protocol.transport, batch)

    def _send(self, transport: asyncio.Transport, batch: Batch) -> None:
        transport.write(encode("MGET", *batch[0]))
        self._in_flight.append((time.monotonic(), batch))
        if self._timer is None:
            assert self._loop is not None
            self._timer = self._loop.call_later(self._timeout, self._check_timeout)

    async def _connect(self) -> None:
        assert self._loop is not None
        try:
            _, protocol = await asyncio.wait_for(self._loop.create_connection(
                lambda: _Protocol(self._on_reply, self._on_lost), self._host, self._port,
                ssl=self._ssl), self._timeout)
        except Exception as exc:  # whatever it is, the waiting reads hear it
            self._connecting = None
            unsent, self._unsent = self._unsent, []
            failure = self._failure(ConnectionError(
                f"cannot connect to Redis at {self._host}:{self._port}: {type(exc).__name__}: {exc}"))
            for _, futures in unsent:
                _fail(futures, failure)
            return
        self._connecting = None
        if protocol.transport is None or protocol.transport.is_closing():
            self._unsent, unsent = [], self._unsent
            for _, futures in unsent:
                _fail(futures, self._failure(ConnectionError("Redis closed the connection at once")))
            return
        self._protocol = protocol
        for command in self._setup:  # pipelined ahead of the reads; a refusal fails them all
            protocol.transport.write(command)
            self._in_flight.append((time.monotonic(), None))
        unsent, self._unsent = self._unsent, []
        for batch in unsent:
            self._send(protocol.transport, batch)

    def _on_reply(self, protocol: _Protocol, reply: Reply) -> None:
        if protocol is not self._protocol:  # a connection given up already
            return
        if not self._in_flight:
            self._abort(ConnectionError("a Redis reply nobody asked for"))
            return
        _, batch = self._in_flight.popleft()
        if batch is None:
            if isinstance(reply, RedisReplyError):
                self._abort(ConnectionError(f"Redis refused the connection's setup: {reply}"))
            return
        keys, futures = batch
        if isinstance(reply, RedisReplyError) or not isinstance(reply, list) or len(reply) != len(keys):
            _fail(futures, self._failure(ConnectionError(f"unexpected MGET reply from Redis: {reply!r:.80}")))
            return
        for future, value in zip(futures, reply, strict=True):
            if not future.done():
                future.set_result(value.decode() if isinstance(value, bytes) else None)

    def _on_lost(self, protocol: _Protocol, failure: Exception) -> None:
        if protocol is self._protocol:
            self._lose(failure)

    def _lose(self, failure: Exception) -> None:
        """The current connection is gone: every read in flight on it fails."""
        self._protocol = None
        in_flight, self._in_flight = self._in_flight, deque()
        if any(batch is not None for _, batch in in_flight):
            failure = self._failure(failure)
        for _, batch in in_flight:
            if batch is not None:
                _fail(batch[1], failure)

    def _abort(self, failure: Exception) -> None:
        protocol = self._protocol
        self._lose(failure)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._in_flight:
            return
        waited = time.monotonic() - self._in_flight[0][0]
        if waited >= self._timeout:
            self._abort(TimeoutError(f"Redis did not answer within {self._timeout:g}s"))
            return
        assert self._loop is not None
        self._timer = self._loop.call_later(self._timeout - waited, self._check_timeout)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connecting is not None:
            self._connecting.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


def _fail(futures: list[asyncio.Future[str | None]], failure: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(failure)
