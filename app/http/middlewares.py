"""Cross-cutting request handling: access log, error envelopes, concurrency limit, routing + policy."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from app import errors, tracing
from app.context import Registry
from app.http import access, router, traffic
from app.http.admission import Admission
from app.http.request_metrics import REQUESTS, UNMATCHED
from app.http.responses import API_VERSION_HEADER, error_response
from app.http.traffic import Traffic
from app.services.uploads import ClientDisconnected
from app.storage import StorageError

if TYPE_CHECKING:
    from opentelemetry.trace import Span

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
access_log = logging.getLogger("registry.access")
log = logging.getLogger("registry")

REGISTRY_KEY = web.AppKey("registry", Registry)
ROUTE_KEY = "route"
ERROR_KEY = "error"


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost layer: the request's span (with tracing), its metrics and its access-log line."""
    if not tracing.enabled():
        return await _observed(request, handler, None)
    tracer = tracing.tracer()
    assert tracer is not None
    # Named by the route kind once routed (a span name must have bounded cardinality, never the path).
    with tracer.start_as_current_span(f"HTTP {request.method}", kind=_server_kind()) as span:
        return await _observed(request, handler, span)


async def _observed(request: web.Request, handler: Handler, span: Span | None) -> web.StreamResponse:
    started = time.perf_counter()
    sent = Traffic()
    request.writer.on_body_write = sent.body_written
    token = traffic.current.set(sent)  # for sendfile, which bypasses the writer
    REQUESTS.in_flight += 1
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        REQUESTS.in_flight -= 1
        traffic.current.reset(token)
        bytes_out = _bytes_out(request, response, sent)
        bytes_in = request.content.total_bytes
        route = request.get(ROUTE_KEY)
        kind = route.kind if isinstance(route, router.Route) else UNMATCHED
        elapsed = time.perf_counter() - started
        REQUESTS.observe(request.method, kind, status, elapsed * 1000, bytes_in, bytes_out)
        if span is not None:
            _finish_span(span, request, route, kind, status)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("request", extra={"fields": _access_fields(request, status, elapsed, bytes_in,
                                                                       bytes_out, span)})


def _bytes_out(request: web.Request, response: web.StreamResponse | None, sent: Traffic) -> int:
    """Body bytes sent: counted as they went for a streamed answer; a plain one is written by aiohttp
    after the middlewares returned, so its body's length is what it will send."""
    if response is None or response.prepared:
        return sent.sent
    if request.method == "HEAD":
        return 0
    return response.content_length or 0


def _finish_span(span: Span, request: web.Request, route: object, kind: str, status: int) -> None:
    span.update_name(kind)
    tracing.set_attributes(span, {
        "http.request.method": request.method, "http.route": kind, "http.response.status_code": status,
        "url.path": request.path[:500], "client.address": request.remote,
    })
    if isinstance(route, router.Route):
        tracing.set_attributes(span, {"registry.action": route.action, "registry.namespace": route.namespace})
    error = request.get(ERROR_KEY)
    if isinstance(error, errors.RegistryError):
        span.set_attribute("registry.error", error.code)
    if status >= 500:  # a 4xx is the client's answer, not the server failing (OpenTelemetry's HTTP rule)
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


def _server_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.SERVER


def _access_fields(request: web.Request, status: int, elapsed: float, bytes_in: int, bytes_out: int,
                   span: Span | None) -> dict[str, object]:
    """One access-log line: the request, who made it and, for a refusal or failure, what and why
    (the error's code and message, which never hold a secret)."""
    fields: dict[str, object] = {
        "method": request.method, "path": request.path, "status": status,
        "duration_ms": round(elapsed * 1000, 2),
        "remote": request.remote, "bytes_in": bytes_in, "bytes_out": bytes_out,
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
    if span is not None:
        fields["trace_id"] = format(span.get_span_context().trace_id, "032x")
    return fields


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.RegistryError as exc:
        if exc.status == 401 and "WWW-Authenticate" not in exc.headers:
            exc.headers["WWW-Authenticate"] = _challenge(request, exc)
        request[ERROR_KEY] = exc
        return error_response(_with_trace_id(exc))
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
        return error_response(_with_trace_id(unavailable))
    except (ConnectionError, asyncio.CancelledError):
        raise
    except web.HTTPException:
        raise
    except Exception:
        trace = tracing.trace_id() or uuid.uuid4().hex  # the trace's own id when tracing is on
        log.exception("unhandled error (trace %s) on %s %s", trace, request.method, request.path)
        internal = errors.RegistryError("internal server error", detail={"trace_id": trace})
        request[ERROR_KEY] = internal
        return error_response(internal)


def _with_trace_id(error: errors.RegistryError) -> errors.RegistryError:
    """With tracing on, the error's `detail` names the request's trace: what an operator searches for
    when a user reports the error (the same id is in the access-log line)."""
    trace_id = tracing.trace_id()
    if trace_id is not None and (error.detail is None or isinstance(error.detail, dict)):
        error.detail = {**(error.detail or {}), "trace_id": trace_id}
    return error


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
