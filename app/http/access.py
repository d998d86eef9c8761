"""Authentication and authorization of a routed request, before any handler runs.

The identity is stored on the request for handlers that need a second decision (a cross-repository
mount must be allowed to read the blob in its source namespace).

Anonymous callers are asked to log in before any policy is consulted where clients need that to send
credentials at all: `GET /v2/` whenever the registry accepts credentials (that 401 is what makes
`docker login` and `podman login` try them), and every `/v2/` endpoint with the token service on
(clients then fetch a token, anonymous or not, and come back with it). A request bearing one of our
tokens must be within the token's grants (else 401 `insufficient_scope`) and is then decided by the
policy like any other.
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from app import errors, tracing
from app.auth.identity import Identity
from app.context import Registry
from app.grammar import Digest
from app.http import router
from app.http.router import Route
from app.policy import AccessRequest

IDENTITY_KEY = "identity"
_MOUNT_ALLOWED = "mount_allowed"
_UPLOAD_ALLOWED = "upload_allowed"
# The token endpoint authenticates its callers itself (and never refuses an anonymous one).
_UNAUTHENTICATED_KINDS = frozenset({"health", "ready", "token"})
# A refusal (401, 403, 429) is the policy's answer, recorded on the span, not a failure of it.
_REFUSALS = (errors.RegistryError,)
_REGISTRY_KINDS = frozenset({"base", "catalog", "tags", "manifest", "blob", "upload_start", "upload",
                             "referrers", "repository"})


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
        n=int(raw_n) if raw_n.isascii() and raw_n.isdigit() and len(raw_n) < 10 else None,
        last=query.get("last"),
        artifact_type=query.get("artifactType"),
        from_=query.get("from"),
        method=request.method,
        scheme=request.scheme,
        host=request.host,
        uri=router.origin_form(request.raw_path),
        headers=request.headers,
    )


async def check(request: web.Request, route: Route, registry: Registry) -> None:
    """Authenticate, then authorize the route's action; raises 401/403/404/429 as the case may be.

    A mount whose `mount-blob` is denied is not refused: it proceeds as a plain upload start (the
    fallback a client gets anyway when a mount is impossible), which needs `start-upload`.
    """
    if route.kind in _UNAUTHENTICATED_KINDS:
        return
    authenticator = registry.authenticator
    with tracing.quiet_span("authenticate", expected=_REFUSALS) as span:
        identity = await authenticator.authenticate(request)
        tracing.set_attributes(span, {"enduser.id": identity.subject, "auth.anonymous": identity.anonymous})
    request[IDENTITY_KEY] = identity
    if identity.anonymous and identity.grants is None and route.kind in _REGISTRY_KINDS and (
            authenticator.tokens is not None or (route.kind == "base" and authenticator.accepts_credentials)):
        raise errors.Unauthorized("authentication required")
    if identity.grants is not None and not identity.grants.covers(route.action, route.namespace):
        from app.auth import scopes

        raise errors.InsufficientScope(
            f"access denied: the token grants no {scopes.REQUIRED.get(route.action, route.action)} on "
            f"{route.namespace or 'the registry'} (not allowed, or not requested)")
    access = access_request(request, route)
    if route.action != "mount-blob":
        with tracing.quiet_span("authorize", {"registry.action": route.action}, expected=_REFUSALS):
            await registry.authorizer.authorize(identity, access)
        return
    with tracing.quiet_span("authorize", {"registry.action": route.action}, expected=_REFUSALS):
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
    identity = _identity(request)
    if source is None:
        # Only when the policy lets this caller read every namespace alike; a token must then cover
        # reading the target, where the mounted blob becomes readable.
        if not authorizer.namespace_independent:
            return False
        source = route.namespace
        if identity.grants is not None and not identity.grants.covers("get-blob", source):
            return False
    elif identity.grants is not None and not identity.grants.covers("get-blob", source):
        return False  # docker asks the token for `repository:<from>:pull` beside the target's push
    access = replace(access_request(request, route), action="get-blob", namespace=source, digest=str(digest),
                     reference=None, uuid=None)
    return await authorizer.permits(identity, access)


def _identity(request: web.Request) -> Identity:
    identity = request.get(IDENTITY_KEY)
    return identity if isinstance(identity, Identity) else Identity(client_ip=request.remote)
