"""Upload expiry: a session untouched for `upload_timeout` expires and its data is removed (SPEC 2).

Two kinds of sessions expire. Those this process holds: the UploadActor knows when each was last
touched and hands over the idle ones, refusing them from then on. And those known only in storage
(left by a process that was killed or restarted, or by another replica): a scan of
`repositories/**/_uploads/*` finds the ones whose `startedat` and `data` are both older than the
timeout. The scan is paginated so that one run does a bounded amount of work however many namespaces
and sessions there are: it examines at most `budget` folders and sessions and returns a cursor, where
the next run resumes (a second later while a pass is unfinished, else after the sweep interval).

Storage has the last word in both cases: a folder is removed only when its files are untouched too (a
session this process thinks idle may be written through another replica). Pull-through spools
(`_uploads/fetch-<id>`) are sessions like the others here; a live fetch keeps writing to its data.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from app.services.uploads import UploadService, session_lock
from app.storage import layout

log = logging.getLogger("registry.uploads")

SWEEP_BUDGET = 2000  # folders and sessions one run examines
CONTINUE_DELAY = 1.0  # between the runs of one unfinished pass
REMOVAL_CONCURRENCY = 16
MAX_SWEEP_INTERVAL = 600.0


def sweep_interval(timeout: float) -> float:
    """How often to look: an eighth of the timeout (a session outlives it by at most that), within
    1 s and 10 min."""
    return min(max(timeout / 8, 1.0), MAX_SWEEP_INTERVAL)


@dataclass(frozen=True, order=True)
class ScanCursor:
    """Where a scan stopped: the folder last listed (its path below `repositories/`, as components,
    compared as tuples, which is depth-first order) and in it the last session examined ("" if none)."""

    path: tuple[str, ...] = ()
    upload_id: str = ""


class UploadExpiry:
    def __init__(self, uploads: UploadService, budget: int = SWEEP_BUDGET) -> None:
        self.uploads = uploads
        self.storage = uploads.storage
        self.actor = uploads.actor
        self.locks = uploads.locks
        self.budget = budget

    def first_delay(self) -> float:
        """Soon after start: sessions a killed or stopped process left in storage are swept right away
        (in bounded runs), not one interval later."""
        return CONTINUE_DELAY

    async def sweep(self, cursor: ScanCursor | None) -> tuple[ScanCursor | None, float]:
        """One run (the Sweeper's job): expire idle held sessions, then scan storage on from `cursor`."""
        timeout = self.uploads.limits.timeout
        if math.isinf(timeout):
            return None, MAX_SWEEP_INTERVAL
        deadline = time.time() - timeout
        expired: list[tuple[str, str]] = await self.actor.call("expire_idle", self.budget)
        await self._remove_held(expired, deadline)
        cursor, removed = await self.scan(cursor, self.budget - len(expired), deadline)
        if expired or removed:
            log.info("expired upload sessions", extra={"fields": {
                "held": len(expired), "stored_only": removed, "upload_timeout": timeout}})
        unfinished = cursor is not None or len(expired) >= self.budget
        return cursor, CONTINUE_DELAY if unfinished else sweep_interval(timeout)

    async def _remove_held(self, expired: list[tuple[str, str]], deadline: float) -> None:
        """Remove the folders of the sessions the actor expired, then let it forget them."""
        async def remove(namespace: str, upload_id: str) -> None:
            if await self._untouched_since(namespace, upload_id, deadline):
                await self.uploads.discard_stored(namespace, upload_id)

        try:
            for start in range(0, len(expired), REMOVAL_CONCURRENCY):
                batch = expired[start:start + REMOVAL_CONCURRENCY]
                results = await asyncio.gather(*(remove(*session) for session in batch),
                                               return_exceptions=True)
                for error in (r for r in results if isinstance(r, BaseException)):
                    # The folder stays; the scan of storage finds it again, still untouched.
                    log.warning("could not remove an expired upload session: %s", error)
        finally:
            self.actor.tell("expired", [upload_id for _, upload_id in expired])

    # --- sessions known only in storage ---------------------------------------------------------
    async def scan(self, cursor: ScanCursor | None, budget: int,
                   deadline: float) -> tuple[ScanCursor | None, int]:
        """Remove stored sessions untouched since `deadline`, examining at most `budget` folders and
        sessions after `cursor`; returns where to resume (None: the pass is complete) and how many
        were removed."""
        if budget <= 0:
            return cursor, 0
        removed = 0
        positions = self._walk(cursor or ScanCursor())
        try:
            async for position in positions:
                if position.upload_id and await self._expire_stored(position, deadline):
                    removed += 1
                budget -= 1
                if budget <= 0:
                    return position, removed
        finally:
            await positions.aclose()
        return None, removed

    async def _walk(self, start: ScanCursor) -> AsyncGenerator[ScanCursor, None]:
        """Every folder below `repositories/` and every session in their `_uploads`, depth first in
        lexical order, from just after `start`."""

        async def visit(path: tuple[str, ...]) -> AsyncIterator[ScanCursor]:
            name = "/".join(path)
            children = await self.storage.list_dir(layout.repository(name) if path else layout.REPOSITORIES)
            fresh = path > start.path  # an ancestor of start.path sorts before it: not fresh
            if fresh:
                yield ScanCursor(path)
            if path and (fresh or path == start.path) and "_uploads" in children:
                after = "" if fresh else start.upload_id
                for upload_id in await self.storage.list_dir(layout.uploads_dir(name)):
                    if upload_id > after:
                        yield ScanCursor(path, upload_id)
            for child in children:
                if child.startswith("_"):  # _manifests, _layers, _uploads: not namespaces
                    continue
                below = (*path, child)
                if below < start.path and start.path[:len(below)] != below:
                    continue  # that whole subtree was scanned before `start`
                async for position in visit(below):
                    yield position

        async for position in visit(()):
            yield position

    async def _expire_stored(self, position: ScanCursor, deadline: float) -> bool:
        namespace, upload_id = "/".join(position.path), position.upload_id
        if not await self._untouched_since(namespace, upload_id, deadline):
            return False
        # Under the session's lock, which a request rebuilding the session from storage also takes.
        async with self.locks.hold(session_lock(upload_id)):
            if await self.actor.call("holds", upload_id):
                return False  # this process has it in memory: its own idle time decides
            if not await self._untouched_since(namespace, upload_id, deadline):
                return False  # touched meanwhile (by another replica)
            await self.uploads.discard_stored(namespace, upload_id)
        return True

    async def _untouched_since(self, namespace: str, upload_id: str, deadline: float) -> bool:
        started, written = await asyncio.gather(
            self.storage.stat(layout.upload_started_at(namespace, upload_id)),
            self.storage.upload_modified(layout.upload_data(namespace, upload_id)))
        times = [t for t in (started.modified if started is not None else None, written) if t is not None]
        if not times:  # a folder with neither file (a start killed halfway): the folder's own age
            folder = await self.storage.stat(layout.upload_dir(namespace, upload_id))
            times = [folder.modified] if folder is not None else []
        return bool(times) and max(times) < deadline
