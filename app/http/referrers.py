"""`GET /v2/<name>/referrers/<digest>` with the `artifactType` filter."""

from __future__ import annotations

from aiohttp import web

from app.context import Registry
from app.http.responses import json_response
from app.http.router import Route
from app.manifest import OCI_INDEX


async def list_referrers(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.digest is not None
    artifact_type = request.query.get("artifactType") or None
    descriptors = await registry.manifests_for(route.namespace).referrers(route.namespace, route.digest,
                                                                          artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    return json_response(index, headers=headers, content_type=OCI_INDEX)
