"""`GET /v2/`: the API version check (200 `{}`)."""

from __future__ import annotations

from aiohttp import web

from app.context import Registry
from app.http.responses import json_response
from app.http.router import Route


async def api_version(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    return json_response({})
