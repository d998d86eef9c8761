"""Online garbage collection: mark what the manifests reference, sweep the rest, while pushes go on.

One run (`collect`):

1. **Mark**, without locks: walk `repositories/` (app/lifecycle/inventory.py), read every revision's
   manifest (app/lifecycle/references.py) and every tag's `current/link`.
2. **Untagged manifests** (only with `delete_untagged`): per repository, a revision no tag names, that
   is not a child of a kept index nor a referrer of a kept subject (kept: tagged, or reached from a
   tagged one through children and referrers), older than the grace period, is removed.
3. **Blobs**: a blob that no remaining revision references (config, layers, index children, subject,
   the revision's own manifest blob), older than the grace period, is deleted with the `_layers` links
   that point at it.

The protocol that makes step 2 and 3 safe beside concurrent pushes (docs/gc.md has the argument): a
manifest PUT holds its referenced digests' blob locks **shared** (app/storage/locks.py `references`)
from checking they exist to writing its revision; mounts and pull-through links hold the blob's lock
shared too, and uploads commit under it exclusive. The sweeper deletes only under the **exclusive**
locks of a batch (`locks.sweeping`, taken in sorted order like every multi-lock holder) after looking
again, under them, at what the marking could not have seen: revisions written since (listed again
and read), links written within the grace period, blobs written within it. Whatever a PUT wrote
before the sweeper got its locks is seen; a PUT after them finds the blob gone and fails cleanly
(`MANIFEST_BLOB_UNKNOWN`: the client uploads the blob again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from app.grammar import DIGEST_RE, Digest
from app.lifecycle import inventory as inventories
from app.lifecycle import references as refs_
from app.lifecycle.checks.blobs import blob_digest
from app.lifecycle.inventory import Inventory
from app.lifecycle.references import Marking, References
from app.locks.base import Lease, LockStore, check_all, hold_all
from app.services.links import read_link
from app.storage import Storage, layout
from app.storage import locks as lock_names

log = logging.getLogger("registry.gc")

BATCH = 256  # digests re-checked and deleted under one set of exclusive locks
LOCK_WAIT = 120.0
READS_IN_FLIGHT = 16

# (namespace) -> None: the run changed what the namespace holds (the server drops its cached view and
# tells the other replicas).
Changed = Callable[[str], Awaitable[None]]


@dataclass
class GCOptions:
    grace_period: float = 3600.0
    delete_untagged: bool = False
    dry_run: bool = False


@dataclass
class GCResult:
    dry_run: bool
    started_at: float = field(default_factory=time.time)
    seconds: float = 0.0
    repositories: int = 0
    manifests_examined: int = 0
    manifests_deleted: int = 0
    blobs_examined: int = 0
    blobs_deleted: int = 0
    bytes_reclaimed: int = 0
    links_deleted: int = 0
    # Candidates found referenced, linked or written again when looked at under their locks.
    kept_on_recheck: int = 0
    mark_seconds: float = 0.0  # listing the repositories, reading every manifest and tag
    lock_wait_seconds: float = 0.0  # waiting for the exclusive locks of the batches
    deleted_manifests: list[tuple[str, str]] = field(default_factory=list)  # (namespace, digest)
    deleted_blobs: list[str] = field(default_factory=list)

    def as_fields(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "seconds": round(self.seconds, 3), "repositories": self.repositories,
                "manifests_examined": self.manifests_examined, "manifests_deleted": self.manifests_deleted,
                "blobs_examined": self.blobs_examined, "blobs_deleted": self.blobs_deleted,
                "bytes_reclaimed": self.bytes_reclaimed, "links_deleted": self.links_deleted,
                "kept_on_recheck": self.kept_on_recheck, "mark_seconds": round(self.mark_seconds, 3),
                "lock_wait_seconds": round(self.lock_wait_seconds, 3)}


async def collect(storage: Storage, locks: LockStore, options: GCOptions,
                  changed: Changed | None = None) -> GCResult:
    """One mark and sweep of `storage` (see the module docstring). The caller holds the leader lock."""
    result = GCResult(options.dry_run)
    started = time.monotonic()
    deadline = time.time() - options.grace_period
    inventory = await inventories.take(storage)
    marking = await refs_.mark(storage, inventory)
    tags = await _current_tags(storage, inventory)
    result.mark_seconds = time.monotonic() - started
    result.repositories = len(inventory.repositories)
    result.manifests_examined = sum(len(repo.revisions) for repo in inventory.repositories.values())
    run = _Run(storage, locks, options, deadline, inventory, marking, tags, result, changed)
    if options.delete_untagged:
        for namespace in sorted(inventory.repositories):
            await run.untagged(namespace)
    await run.blobs()
    result.seconds = time.monotonic() - started
    return result


async def _current_tags(storage: Storage, inventory: Inventory) -> dict[str, dict[str, Digest]]:
    """Every tag's current digest, per namespace."""
    jobs = asyncio.Semaphore(READS_IN_FLIGHT)
    found: dict[str, dict[str, Digest]] = {name: {} for name in inventory.repositories}

    async def read(namespace: str, tag: str) -> None:
        async with jobs:
            digest = await read_link(storage, layout.tag_current_link(namespace, tag))
        if digest is not None:
            found[namespace][tag] = digest

    await asyncio.gather(*(read(repo.name, tag)
                           for repo in inventory.repositories.values() for tag in repo.tags))
    return found


async def _revisions_now(storage: Storage, namespace: str) -> set[Digest]:
    """The revision folders of a namespace, listed now."""
    found: set[Digest] = set()
    for algorithm in await storage.list_dir(f"{layout.manifests_dir(namespace)}/revisions"):
        for encoded in await storage.list_dir(layout.revisions_dir(namespace, algorithm)):
            text = f"{algorithm}:{encoded}"
            if DIGEST_RE.fullmatch(text):
                found.add(Digest.parse(text))
    return found


async def _layers_now(storage: Storage, namespace: str) -> set[Digest]:
    found: set[Digest] = set()
    base = f"{layout.repository(namespace)}/_layers"
    for algorithm in await storage.list_dir(base):
        for encoded in await storage.list_dir(f"{base}/{algorithm}"):
            text = f"{algorithm}:{encoded}"
            if DIGEST_RE.fullmatch(text):
                found.add(Digest.parse(text))
    return found


def _batches(digests: Iterable[Digest]) -> list[list[Digest]]:
    ordered = sorted(set(digests), key=str)
    return [ordered[i:i + BATCH] for i in range(0, len(ordered), BATCH)]


@dataclass
class _Run:
    storage: Storage
    locks: LockStore
    options: GCOptions
    deadline: float
    inventory: Inventory
    marking: Marking
    tags: dict[str, dict[str, Digest]]
    result: GCResult
    changed: Changed | None
    removed: set[tuple[str, Digest]] = field(default_factory=set)  # revisions this run deleted

    @contextlib.asynccontextmanager
    async def _exclusive(self, batch: list[Digest]) -> AsyncIterator[list[Lease]]:
        """The exclusive locks of a batch (blob and stripe locks, sorted), the wait counted."""
        asked = time.monotonic()
        async with hold_all(self.locks, lock_names.sweeping(batch), wait=LOCK_WAIT) as held:
            self.result.lock_wait_seconds += time.monotonic() - asked
            yield held

    async def _references(self, namespace: str, digest: Digest) -> References | None:
        """A revision's references: from the marking, else read now (a revision written since)."""
        key = (namespace, digest)
        found = self.marking.references.get(key)
        if found is None and key not in self.marking.missing:
            found = await refs_.read_revision(self.storage, namespace, digest, True)
            if found is None:
                self.marking.missing.add(key)
            else:
                self.marking.references[key] = found
        return found

    async def _notify(self, namespace: str) -> None:
        if self.changed is not None and not self.options.dry_run:
            try:
                await self.changed(namespace)
            except Exception:  # a cache that cannot be told must not stop the run
                log.exception("garbage collection: could not announce the change of %s", namespace)

    # --- untagged manifests -------------------------------------------------------------------
    def _kept(self, namespace: str, revisions: set[Digest], tagged: set[Digest]) -> set[Digest]:
        """Tagged revisions and everything they reach through children and referrers (transitively).
        A revision whose manifest we could not read is kept (we cannot tell what it reaches)."""
        referrers: dict[Digest, list[Digest]] = {}
        for digest in revisions:
            found = self.marking.references.get((namespace, digest))
            if found is not None and found.subject is not None:
                referrers.setdefault(found.subject, []).append(digest)
        for subject, referrer in self.inventory.repository(namespace).referrers:
            if referrer in revisions:
                referrers.setdefault(subject, []).append(referrer)
        kept: set[Digest] = set()
        todo = [d for d in revisions if d in tagged
                or (namespace, d) not in self.marking.references]
        while todo:
            digest = todo.pop()
            if digest in kept:
                continue
            kept.add(digest)
            found = self.marking.references.get((namespace, digest))
            if found is not None:
                todo.extend(child for child in (*found.children, *found.others) if child in revisions)
            todo.extend(referrers.get(digest, ()))
        return kept

    async def untagged(self, namespace: str) -> None:
        repo = self.inventory.repository(namespace)
        revisions = set(repo.revisions)
        tagged = set(self.tags.get(namespace, {}).values())
        candidates = revisions - self._kept(namespace, revisions, tagged)
        for batch in _batches(candidates):
            async with self._exclusive(batch) as held:
                # Looked at again under the locks: tags moved and revisions written since the marking.
                now = await _revisions_now(self.storage, namespace)
                for digest in now - revisions:
                    await self._references(namespace, digest)
                tags_now = await self._tags_now(namespace)
                # Every revision outside this batch is taken as kept: what it reaches stays.
                kept = self._kept(namespace, now, set(tags_now) | (now - set(batch)))
                for digest in batch:
                    if digest in kept or digest not in now:
                        self.result.kept_on_recheck += digest in kept
                        continue
                    stat = await self.storage.stat(layout.revision_link(namespace, digest))
                    if stat is not None and stat.modified >= self.deadline:
                        self.result.kept_on_recheck += 1
                        continue
                    check_all(held)
                    await self._delete_revision(namespace, digest)
            await self._notify(namespace)

    async def _tags_now(self, namespace: str) -> set[Digest]:
        names = await self.storage.list_dir(layout.tags_dir(namespace))
        links = await asyncio.gather(
            *(read_link(self.storage, layout.tag_current_link(namespace, name)) for name in names))
        return {digest for digest in links if digest is not None}

    async def _delete_revision(self, namespace: str, digest: Digest) -> None:
        self.result.manifests_deleted += 1
        self.result.deleted_manifests.append((namespace, str(digest)))
        self.removed.add((namespace, digest))
        if self.options.dry_run:
            return
        async with self.locks.hold(lock_names.manifest(namespace, digest), wait=LOCK_WAIT):
            found = self.marking.references.get((namespace, digest))
            if found is not None and found.subject is not None:
                await self.storage.delete_tree(
                    layout.referrer_link(namespace, found.subject, digest).rsplit("/", 1)[0])
            await self.storage.delete_tree(layout.revision_dir(namespace, digest))

    # --- blobs --------------------------------------------------------------------------------
    def _referenced(self) -> set[Digest]:
        """What the revisions that remain reference, and the revisions themselves. Tag links count
        (a tag naming a manifest whose revision link is lost: scrub can still repair it), referrer
        links too; a tag's history (`index/`) does not."""
        marked: set[Digest] = set()
        for repo in self.inventory.repositories.values():
            for digest in repo.revisions:
                if (repo.name, digest) in self.removed:
                    continue
                marked.add(digest)
                found = self.marking.references.get((repo.name, digest))
                if found is not None:
                    marked.update(found.all())
            for subject, referrer in repo.referrers:
                if (repo.name, referrer) not in self.removed:
                    marked.update((subject, referrer))
        for current in self.tags.values():
            marked.update(current.values())
        return marked

    async def blobs(self) -> None:
        marked = self._referenced()
        candidates: dict[Digest, int] = {}
        async for key in self.storage.walk(layout.BLOBS):
            digest = blob_digest(key)
            if digest is None:
                continue
            self.result.blobs_examined += 1
            if digest in marked:
                continue
            stat = await self.storage.stat(key)
            if stat is not None and stat.modified < self.deadline:
                candidates[digest] = stat.size
        for batch in _batches(candidates):
            await self._sweep(batch, candidates)

    async def _sweep(self, batch: list[Digest], sizes: dict[Digest, int]) -> None:
        wanted = set(batch)
        async with self._exclusive(batch) as held:
            # Under the locks, what the marking could not see: revisions written since it (in any
            # repository, including new ones), links written within the grace period.
            names = sorted(set(await inventories.namespaces(self.storage)) | set(self.inventory.repositories))
            links: dict[Digest, list[str]] = {}
            for namespace in names:
                for digest in await _revisions_now(self.storage, namespace):
                    if (namespace, digest) in self.removed:
                        continue  # deleted by this run (or, in a dry run, would be)
                    wanted.discard(digest)  # a manifest (its own blob) of some repository
                    found = await self._references(namespace, digest)
                    if found is not None:
                        wanted.difference_update(found.all())
                for digest in (await _layers_now(self.storage, namespace)) & wanted:
                    links.setdefault(digest, []).append(namespace)
            for digest in batch:
                if digest not in wanted:
                    self.result.kept_on_recheck += 1
                    continue
                stat = await self.storage.stat(layout.blob_data(digest))
                if stat is None:
                    continue  # gone already (another sweeper, scrub)
                linked = links.get(digest, [])
                if stat.modified >= self.deadline or await self._freshly_linked(digest, linked):
                    self.result.kept_on_recheck += 1
                    continue
                self.result.blobs_deleted += 1
                self.result.bytes_reclaimed += stat.size or sizes.get(digest, 0)
                self.result.deleted_blobs.append(str(digest))
                self.result.links_deleted += len(links.get(digest, []))
                if self.options.dry_run:
                    continue
                check_all(held)
                # Links first: a link whose blob is gone would be followed; a blob without links is
                # only garbage the next run takes (a run killed in between loses nothing).
                for namespace in links.get(digest, []):
                    await self.storage.delete(layout.layer_link(namespace, digest))
                await self.storage.delete_tree(layout.blob_dir(digest))
        for namespace in sorted({ns for digest in batch for ns in links.get(digest, [])}):
            await self._notify(namespace)

    async def _freshly_linked(self, digest: Digest, namespaces: list[str]) -> bool:
        """A link written within the grace period (an upload's commit onto a stored blob, a mount):
        its client is about to push a manifest that references the blob."""
        for namespace in namespaces:
            stat = await self.storage.stat(layout.layer_link(namespace, digest))
            if stat is not None and stat.modified >= self.deadline:
                return True
        return False
