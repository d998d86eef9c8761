"""Cross-cutting request handling: access log, error envelopes, concurrency limit, routing + policy."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from app import errors
from app.context import Registry
from app.http import access, router
from app.http.admission import Admission
from app.http.responses import API_VERSION_HEADER, error_response
from app.services.uploads import ClientDisconnected
from app.storage import StorageError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
access_log = logging.getLogger("registry.access")
log = logging.getLogger("registry")

REGISTRY_KEY = web.AppKey("registry", Registry)
ROUTE_KEY = "route"
ERROR_KEY = "error"


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("request", extra={"fields": _access_fields(request, status, started)})


def _access_fields(request: web.Request, status: int, started: float) -> dict[str, object]:
    """One access-log line: the request, who made it and, for a refusal or failure, what and why
    (the error's code and message, which never hold a secret)."""
    fields: dict[str, object] = {
        "method": request.method, "path": request.path, "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "remote": request.remote, "bytes_in": request.content_length,
    }
    if request.query_string:
        fields["query"] = request.query_string[:1000]
    agent = request.headers.get("User-Agent")
    if agent:
        fields["user_agent"] = agent[:300]
    identity = request.get(access.IDENTITY_KEY)
    if identity is not None:
        fields["identity"] = identity.subject or "(anonymous)"
    route = request.get(ROUTE_KEY)
    if isinstance(route, router.Route):
        fields["action"] = route.action
        if route.namespace is not None:
            fields["namespace"] = route.namespace
    error = request.get(ERROR_KEY)
    if isinstance(error, errors.RegistryError):
        fields["error"] = error.code
        fields["reason"] = error.message[:500]
    return fields


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.RegistryError as exc:
        if exc.status == 401 and "WWW-Authenticate" not in exc.headers:
            exc.headers["WWW-Authenticate"] = _challenge(request, exc)
        request[ERROR_KEY] = exc
        return error_response(exc)
    except ClientDisconnected as exc:
        # Expected (a client gave up mid-body); what arrived was kept. Nobody reads this answer.
        log.info("client went away during %s %s: %s", request.method, request.path, exc)
        return error_response(errors.BlobUploadInvalid(f"client disconnected: {exc}"))
    except StorageError as exc:
        # The log says what failed and where; the client learns only that storage is unavailable
        # (the bucket, the endpoint and the path on disk are the operator's business).
        log.error("storage failure on %s %s: %s", request.method, request.path, exc)
        request[ERROR_KEY] = unavailable = errors.Unavailable(
            "storage is unavailable, try again later", headers={"Retry-After": "5"})
        return error_response(unavailable)
    except (ConnectionError, asyncio.CancelledError):
        raise
    except web.HTTPException:
        raise
    except Exception:
        trace = uuid.uuid4().hex
        log.exception("unhandled error (trace %s) on %s %s", trace, request.method, request.path)
        internal = errors.RegistryError("internal server error", detail={"trace_id": trace})
        request[ERROR_KEY] = internal
        return error_response(internal)


def _challenge(request: web.Request, error: errors.RegistryError) -> str:
    """What this 401 asks the client to do, for the route it asked for (Bearer with a scope, or Basic)."""
    from app.auth.challenge import BASIC_REALM, INSUFFICIENT_SCOPE, Challenger

    route = request.get(ROUTE_KEY)
    if isinstance(route, router.Route) and route.kind == "token":
        return f'Basic realm="{BASIC_REALM}"'  # the token endpoint takes credentials as Basic
    challenger = Challenger(request.app[REGISTRY_KEY].config)
    insufficient = INSUFFICIENT_SCOPE if isinstance(error, errors.InsufficientScope) else None
    if isinstance(route, router.Route):
        return challenger.header(request, route.action, route.namespace, insufficient)
    return challenger.header(request, None, None, insufficient)


def admission_middleware(limit: int) -> Middleware:
    """Request slots and per-client limits (app/http/admission.py); health probes always get through."""
    admission: Admission | None = None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal admission
        if request.path in ("/healthz", "/health", "/readyz"):
            return await handler(request)
        registry = request.app[REGISTRY_KEY]
        if admission is None:
            admission = Admission(limit, registry.config.global_.limits)
        admission.limits = registry.config.global_.limits  # a live reload may have changed them
        client = registry.authenticator.client_ip(request) or "unknown"
        async with admission.request(request, client):
            return await handler(request)

    return middleware


def timeout_middleware(seconds: float) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            async with asyncio.timeout(seconds):
                return await handler(request)
        except TimeoutError:
            log.warning("request exceeded query_timeout (%ss): %s %s", seconds, request.method, request.path)
            raise errors.RegistryError("request exceeded the server's query_timeout", status=503) from None

    return middleware


@web.middleware
async def route_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Route once (on the raw path), then authenticate and authorize before any handler runs."""
    route = router.resolve(request.method, request.raw_path, mount="mount" in request.query)
    if "ns" in request.query:
        # containerd's `?ns=<host>`: the repository mirroring that host serves it (app/http/mirrors.py).
        from app.http.mirrors import mirror_route

        route = mirror_route(route, request, request.app[REGISTRY_KEY].config.repository)
    request[ROUTE_KEY] = route
    await access.check(request, route, request.app[REGISTRY_KEY])
    return await handler(request)


async def add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/v2"):
        response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
