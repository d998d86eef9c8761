"""`DELETE /v2/<name>/_registry/repository`: delete a whole repository (an extension of the OCI API,
docs/repositories.md). The work is app/services/repository_delete.py, shared with the command line.

Policy action `delete-repository`; the caller must also be allowed `delete-manifest` in the
repository (judged on identity, action and namespace), so that a policy written before this action
existed, which denies deleting manifests, keeps denying the deletion of everything at once. 202 with
a JSON report of what went; 404 NAME_UNKNOWN when the repository holds nothing.
"""

from __future__ import annotations

from aiohttp import web

from app.auth.identity import Identity
from app.context import Registry
from app.http.access import IDENTITY_KEY
from app.http.responses import json_response
from app.http.router import Route
from app.services.repository_delete import RepositoryDeletion


async def delete_repository(request: web.Request, route: Route, registry: Registry) -> web.StreamResponse:
    assert route.namespace is not None
    identity = request.get(IDENTITY_KEY)
    if not isinstance(identity, Identity):
        identity = Identity(client_ip=request.remote)
    if not registry.authorizer.allows(identity, "delete-manifest", route.namespace):
        raise registry.authorizer.denied(identity)
    deletion = RepositoryDeletion(registry.storage, registry.locks, index=registry.actors.index,
                                  upload_actor=registry.actors.uploads,
                                  coherence=registry.manifests.coherence)
    report = await deletion.delete(route.namespace)
    return json_response(report.as_json(), status=202)
