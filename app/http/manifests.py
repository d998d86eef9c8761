"""Manifest HEAD/GET/PUT/DELETE by tag or digest."""

from __future__ import annotations

from aiohttp import web

from app.context import Registry
from app.grammar import validate_tag
from app.http.responses import empty, head, read_limited
from app.http.router import Route


async def get_manifest(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.reference is not None
    stored = await registry.manifests_for(route.namespace).get(route.namespace, route.reference)
    headers = {"Docker-Content-Digest": str(stored.digest), "ETag": f'"{stored.digest}"'}
    if request.method == "HEAD":  # not a pull (docs/gc.md, Retention)
        return head(200, len(stored.body), headers, stored.media_type)
    if registry.pull_times is not None and registry.config.global_.update_pull_time:
        registry.pull_times.record(route.namespace, route.reference)
    response = web.Response(body=stored.body, headers=headers)
    response.content_type = stored.media_type
    return response


async def put_manifest(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.reference is not None
    limit = registry.config.global_.max_manifest_size
    body = await read_limited(request, limit)
    tags = [validate_tag(tag) for tag in request.query.getall("tag", [])]
    result = await registry.manifests_for(route.namespace).put(
        route.namespace, route.reference, body, request.headers.get("Content-Type"), tags)
    headers = {
        "Location": f"/v2/{route.namespace}/manifests/{result.digest}",
        "Docker-Content-Digest": str(result.digest),
    }
    if result.subject is not None:
        headers["OCI-Subject"] = str(result.subject)
    return empty(201, headers)


async def delete_manifest(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.reference is not None
    await registry.manifests_for(route.namespace).delete(route.namespace, route.reference)
    return empty(202)
