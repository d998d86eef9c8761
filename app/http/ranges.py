"""RFC 9110 single byte ranges, and sending a blob in bounded sendfile segments."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import IO, Any

from aiohttp import web

from app import errors
from app.digits import decimal_at_most
from app.http import admission, sendfile
from app.http.transfers import TransferGuard, TransferTooSlow, reset
from app.storage import Body

log = logging.getLogger("registry")
# Without sendfile (TLS), segments small enough that a slow but honest reader drains one well within
# the inactivity timeout.
COPY_SEGMENT = 256 * 1024
# `[0-9]`, not `\d`: `\d` matches every Unicode digit, which are no digits in an HTTP header.
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
# Positions are compared as numbers up to here: beyond 2**63 no blob reaches, so larger ones are equal.
_HUGE = 2**63 - 1


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a satisfiable single range; None to serve the whole blob.

    Unparsable and multi-range headers are ignored (200); an unsatisfiable range is 416.
    """
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix form: the last N bytes
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(size - suffix, 0), size - 1
    start = _position(first)
    end = _position(last) if last else size - 1
    if last and end < start:
        return None  # syntactically invalid: ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size - 1)


def _position(digits: str) -> int:
    """A byte position of any length (the regex admits ASCII digits only), without converting more
    than 19 digits: a 5000-digit first-pos is simply past the end (416), a last-pos clamped."""
    value = decimal_at_most(digits, _HUGE)
    assert value is not None  # the regex matched one or more ASCII digits
    return value


def _unsatisfiable(size: int) -> errors.RegistryError:
    return errors.RegistryError("requested range not satisfiable", status=416,
                                headers={"Content-Range": f"bytes */{size}"})


async def _copy(response: web.StreamResponse, file: IO[Any], offset: int, length: int,
                write: Writer) -> None:
    """Read and write in segments, reading the next segment while the current one drains."""
    loop = asyncio.get_running_loop()

    def read(at: int, count: int) -> bytes:  # one read outstanding at a time: seek+read is safe
        file.seek(at)
        return bytes(file.read(count))

    sent = 0
    pending = loop.run_in_executor(None, read, offset, min(COPY_SEGMENT, length))
    while sent < length:
        chunk = await pending
        if not chunk:
            raise ConnectionResetError("the blob file ended early")
        sent += len(chunk)
        if sent < length:
            pending = loop.run_in_executor(None, read, offset + sent, min(COPY_SEGMENT, length - sent))
        await write(chunk)


Writer = Callable[[bytes], Awaitable[None]]


def guarded_writer(request: web.BaseRequest, response: web.StreamResponse, guard: TransferGuard) -> Writer:
    """`response.write` under the transfer guard: a reader that stalls or crawls is cut."""
    def buffered() -> int:
        transport = request.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def write(chunk: bytes) -> None:
        await guard.drain(response.write(chunk), buffered)

    return write


async def send_body(request: web.Request, response: web.StreamResponse, body: Body, offset: int,
                    length: int) -> web.StreamResponse:
    """Stream `length` bytes of `body` from `offset`: sendfile in segments when the backend has files."""
    path = body.local_path()
    key = request.path
    loop = asyncio.get_running_loop()
    admission.begin_transfer(request)  # sending is waiting on the client: the slot goes back
    guard = TransferGuard(admission.limits_of(request))
    write = guarded_writer(request, response, guard)
    file: IO[Any] | None = None
    if path is not None:
        try:
            file = await loop.run_in_executor(None, open, path, "rb")
        except FileNotFoundError:
            raise errors.BlobUnknown("blob data is missing from storage") from None
    response.content_length = length
    try:
        await response.prepare(request)
        if file is not None:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            if sendfile.supported() and transport.get_extra_info("sslcontext") is None:
                while transport.get_write_buffer_size():  # the headers go first
                    await response.drain()
                    await asyncio.sleep(0.001)
                await sendfile.send(transport, file.fileno(), offset, length, guard)
            else:
                await _copy(response, file, offset, length, write)
        else:
            async for chunk in body.read(offset, length):
                await write(chunk)
        await response.write_eof()
    except TransferTooSlow as exc:
        log.info("cut a slow reader of %s: %s", key, exc)
        reset(request.transport)
    except ConnectionError as exc:
        client_left = isinstance(exc, sendfile.ClientGone)
        if not client_left and request.transport is not None and not request.transport.is_closing():
            raise  # not the client: e.g. the storage backend's connection failed
        # The client went away in the middle of the body: nothing to answer, nothing to log as an error.
        log.info("client went away while reading %s: %s", key, exc)
    finally:
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
    return response
