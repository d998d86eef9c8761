"""Connections that free their resources: header-read timeout, idle keep-alive timeout, and idle
connections dropped first when the file-descriptor limit nears.

aiohttp's own keep-alive timeout (an hour by default) closes a connection that waits for its next
request; it is `keepalive_timeout` here. It does not bound how long a request's *headers* may take to
arrive (a slowloris sends a header line every few seconds forever): `GuardedRequestHandler` starts a
`header_read_timeout` clock at the first byte of a request and closes the connection when the headers
are not complete by then.

Every descriptor is a connection, a file or a socket to storage: when open connections come within
`FD_HEADROOM` of the process's descriptor limit, the warden closes idle keep-alive connections (those
between two requests) so that new clients and the server's own files still get descriptors. At start
the soft limit is raised to the hard one, as Go servers (distribution) do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web, web_protocol, web_server

from app import errors
from app.config import LimitsConfig

log = logging.getLogger("registry")

# Open connections may use this share of the descriptor limit before idle ones are closed.
FD_HIGH_WATER = 0.8
FD_LOW_WATER = 0.7
WARDEN_INTERVAL = 1.0


class GuardedRequestHandler(web_protocol.RequestHandler):
    __slots__ = ("_header_timer", "_limits")

    def __init__(self, *args: Any, limits: LimitsConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._header_timer: asyncio.TimerHandle | None = None

    def _between_requests(self) -> bool:
        return not self._request_in_progress and not self._messages

    def data_received(self, data: bytes) -> None:
        if (self._close or self._force_close) and self._draining_request():
            self._drain_received(data)
            return
        if self._header_timer is None and self._between_requests():
            self._header_timer = self._loop.call_later(self._limits.header_read_timeout, self._headers_late)
        super().data_received(data)
        if self._header_timer is not None and not self._between_requests():
            self._header_timer.cancel()
            self._header_timer = None

    def _draining_request(self) -> bool:
        """A request is being handled on a connection that is still open (not lost, only closing)."""
        return self._request_in_progress and self.transport is not None and self._parser is not None

    def _drain_received(self, data: bytes) -> None:
        """The server is stopping (it closes every connection first, then waits for the handlers) and
        aiohttp drops whatever arrives from then on, so an upload still receiving its body could only
        hang until the grace period ran out. The request in progress gets the rest of its body; no
        request after it is handled (the handler loop ends with it, and the connection closes)."""
        closing, forced = self._close, self._force_close
        self._close = self._force_close = False
        try:
            super().data_received(data)
        finally:
            self._close = self._close or closing
            self._force_close = self._force_close or forced

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._between_requests() and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            log.info("closing a connection whose request headers took longer than %ss",
                     self._limits.header_read_timeout, extra={"fields": {"remote": str(peer)}})
            self.force_close()
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp's parser refused (bad Content-Length, control characters, oversized
        headers, no Host...) never reaches a middleware: answer it in the OCI error envelope too."""
        plain = super().handle_error(request, status, exc, message)  # logs; raises if a body was sent
        reason = (message or (str(exc) if exc is not None else "") or "malformed request").strip()
        error = errors.RegistryError(reason.splitlines()[0][:300], status=plain.status)
        response = web.Response(status=plain.status, content_type="application/json",
                                body=json.dumps(error.body(), separators=(",", ":")).encode())
        response.force_close()
        return response

    @property
    def idle(self) -> bool:
        """Waiting for its next request with nothing received: safe to close."""
        return self._between_requests() and self._header_timer is None


class GuardedServer(web_server.Server):
    """aiohttp's Server building guarded handlers (the limits travel in the handler arguments)."""

    __slots__ = ()

    def __call__(self) -> web_protocol.RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An AppRunner whose connections are guarded, and a warden for the descriptor limit."""

    def __init__(self, app: web.Application, limits: LimitsConfig, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self.limits = limits
        self._warden: asyncio.Task[None] | None = None

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = GuardedServer
        server._kwargs["limits"] = self.limits
        return server

    async def setup(self) -> None:
        await super().setup()
        self._warden = asyncio.get_running_loop().create_task(self._watch_descriptors())

    async def cleanup(self) -> None:
        if self._warden is not None:
            self._warden.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warden
        await super().cleanup()

    async def _watch_descriptors(self) -> None:
        limit = raise_descriptor_limit()
        while True:
            await asyncio.sleep(WARDEN_INTERVAL)
            server = self.server
            if server is None or limit is None:
                continue
            connections = server.connections
            if len(connections) < limit * FD_HIGH_WATER:
                continue
            idle = [c for c in connections if isinstance(c, GuardedRequestHandler) and c.idle]
            excess = len(connections) - int(limit * FD_LOW_WATER)
            for handler in idle[:max(excess, 0)]:
                handler.force_close()
                if handler.transport is not None:
                    handler.transport.close()
            log.warning("near the file-descriptor limit: closed idle connections", extra={"fields": {
                "connections": len(connections), "limit": limit, "closed": min(len(idle), max(excess, 0))}})


def raise_descriptor_limit() -> int | None:
    """Raise the soft descriptor limit to the hard one; the limit in force (None: unknown, Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return None if soft == resource.RLIM_INFINITY else soft
