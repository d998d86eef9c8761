"""`registry server`: run the listeners until SIGINT/SIGTERM, then drain and exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from app import errors, housekeeping
from app.config import Config, ConfigError, default_config_files
from app.context import Registry, build_registry
from app.http.app import build_app
from app.http.connections import Runner
from app.memory import trimming

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
                tls: ServerTLS | None = None) -> None:
    """Serve until SIGINT/SIGTERM; `files` are watched and reloaded live; `tls` is the listener's TLS."""
    if tls is None and config.server.tls is not None:
        from app.tls import ServerTLS

        tls = ServerTLS(config.server.tls)
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
        log.info("listening", extra={"fields": {
            "address": config.server.bind_address, "port": _bound_port(runner) or config.server.port,
            "tls": tls is not None,
            "storage": str(config.blob_store.fs.root_dir) if config.blob_store.fs else "s3"}})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if files:
            registry.actors.start_config_watcher(files, config, loop, _reloader(registry, tls))
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows: KeyboardInterrupt instead
                loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        async with trimming():  # free heap goes back to the OS after upload bursts
            await stop.wait()
        log.info("stopping: draining in-flight requests")
    finally:
        await runner.cleanup()
        await registry.close()
        log.info("stopped")


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


def run(config: Config, files: list[Path] | None = None) -> int:
    """`files`: the configuration files given with -c (None: the default ones), watched for reload."""
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
            runner.run(serve(config, files=files, tls=tls))
        except ListenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0
