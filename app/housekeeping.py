"""Housekeeping a running server does for itself: what a killed process left behind goes away.

At start, temporary files of atomic writes older than `TEMPORARY_FILE_MARGIN` are removed (a process
killed between writing one and renaming it into place leaves it there). The margin spares the writes
of another process sharing the store: an atomic write of a small object takes far less than that.
Then upload sessions untouched for `upload_timeout` are expired on a timer (app/services/upload_expiry.py),
and garbage is collected on `[global.gc].interval` (app/services/garbage.py). The pull times manifest
GETs record are written every `pull_time_flush_interval` and at stop (app/services/pull_times.py).
"""

from __future__ import annotations

import asyncio
import logging

from app.context import Registry
from app.services.garbage import GarbageCollector
from app.services.pull_times import PullTimes
from app.services.upload_expiry import UploadExpiry
from app.storage import Storage, StorageError

log = logging.getLogger("registry.housekeeping")

TEMPORARY_FILE_MARGIN = 3600.0


async def start(registry: Registry) -> None:
    await purge_temporary(registry.storage)
    expiry = UploadExpiry(registry.uploads)
    registry.actors.start_sweeper("upload expiry", expiry.sweep, asyncio.get_running_loop(),
                                  expiry.first_delay())
    start_pull_times(registry)
    collector = registry.garbage = GarbageCollector(registry)
    registry.actors.start_sweeper("garbage collection", collector.run, asyncio.get_running_loop(),
                                  collector.first_delay())


def start_pull_times(registry: Registry) -> None:
    pull_times = registry.pull_times = PullTimes(registry.storage, registry.locks)

    async def flush(_state: None) -> tuple[None, float]:
        await pull_times.flush()
        return None, registry.config.global_.pull_time_flush_interval  # read again: a reload may change it

    registry.actors.start_sweeper("pull times", flush, asyncio.get_running_loop(),
                                  registry.config.global_.pull_time_flush_interval)


async def stop(registry: Registry) -> None:
    """Once the last request is answered, before the registry closes: the pull times not written yet."""
    if registry.pull_times is not None:
        await registry.pull_times.flush()


async def purge_temporary(storage: Storage) -> None:
    try:
        removed = await storage.purge_temporary(TEMPORARY_FILE_MARGIN)
    except (OSError, StorageError) as exc:  # not fatal: the store serves without it
        log.warning("could not remove old temporary files: %s", exc)
        return
    if removed:
        log.info("removed temporary files left by an earlier process",
                 extra={"fields": {"files": removed, "older_than_seconds": TEMPORARY_FILE_MARGIN}})
