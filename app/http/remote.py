"""Answering a blob that comes from an upstream or a fetch in flight (app/services/remote.py)."""

from __future__ import annotations

import logging

from aiohttp import web

from app.http import admission
from app.http.ranges import guarded_writer
from app.http.responses import head
from app.http.transfers import TransferGuard, TransferTooSlow, reset
from app.services.remote import BlobStreamAborted, RemoteBlob

log = logging.getLogger("registry")


async def send_remote(request: web.Request, remote: RemoteBlob) -> web.StreamResponse:
    """Stream `remote` to the client; when it cannot be completed, drop the connection mid-body."""
    try:
        if request.method == "HEAD" or remote.body is None:
            return head(remote.status, remote.length or 0, remote.headers, "application/octet-stream")
        response = web.StreamResponse(status=remote.status, headers=remote.headers)
        response.content_type = "application/octet-stream"
        if remote.length is not None:
            response.content_length = remote.length
        admission.begin_transfer(request)
        write = guarded_writer(request, response, TransferGuard(admission.limits_of(request)))
        try:
            await response.prepare(request)
            async for chunk in remote.body:
                await write(chunk)
            await response.write_eof()
        except BlobStreamAborted as exc:
            # Bytes were already sent with a 200: the only honest answer left is a truncated response.
            log.warning("aborting blob response %s: %s", request.path, exc)
            if request.transport is not None:
                request.transport.abort()
        except TransferTooSlow as exc:
            log.info("cut a slow reader of %s: %s", request.path, exc)
            reset(request.transport)
        except ConnectionError as exc:
            log.info("client went away while reading %s: %s", request.path, exc)
        return response
    finally:
        await remote.close()
