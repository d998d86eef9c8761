"""Authentication and authorization of a routed request, before any handler runs.

The identity is stored on the request for handlers that need a second decision (a cross-repository
mount must be allowed to read the blob in its source namespace).
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from app.auth.identity import Identity
from app.context import Registry
from app.grammar import Digest
from app.http.router import Route
from app.policy import AccessRequest

IDENTITY_KEY = "identity"
_MOUNT_ALLOWED = "mount_allowed"
_UPLOAD_ALLOWED = "upload_allowed"
_UNAUTHENTICATED_KINDS = frozenset({"health", "ready"})


def access_request(request: web.Request, route: Route) -> AccessRequest:
    query = request.query
    digest = route.digest or (route.reference if isinstance(route.reference, Digest) else None)
    raw_n = query.get("n", "")
    return AccessRequest(
        action=route.action,
        namespace=route.namespace,
        digest=str(digest) if digest is not None else query.get("mount") or query.get("digest"),
        reference=str(route.reference) if route.reference is not None else None,
        uuid=route.upload_id,
        n=int(raw_n) if raw_n.isdigit() and len(raw_n) < 10 else None,
        last=query.get("last"),
        artifact_type=query.get("artifactType"),
        from_=query.get("from"),
        method=request.method,
        scheme=request.scheme,
        host=request.host,
        uri=request.raw_path,
        headers=request.headers,
    )


async def check(request: web.Request, route: Route, registry: Registry) -> None:
    """Authenticate, then authorize the route's action; raises 401/403/404/429 as the case may be.

    A mount whose `mount-blob` is denied is not refused: it proceeds as a plain upload start (the
    fallback a client gets anyway when a mount is impossible), which needs `start-upload`.
    """
    if route.kind in _UNAUTHENTICATED_KINDS:
        return
    identity = await registry.authenticator.authenticate(request)
    request[IDENTITY_KEY] = identity
    access = access_request(request, route)
    if route.action != "mount-blob":
        await registry.authorizer.authorize(identity, access)
        return
    request[_MOUNT_ALLOWED] = await registry.authorizer.permits(identity, access)
    if not request[_MOUNT_ALLOWED]:
        await require_upload(request, route, registry)


async def require_upload(request: web.Request, route: Route, registry: Registry) -> None:
    """A mount that falls back to a new upload session needs `start-upload` in the target namespace."""
    if request.get(_UPLOAD_ALLOWED):
        return
    access = replace(access_request(request, route), action="start-upload")
    await registry.authorizer.authorize(_identity(request), access)
    request[_UPLOAD_ALLOWED] = True


async def may_mount(request: web.Request, route: Route, registry: Registry, digest: Digest,
                    source: str | None) -> bool:
    """Whether the caller may read `digest` where it would be mounted from.

    With `from`: the caller must be allowed `get-blob` in that namespace. Without: only when no
    decision can depend on the namespace (zero-config, or a global policy that never reads it), since
    the blob could otherwise come from a namespace the caller may not read.
    """
    if not request.get(_MOUNT_ALLOWED, False):
        return False
    authorizer = registry.authorizer
    if source is None:
        if not authorizer.namespace_independent:
            return False
        source = route.namespace
    access = replace(access_request(request, route), action="get-blob", namespace=source, digest=str(digest),
                     reference=None, uuid=None)
    return await authorizer.permits(_identity(request), access)


def _identity(request: web.Request) -> Identity:
    identity = request.get(IDENTITY_KEY)
    return identity if isinstance(identity, Identity) else Identity(client_ip=request.remote)
