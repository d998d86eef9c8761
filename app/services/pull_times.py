"""When tags and manifest revisions were last pulled: recorded in memory, written in batches.

`[global] update_pull_time` (on by default) records every manifest GET: by tag, the tag's time; by
digest, the revision's. A HEAD is not a pull (clients HEAD to check whether an image changed, and
containerd resolves a tag with a HEAD and then GETs the manifest by digest: that GET is the pull). A
tag's last pull is the later of its own and its current revision's (`last_pulled_at`, read by
retention: app/lifecycle/retention.py).

Never a write per GET: `record` is a dict assignment on the event loop (this object belongs to the
loop; no actor, no lock, no I/O), and `flush` writes what was recorded since the last flush, one write
per key however often it was pulled, every `[global] pull_time_flush_interval` (a housekeeping
sweeper: app/housekeeping.py) and once more when the server stops. At most `max_pending` keys wait;
beyond, the least recently pulled one is dropped (and counted): a burst over millions of tags costs
bounded memory, and loses only the oldest pull times of the burst.

Storage: `<tag>/pulledat` and `<revision>/pulledat` beside distribution's layout (app/storage/layout.py),
decimal seconds since the epoch. Each is written under the lock its tag or revision is moved or deleted
under, only while the tag or revision still exists (a pull time never re-creates the folder of a tag
deleted meanwhile), and only forward (replicas flushing the same key never move it back in time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from app import tracing
from app.grammar import Digest
from app.locks.base import LockStore
from app.storage import NotFound, Storage, StorageError, layout
from app.storage import locks as lock_names

log = logging.getLogger("registry.pull_times")

DEFAULT_MAX_PENDING = 10000
# Keys written at once by one flush (the storage thread pool serves every request too).
WRITES_IN_FLIGHT = 8
# How long a flush waits for the lock of one key (a push of that tag) before trying it next time.
LOCK_WAIT = 5.0

Reference = str | Digest  # a tag, or a revision's digest


@dataclass
class FlushResult:
    written: int = 0
    gone: int = 0  # the tag or revision no longer exists: nothing to record
    unchanged: int = 0  # storage already had this time or a later one (another replica's)
    failed: int = 0  # kept for the next flush


class PullTimes:
    def __init__(self, storage: Storage, locks: LockStore, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.storage = storage
        self.locks = locks
        self.max_pending = max_pending
        # Least recently pulled first (an OrderedDict: a plain dict's first key is found by skipping
        # the slots of deleted keys, O(n) once many were dropped from the front).
        self._pending: OrderedDict[tuple[str, Reference], float] = OrderedDict()
        self._flushing = asyncio.Lock()
        self.dropped = 0  # keys dropped because `max_pending` were waiting (since start)
        self.writes = 0  # pull times written (since start)

    # --- on the request path -------------------------------------------------------------------
    def record(self, namespace: str, reference: Reference, when: float | None = None) -> None:
        """A manifest GET by tag (str) or by digest; no I/O."""
        key = (namespace, reference)
        pending = self._pending
        if key in pending:
            pending.move_to_end(key)
        elif len(pending) >= self.max_pending:
            pending.popitem(last=False)  # the least recently pulled key
            self.dropped += 1
        pending[key] = time.time() if when is None else when

    def pending(self, namespace: str, reference: Reference) -> float | None:
        """A pull time recorded and not written yet."""
        return self._pending.get((namespace, reference))

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # --- writing --------------------------------------------------------------------------------
    async def flush(self) -> FlushResult:
        """Write every pending pull time (a failed one waits for the next flush). One flush at a time,
        so a key's times reach storage in the order they were recorded."""
        async with self._flushing:
            batch, self._pending = self._pending, OrderedDict()
            result = FlushResult()
            if not batch:
                return result
            items = list(batch.items())
            started = time.monotonic()

            async def worker() -> None:
                while items:
                    (namespace, reference), when = items.pop()
                    try:
                        outcome = await self._write(namespace, reference, when)
                    except (StorageError, TimeoutError, OSError) as exc:
                        result.failed += 1
                        self._retry(namespace, reference, when)
                        log.debug("pull time of %s %s not written: %s", namespace, reference, exc)
                        continue
                    if outcome == "written":
                        result.written += 1
                    elif outcome == "gone":
                        result.gone += 1
                    else:
                        result.unchanged += 1

            # One span for the flush (housekeeping, not a request's): its storage calls are its children.
            with tracing.span("pull_times.flush", {"keys": len(batch)}):
                await asyncio.gather(*(worker() for _ in range(min(WRITES_IN_FLIGHT, len(items)))))
            self.writes += result.written
            log.info("pull times written", extra={"fields": {
                "keys": len(batch), "written": result.written, "gone": result.gone,
                "unchanged": result.unchanged, "failed": result.failed, "dropped_total": self.dropped,
                "seconds": round(time.monotonic() - started, 3)}})
            return result

    def _retry(self, namespace: str, reference: Reference, when: float) -> None:
        key = (namespace, reference)
        if key not in self._pending and len(self._pending) < self.max_pending:
            self._pending[key] = when

    async def _write(self, namespace: str, reference: Reference, when: float) -> str:
        if isinstance(reference, Digest):
            lock = lock_names.manifest(namespace, reference)
            exists = layout.revision_link(namespace, reference)
            key = layout.revision_pulled_at(namespace, reference)
        else:
            lock = lock_names.tag(namespace, reference)
            exists = layout.tag_current_link(namespace, reference)
            key = layout.tag_pulled_at(namespace, reference)
        # The lock a DELETE of the tag (or revision) holds: either it went first (then the link is
        # gone and nothing is written), or it comes after and removes the pull time with the rest.
        async with self.locks.hold(lock, wait=LOCK_WAIT):
            if await self.storage.stat(exists) is None:
                return "gone"
            if await read_pulled_at(self.storage, key) >= when:
                return "unchanged"
            await self.storage.put(key, format_time(when))
        return "written"


def format_time(when: float) -> bytes:
    return f"{when:.3f}".encode("ascii")


async def read_pulled_at(storage: Storage, key: str) -> float:
    """The pull time stored at `key`; 0 when there is none (or it is unreadable)."""
    try:
        text = (await storage.get(key)).decode("ascii", "replace").strip()
    except NotFound:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return value if value > 0 and value == value and value != float("inf") else 0.0


async def last_pulled_at(storage: Storage, namespace: str, tag: str, digest: Digest) -> float:
    """When the tag was last pulled: the later of a GET by the tag and a GET of its current revision
    by digest; 0 when never."""
    by_tag, by_digest = await asyncio.gather(
        read_pulled_at(storage, layout.tag_pulled_at(namespace, tag)),
        read_pulled_at(storage, layout.revision_pulled_at(namespace, digest)))
    return max(by_tag, by_digest)
