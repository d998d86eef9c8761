"""`--uploads AGE`: upload sessions untouched for AGE removed; orphan S3 multipart uploads aborted.

A session is aged as the server's expiry ages it (app/services/upload_expiry.py): by the newer of its
`startedat` and its data's last `close()`, else by its folder. It is removed under its session lock
(the one a request rebuilding it from storage takes), after checking again that nothing touched it,
through the driver's writer `cancel()` (on S3 that aborts its multipart upload) and then its folder.

A multipart upload is an orphan when no session state names it and either it was initiated more than
AGE ago, or it sits at a session's key whose session is gone (no `startedat`, no state: a new session
writes its `startedat` before it creates any upload). A live session's own upload is left to the
session's age; a commit's or a copy's upload at a blob key only goes when older than AGE.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from app.lifecycle.context import ScrubContext
from app.lifecycle.locking import LOCK_WAIT
from app.lifecycle.report import CheckReport, Finding
from app.storage import NotFound, Storage, StorageError, layout
from app.storage import locks as lock_names

IN_FLIGHT = 8


class MultipartStore(Protocol):
    """What an object store driver offers scrub (app/storage/s3.py)."""

    async def multipart_uploads(self, prefix: str = "") -> list[tuple[str, str, float]]: ...

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None: ...


async def run(ctx: ScrubContext, report: CheckReport, age: float) -> None:
    deadline = time.time() - age
    sessions = ctx.inventory.upload_sessions()
    ctx.progress.begin("uploads", len(sessions))
    jobs = asyncio.Semaphore(IN_FLIGHT)

    async def one(namespace: str, upload_id: str) -> None:
        async with jobs:
            await _session(ctx, report, namespace, upload_id, deadline)
        ctx.progress.advance()

    try:
        await asyncio.gather(*(one(namespace, upload_id) for namespace, upload_id in sessions))
    finally:
        ctx.progress.end()
    report.examined = len(sessions)
    for driver in multipart_stores(ctx.storage):
        await _orphan_multipart_uploads(ctx, report, driver, deadline)


async def untouched_since(storage: Storage, namespace: str, upload_id: str, deadline: float) -> bool:
    started, written = await asyncio.gather(
        storage.stat(layout.upload_started_at(namespace, upload_id)),
        storage.upload_modified(layout.upload_data(namespace, upload_id)))
    times = [t for t in (started.modified if started is not None else None, written) if t is not None]
    if not times:  # neither file (a start killed halfway, or leftovers): the folder's own age
        folder = await storage.stat(layout.upload_dir(namespace, upload_id))
        times = [folder.modified] if folder is not None else []
        if not times:  # an object store has no folders: the age of any object in it
            async for key in storage.walk(layout.upload_dir(namespace, upload_id)):
                stat = await storage.stat(key)
                if stat is not None:
                    times.append(stat.modified)
    return bool(times) and max(times) < deadline


async def _session(ctx: ScrubContext, report: CheckReport, namespace: str, upload_id: str,
                   deadline: float) -> None:
    storage = ctx.storage
    if not await untouched_since(storage, namespace, upload_id, deadline):
        return
    finding = report.add(Finding("stale_upload", layout.upload_dir(namespace, upload_id),
                                 f"upload session {upload_id} untouched since before the cut-off",
                                 namespace=namespace))
    if ctx.dry_run:
        return
    try:
        async with ctx.locks.hold(lock_names.upload(upload_id), wait=LOCK_WAIT):
            if not await untouched_since(storage, namespace, upload_id, deadline):
                report.resolve(finding, False, "touched while scrub looked at it: kept")
                return
            try:
                writer = await storage.upload_writer(layout.upload_data(namespace, upload_id))
            except NotFound:
                writer = None
            if writer is not None:
                await writer.cancel()  # S3: aborts the session's multipart upload
            await storage.delete_tree(layout.upload_dir(namespace, upload_id))
    except (StorageError, TimeoutError) as exc:
        report.resolve(finding, False, str(exc) or "its lock is busy")
        return
    report.resolve(finding, True)


def multipart_stores(storage: Storage) -> list[Any]:
    """The drivers below `storage` that keep multipart uploads (S3)."""
    from app.storage.routed import RoutedStorage

    drivers = [storage.blobs, storage.metadata] if isinstance(storage, RoutedStorage) else [storage]
    unique = list({id(d): d for d in drivers}.values())
    return [d for d in unique if hasattr(d, "multipart_uploads") and hasattr(d, "abort_multipart_upload")]


def _session_of(key: str) -> tuple[str, str] | None:
    """(namespace, upload id) when `key` is an upload session's data key."""
    prefix = layout.REPOSITORIES + "/"
    if not key.startswith(prefix) or not key.endswith("/data") or "/_uploads/" not in key:
        return None
    namespace, _, rest = key[len(prefix):].partition("/_uploads/")
    upload_id, _, tail = rest.partition("/")
    return (namespace, upload_id) if upload_id and tail == "data" else None


async def _orphan_multipart_uploads(ctx: ScrubContext, report: CheckReport, driver: Any,
                                    deadline: float) -> None:
    from app.storage.s3_writers import session_upload_id  # only for an S3 store

    uploads: list[tuple[str, str, float]] = await driver.multipart_uploads("")
    report.unit = "upload sessions and multipart uploads"
    report.examined += len(uploads)
    for key, upload_id, initiated in uploads:
        named = await session_upload_id(driver, key)
        if named == upload_id:
            continue  # a live session's: its age is the session's
        session = _session_of(key)
        if initiated < deadline:
            why = "initiated before the cut-off, and no upload session names it"
        elif session is not None and named is None and not await _session_exists(driver, *session):
            why = "its upload session is gone"
        else:
            continue
        finding = report.add(Finding("orphan_multipart_upload", key, f"multipart upload {upload_id}: {why}",
                                     namespace=session[0] if session else None))
        if ctx.dry_run:
            continue
        try:
            if session is not None:
                async with ctx.locks.hold(lock_names.upload(session[1]), wait=LOCK_WAIT):
                    if await session_upload_id(driver, key) == upload_id:
                        report.resolve(finding, False, "a session took it up meanwhile: kept")
                        continue
                    await driver.abort_multipart_upload(key, upload_id)
            else:
                await driver.abort_multipart_upload(key, upload_id)
        except (StorageError, TimeoutError) as exc:
            report.resolve(finding, False, str(exc) or "its lock is busy")
            continue
        report.resolve(finding, True)


async def _session_exists(driver: Storage, namespace: str, upload_id: str) -> bool:
    if await driver.stat(layout.upload_started_at(namespace, upload_id)) is not None:
        return True
    return await driver.upload_modified(layout.upload_data(namespace, upload_id)) is not None
