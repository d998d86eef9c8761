"""`GET /v2/<name>/referrers/<digest>` with the `artifactType` filter."""

from __future__ import annotations

from aiohttp import web

from app import errors
from app.context import Registry
from app.http.responses import json_response
from app.http.router import Route
from app.manifest import OCI_INDEX

# A media type is at most 127 + 1 + 127 characters (RFC 6838).
MAX_ARTIFACT_TYPE = 255


async def list_referrers(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None and route.digest is not None
    artifact_type = request.query.get("artifactType") or None
    if artifact_type is not None and len(artifact_type) > MAX_ARTIFACT_TYPE:
        raise errors.Unsupported(f"artifactType is {len(artifact_type)} characters long; a media type has "
                                 f"at most {MAX_ARTIFACT_TYPE}", status=400)
    descriptors = await registry.manifests_for(route.namespace).referrers(route.namespace, route.digest,
                                                                          artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    return json_response(index, headers=headers, content_type=OCI_INDEX)
