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
from app.http.mirrors import mirror_route
from app.http.responses import API_VERSION_HEADER, error_response
from app.services.uploads import ClientDisconnected
from app.storage import StorageError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
access_log = logging.getLogger("registry.access")
log = logging.getLogger("registry")

REGISTRY_KEY = web.AppKey("registry", Registry)
ROUTE_KEY = "route"
# How long a request waits for a slot when max_concurrent_requests are in flight, before 503.
QUEUE_WAIT_SECONDS = 30.0


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
            access_log.info("request", extra={"fields": {
                "method": request.method, "path": request.path, "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "remote": request.remote, "bytes_in": request.content_length,
            }})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.RegistryError as exc:
        return error_response(exc)
    except ClientDisconnected as exc:
        # Expected (a client gave up mid-body); what arrived was kept. Nobody reads this answer.
        log.info("client went away during %s %s: %s", request.method, request.path, exc)
        return error_response(errors.BlobUploadInvalid(f"client disconnected: {exc}"))
    except StorageError as exc:
        log.error("storage failure on %s %s: %s", request.method, request.path, exc)
        return error_response(errors.Unavailable(str(exc)))
    except (ConnectionError, asyncio.CancelledError):
        raise
    except web.HTTPException:
        raise
    except Exception:
        trace = uuid.uuid4().hex
        log.exception("unhandled error (trace %s) on %s %s", trace, request.method, request.path)
        return error_response(errors.RegistryError("internal server error", detail={"trace_id": trace}))


def limit_middleware(limit: int) -> Middleware:
    slots = asyncio.Semaphore(limit)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/health", "/readyz"):
            return await handler(request)
        try:
            await asyncio.wait_for(slots.acquire(), QUEUE_WAIT_SECONDS)
        except TimeoutError:
            raise errors.RegistryError("too many concurrent requests; retry later", status=503,
                                       headers={"Retry-After": "1"}) from None
        try:
            return await handler(request)
        finally:
            slots.release()

    middleware.__name__ = "limit_middleware"
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
    # containerd's `?ns=<host>`: the repository mirroring that host serves it (app/http/mirrors.py).
    route = mirror_route(route, request, request.app[REGISTRY_KEY].config.repository)
    request[ROUTE_KEY] = route
    await access.check(request, route, request.app[REGISTRY_KEY])
    return await handler(request)


async def add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/v2"):
        response.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
