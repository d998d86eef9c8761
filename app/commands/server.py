"""`registry server`: run the listeners until SIGINT/SIGTERM (or a service stop), then drain and exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from app import errors, housekeeping, tracing
from app.config import Config, ConfigError, default_config_files
from app.context import Registry, build_registry
from app.http.app import build_app
from app.http.connections import Runner
from app.memory import trimming
from app.server_control import ServerControl

if TYPE_CHECKING:
    from app.actors.config_watcher import ApplyReload
    from app.tls import ServerTLS

log = logging.getLogger("registry")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _reloader(registry: Registry, tls: ServerTLS | None) -> ApplyReload:
    """What the config watcher runs on the loop to apply a validated reload."""
    async def apply(config: Config | None, tls_context: ssl.SSLContext | None) -> None:
        if config is not None:
            registry.reconfigure(config)
        if tls_context is not None and tls is not None:
            tls.swap(tls_context)

    return apply


async def serve(config: Config, ready: asyncio.Event | None = None, files: list[Path] | None = None,
                tls: ServerTLS | None = None, control: ServerControl | None = None) -> None:
    """Serve until SIGINT/SIGTERM or `control.request_stop()` (from any thread); `files` are watched and
    reloaded live; `tls` is the listener's TLS."""
    if tls is None and config.server.tls is not None:
        from app.tls import ServerTLS

        tls = ServerTLS(config.server.tls)
    control = control or ServerControl()
    loop = asyncio.get_running_loop()
    stop = control.attach(loop)  # before anything slow: a stop asked for during the start is kept
    try:
        await _serve(config, files, tls, control, stop, ready)
    finally:
        control.detach()


async def _serve(config: Config, files: list[Path] | None, tls: ServerTLS | None, control: ServerControl,
                 stop: asyncio.Event, ready: asyncio.Event | None) -> None:
    loop = asyncio.get_running_loop()
    tracing.start(config.observability.tracing)  # before the registry: storage is wrapped when on
    try:
        await _listen(config, files, tls, control, stop, ready, loop)
    finally:
        if tracing.enabled():  # the last spans are flushed over blocking HTTP: not on the loop
            await loop.run_in_executor(None, tracing.shutdown)


async def _listen(config: Config, files: list[Path] | None, tls: ServerTLS | None, control: ServerControl,
                  stop: asyncio.Event, ready: asyncio.Event | None, loop: asyncio.AbstractEventLoop) -> None:
    registry = build_registry(config)
    await _prepare_token_key(registry)
    await housekeeping.start(registry)  # old temporary files removed; upload sessions expire on a timer
    app = build_app(registry)
    runner = Runner(app, config.global_.limits, access_log=None, handle_signals=False,
                    shutdown_timeout=config.server.query_timeout_grace_period)
    await runner.setup()
    site = web.TCPSite(runner, config.server.bind_address, config.server.port, reuse_address=True,
                       backlog=1024, ssl_context=tls.context if tls is not None else None)
    try:
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(config.server.bind_address, config.server.port, exc) from None
        if config.zero_config_access and not _is_loopback(config.server.bind_address):
            log.warning("listening on %s with no access policy: anyone who can reach it may push, pull "
                        "and delete", config.server.bind_address)
        control.port = _bound_port(runner) or config.server.port
        log.info("listening", extra={"fields": {
            "address": config.server.bind_address, "port": control.port, "tls": tls is not None,
            "storage": str(config.blob_store.fs.root_dir) if config.blob_store.fs else "s3",
            "tracing": tracing.enabled()}})
        if files:
            registry.actors.start_config_watcher(files, config, loop, _reloader(registry, tls))
        _handle_signals(loop, control)
        control.listening.set()
        if ready is not None:
            ready.set()
        async with trimming():  # free heap goes back to the OS after upload bursts
            await stop.wait()
        log.info("stopping: draining in-flight requests")
    finally:
        await runner.cleanup()
        await housekeeping.stop(registry)  # pull times recorded since the last flush are written
        await registry.close()
        log.info("stopped")


def _handle_signals(loop: asyncio.AbstractEventLoop, control: ServerControl) -> None:
    """SIGINT/SIGTERM (Windows: Ctrl-C, Ctrl-Break) ask for the same drained stop as a service stop.

    Only the main thread may install signal handlers; a server hosted in another thread (the Windows
    service, tests) is stopped through its control alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if sys.platform == "win32":
        # No add_signal_handler on Windows loops; a plain handler runs on the main thread between
        # bytecodes and wakes the loop through call_soon_threadsafe.
        for sig in (signal.SIGINT, getattr(signal, "SIGBREAK", signal.SIGINT)):
            signal.signal(sig, lambda _sig, _frame: control.request_stop())
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, control.request_stop)


class ListenError(Exception):
    """The listening address cannot be bound: one clear line, not a traceback."""

    def __init__(self, address: str, port: int, cause: OSError) -> None:
        in_use = cause.errno == errno.EADDRINUSE
        reason = "address already in use" if in_use else (cause.strerror or str(cause))
        super().__init__(f"cannot listen on {address}:{port}: {reason}; choose another port with `[server] "
                         f"port` in the configuration or REGISTRY__SERVER__PORT=<port>")


async def _prepare_token_key(registry: Registry) -> None:
    """Load (or create) the token signing key before the first request needs it.

    A store that cannot be read now is not fatal: the token endpoint answers 503 and tries again.
    """
    tokens = registry.authenticator.tokens
    if tokens is None:
        return
    try:
        await tokens.key()
    except errors.RegistryError as exc:
        log.warning("the token service is not ready yet: %s", exc.message)


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def run(config: Config, files: list[Path] | None = None, control: ServerControl | None = None) -> int:
    """`files`: the configuration files given with -c (None: the default ones), watched for reload;
    `control`: how another thread (a service host) stops this server."""
    files = default_config_files() if files is None else files
    try:
        # Built before anything else: a broken TLS section stops the start, never falls back to plaintext.
        tls = None
        if config.server.tls is not None:
            from app.tls import ServerTLS  # cryptography only when TLS is configured

            tls = ServerTLS(config.server.tls)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        runner_factory = uvloop.new_event_loop
    except ImportError:  # Windows
        runner_factory = None
    with asyncio.Runner(loop_factory=runner_factory) as runner, contextlib.suppress(KeyboardInterrupt):
        try:
            runner.run(serve(config, files=files, tls=tls, control=control))
        except ListenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0
