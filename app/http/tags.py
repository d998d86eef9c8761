"""`GET /v2/<name>/tags/list` with `n`/`last` pagination."""

from __future__ import annotations

from aiohttp import web

from app.context import Registry
from app.grammar import validate_tag
from app.http.responses import json_response, next_link, pagination
from app.http.router import Route

MAX_PAGE = 10000


async def list_tags(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None
    n = pagination(request, None, MAX_PAGE)
    last = request.query.get("last") or None
    if last is not None:
        validate_tag(last)
    tags, more = await registry.manifests_for(route.namespace).list_tags(route.namespace, n, last)
    headers = {}
    if more and tags and n is not None:
        headers["Link"] = next_link(f"/v2/{route.namespace}/tags/list", tags[-1], n)
    return json_response({"name": route.namespace, "tags": tags}, headers=headers)
