"""Blob uploads: start (with monolithic and mount forms), status, PATCH, complete, cancel."""

from __future__ import annotations

from aiohttp import web

from app import errors
from app.context import Registry
from app.grammar import Digest, validate_name
from app.http import access
from app.http.responses import body_stream, empty, has_body
from app.http.router import Route
from app.services.uploads import ContentRange, range_header


def _session_headers(namespace: str, upload_id: str, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{namespace}/blobs/uploads/{upload_id}",
        "Range": range_header(size),
        "Docker-Upload-UUID": upload_id,
    }


def _blob_created(namespace: str, digest: Digest) -> web.Response:
    return empty(201, {"Location": f"/v2/{namespace}/blobs/{digest}", "Docker-Content-Digest": str(digest)})


async def start_upload(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    namespace = route.namespace
    assert namespace is not None
    mount = request.query.get("mount")
    if mount is not None:
        digest = Digest.parse(mount)
        source = request.query.get("from")
        if source is not None:
            validate_name(source)
        if (await access.may_mount(request, route, registry, digest, source)
                and await registry.blobs_for(namespace).mount(namespace, digest, source)):
            return _blob_created(namespace, digest)
        await access.require_upload(request, route, registry)  # the fallback is a new upload session
    upload_id = await registry.uploads_for(namespace).start(namespace)
    digest_param = request.query.get("digest")
    if digest_param is not None:
        digest = Digest.parse(digest_param)
        body = body_stream(request) if has_body(request) else None
        await registry.uploads_for(namespace).complete(namespace, upload_id, digest, body)
        return _blob_created(namespace, digest)
    return empty(202, _session_headers(namespace, upload_id, 0))


async def get_upload(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.upload_id is not None
    size = await registry.uploads_for(route.namespace).status(route.namespace, route.upload_id)
    return empty(204, _session_headers(route.namespace, route.upload_id, size))


async def patch_upload(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.upload_id is not None
    content_range = ContentRange.parse(request.headers.get("Content-Range"))
    body = body_stream(request) if has_body(request) else None
    size = await registry.uploads_for(route.namespace).append(route.namespace, route.upload_id, body,
                                                              content_range)
    return empty(202, _session_headers(route.namespace, route.upload_id, size))


async def complete_upload(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.upload_id is not None
    digest_param = request.query.get("digest")
    if not digest_param:
        raise errors.DigestInvalid("the digest query parameter is required to complete an upload")
    digest = Digest.parse(digest_param)
    body = body_stream(request) if has_body(request) else None
    await registry.uploads_for(route.namespace).complete(route.namespace, route.upload_id, digest, body)
    return _blob_created(route.namespace, digest)


async def cancel_upload(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.upload_id is not None
    await registry.uploads_for(route.namespace).cancel(route.namespace, route.upload_id)
    return empty(204)
