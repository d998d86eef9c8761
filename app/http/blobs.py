"""Blob HEAD/GET (with single ranges) and DELETE (unlink from the namespace)."""

from __future__ import annotations

from aiohttp import web

from app.context import Registry
from app.http.ranges import parse_range, send_body
from app.http.responses import empty, head
from app.http.router import Route


async def get_blob(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.digest is not None
    blobs = registry.blobs_for(route.namespace)
    remote = await blobs.open_remote(route.namespace, route.digest, request.method,
                                     request.headers.get("Range"))
    if remote is not None:  # a pull-through miss: from upstream, or the fetch in flight
        from app.http.remote import send_remote  # only pull-through repositories answer remotely

        return await send_remote(request, remote)
    body = await blobs.body(route.namespace, route.digest)
    if request.method == "GET" and not request.headers.get("Range"):
        url = await body.redirect_url()
        if url is not None:  # the store serves it (S3 `redirect = true`): the client fetches it there
            return empty(307, {"Location": url, "Docker-Content-Digest": str(route.digest)})
    headers = {
        "Docker-Content-Digest": str(route.digest),
        "Accept-Ranges": "bytes",
        "ETag": f'"{route.digest}"',
        "Cache-Control": "max-age=31536000",
    }
    byte_range = parse_range(request.headers.get("Range"), body.size)
    status, offset, length = 200, 0, body.size
    if byte_range is not None:
        start, end = byte_range
        status, offset, length = 206, start, end - start + 1
        headers["Content-Range"] = f"bytes {start}-{end}/{body.size}"
    if request.method == "HEAD":
        return head(status, length, headers, "application/octet-stream")
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = "application/octet-stream"
    return await send_body(request, response, body, offset, length)


async def delete_blob(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.digest is not None
    await registry.blobs_for(route.namespace).unlink(route.namespace, route.digest)
    return empty(202, {"Docker-Content-Digest": str(route.digest)})
