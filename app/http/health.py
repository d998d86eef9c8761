"""Liveness (`/healthz`, `/health`), readiness (`/readyz`) and Prometheus metrics (`/metrics`)."""

from __future__ import annotations

from aiohttp import web

from app import metrics as registry_metrics
from app.context import Registry
from app.http.responses import json_response
from app.http.router import Route
from app.storage import layout


async def healthz(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def readyz(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    try:
        await registry.storage.list_dir(layout.ROOT)
    except Exception as exc:  # any storage failure means "not ready"
        return json_response({"status": "unavailable", "storage": str(exc)}, status=503)
    shared = await registry.manifests.coherence.ready()  # replicas: the Redis they share state through
    if shared is not None:
        return json_response({"status": "unavailable", "shared_state": shared}, status=503)
    return json_response({"status": "ok"})


async def metrics(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    body, content_type = registry_metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
