"""Small helpers for answering: JSON bodies, the OCI error envelope, request bodies as streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from app import errors
from app.digits import decimal_at_most
from app.http import admission
from app.http.transfers import TransferGuard, TransferTooSlow, reset
from app.services.uploads import ClientDisconnected

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> web.Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    response = web.Response(body=body, status=status, headers=headers)
    response.content_type = content_type
    return response


def error_response(error: errors.RegistryError) -> web.Response:
    return json_response(error.body(), status=error.status, headers=error.headers)


def empty(status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, headers=headers)


def head(status: int, length: int, headers: dict[str, str], content_type: str) -> web.Response:
    """A HEAD answer: the headers of the GET, with its Content-Length, and no body."""
    return web.Response(status=status, headers={**headers, "Content-Length": str(length),
                                                "Content-Type": content_type})


async def body_stream(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; ClientDisconnected when the client goes away mid-body, or when
    it stalls or crawls below the minimum rate (then the connection is closed: app/http/transfers.py).

    Receiving a body is waiting on the client: the request gives its admission slot back first."""
    admission.begin_transfer(request)
    guard = TransferGuard(admission.limits_of(request))
    expected = request.content_length
    received = 0
    try:
        while True:
            chunk = await guard.wait(request.content.readany)
            if not chunk:
                break
            received += len(chunk)
            guard.moved(len(chunk))
            yield chunk
    except (ConnectionError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError) as exc:
        tail = _still_buffered(request.content)
        if tail:
            yield tail  # it arrived before the client went away: it is kept too
        raise ClientDisconnected(str(exc)) from exc
    except TransferTooSlow as exc:
        reset(request.transport)  # a slow client's connection is not kept for another request
        tail = _still_buffered(request.content)
        if tail:
            yield tail
        raise ClientDisconnected(f"request body cut: {exc}") from exc
    if expected is not None and received < expected:
        raise ClientDisconnected(f"body ended after {received} of {expected} bytes")


def _still_buffered(reader: aiohttp.StreamReader) -> bytes:
    """Bytes aiohttp received but had not handed out when the connection dropped.

    Once the connection is lost, the reader raises before returning what it still buffers (bounded by
    its high-water mark); its non-raising read is private, hence the defensive lookup.
    """
    read_nowait = getattr(reader, "_read_nowait", None)
    chunks: list[bytes] = []
    try:
        while read_nowait is not None and (chunk := read_nowait(-1)):
            chunks.append(bytes(chunk))
    except Exception:  # best effort: what was read so far is still kept
        pass
    return b"".join(chunks)


def has_body(request: web.Request) -> bool:
    return bool(request.content_length) or request.headers.get("Transfer-Encoding", "").lower() == "chunked"


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole (small) body, or 413 as soon as it exceeds `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise errors.SizeInvalid(f"body of {request.content_length} bytes exceeds the limit of {limit}",
                                 status=413)
    chunks = bytearray()
    async for chunk in body_stream(request):
        chunks += chunk
        if len(chunks) > limit:
            raise errors.SizeInvalid(f"body exceeds the limit of {limit} bytes", status=413)
    return bytes(chunks)


def pagination(request: web.Request, default: int | None, maximum: int) -> int | None:
    """`n`: ASCII digits only (`²` is no number); any larger value, however long, is `maximum`."""
    raw = request.query.get("n")
    if raw is None or raw == "":
        return default
    n = decimal_at_most(raw, maximum)
    if n is None:
        raise errors.PaginationInvalid(f"n must be a non-negative integer, not {raw[:50]!r}")
    return n


def next_link(path: str, last: str, n: int) -> str:
    return f'<{path}?n={n}&last={last}>; rel="next"'
