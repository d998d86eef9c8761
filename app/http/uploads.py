"""Blob uploads: start (with monolithic and mount forms), status, PATCH, complete, cancel."""

from __future__ import annotations

from aiohttp import web

from app import errors
from app.auth.identity import Identity
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


def upload_client(request: web.Request) -> str:
    """Whom a session counts against for `max_upload_sessions_per_client`: the authenticated identity,
    else the client address (the forwarded one behind a trusted proxy)."""
    identity = request.get(access.IDENTITY_KEY)
    if isinstance(identity, Identity):
        if not identity.anonymous:
            return f"identity:{identity.subject or identity.id or ''}"
        if identity.client_ip:
            return f"address:{identity.client_ip}"
    return f"address:{request.remote or 'unknown'}"


async def start_upload(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    namespace = route.namespace
    assert namespace is not None
    # Every parameter is checked before anything is created: a bad one answers 400 and leaves no session.
    mount_param = request.query.get("mount")
    mount = Digest.parse(mount_param) if mount_param is not None else None
    source = request.query.get("from")
    if mount is not None and source is not None:
        validate_name(source)
    digest_param = request.query.get("digest")
    digest = Digest.parse(digest_param) if digest_param is not None else None
    if mount is not None:
        if (await access.may_mount(request, route, registry, mount, source)
                and await registry.blobs_for(namespace).mount(namespace, mount, source)):
            return _blob_created(namespace, mount)
        await access.require_upload(request, route, registry)  # the fallback is a new upload session
    uploads = registry.uploads_for(namespace)
    upload_id = await uploads.start(namespace, upload_client(request))
    if digest is not None:
        body = body_stream(request) if has_body(request) else None
        await uploads.complete(namespace, upload_id, digest, body)
        return _blob_created(namespace, digest)
    return empty(202, _session_headers(namespace, upload_id, 0))


async def get_upload(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.upload_id is not None
    size = await registry.uploads_for(route.namespace).status(route.namespace, route.upload_id)
    return empty(204, _session_headers(route.namespace, route.upload_id, size))


async def patch_upload(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.upload_id is not None
    try:
        content_range = ContentRange.parse(request.headers.get("Content-Range"))
    except errors.RangeInvalid as exc:
        # The 416 says where the upload stands, as for a Content-Range that does not fit.
        size = await registry.uploads_for(route.namespace).status(route.namespace, route.upload_id)
        exc.headers["Range"] = range_header(size)
        raise
    body = body_stream(request) if has_body(request) else None
    size = await registry.uploads_for(route.namespace).append(route.namespace, route.upload_id, body,
                                                              content_range, request.content_length)
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
