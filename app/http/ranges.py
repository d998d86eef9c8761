"""RFC 9110 single byte ranges, and sending a blob in bounded sendfile segments."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import IO, Any

from aiohttp import web

from app import errors
from app.storage import Storage

log = logging.getLogger("registry")
# One sendfile call of a large file stalls the loop; ~4 MiB segments keep the speed and the loop free.
SENDFILE_SEGMENT = 4 * 1024 * 1024
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


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
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # syntactically invalid: ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size - 1)


def _unsatisfiable(size: int) -> errors.RegistryError:
    return errors.RegistryError("requested range not satisfiable", status=416,
                                headers={"Content-Range": f"bytes */{size}"})


async def send_object(request: web.Request, response: web.StreamResponse, storage: Storage, key: str,
                      offset: int, length: int) -> web.StreamResponse:
    """Stream `length` bytes of `key` from `offset`: sendfile in segments when the backend has files."""
    path = storage.local_path(key)
    loop = asyncio.get_running_loop()
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
            sent = 0
            while sent < length:
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("client went away")
                count = min(SENDFILE_SEGMENT, length - sent)
                try:
                    await loop.sendfile(transport, file, offset + sent, count)
                except NotImplementedError:
                    file.seek(offset + sent)
                    chunk = await loop.run_in_executor(None, file.read, count)
                    await response.write(chunk)
                sent += count
        else:
            async for chunk in storage.read(key, offset, length):
                await response.write(chunk)
        await response.write_eof()
    except ConnectionError as exc:
        if request.transport is not None and not request.transport.is_closing():
            raise  # not the client: e.g. the storage backend's connection failed
        # The client went away in the middle of the body: nothing to answer, nothing to log as an error.
        log.info("client went away while reading %s: %s", key, exc)
    finally:
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
    return response
