"""`GET /v2/_catalog` with `n`/`last` pagination (default page 100)."""

from __future__ import annotations

from aiohttp import web

from app.context import Registry
from app.grammar import validate_name
from app.http.responses import json_response, next_link, pagination
from app.http.router import Route

DEFAULT_PAGE = 100
MAX_PAGE = 1000


async def list_catalog(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    n = pagination(request, DEFAULT_PAGE, MAX_PAGE)
    last = request.query.get("last") or None
    if last is not None:
        validate_name(last)
    names, more = await registry.manifests.catalog(n, last)
    headers = {}
    if more and names and n is not None:
        headers["Link"] = next_link("/v2/_catalog", names[-1], n)
    return json_response({"repositories": names}, headers=headers)
