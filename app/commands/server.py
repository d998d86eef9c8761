"""`registry server`: run the listeners until SIGINT/SIGTERM, then drain and exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal

from aiohttp import web

from app.config import Config
from app.context import build_registry
from app.http.app import build_app

log = logging.getLogger("registry")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    registry = build_registry(config)
    app = build_app(registry)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=config.server.query_timeout_grace_period)
    await runner.setup()
    site = web.TCPSite(runner, config.server.bind_address, config.server.port, reuse_address=True,
                       backlog=1024)
    try:
        await site.start()
        if config.zero_config_access and not _is_loopback(config.server.bind_address):
            log.warning("listening on %s with no access policy: anyone who can reach it may push, pull "
                        "and delete", config.server.bind_address)
        log.info("listening", extra={"fields": {
            "address": config.server.bind_address, "port": _bound_port(runner) or config.server.port,
            "storage": str(config.blob_store.fs.root_dir) if config.blob_store.fs else "s3"}})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows: KeyboardInterrupt instead
                loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping: draining in-flight requests")
    finally:
        await runner.cleanup()
        await registry.close()
        log.info("stopped")


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def run(config: Config) -> int:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        runner_factory = uvloop.new_event_loop
    except ImportError:  # Windows
        runner_factory = None
    with asyncio.Runner(loop_factory=runner_factory) as runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(serve(config))
    return 0
