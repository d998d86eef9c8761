"""Deleting a whole repository: its tags, manifest revisions, referrer links, upload sessions and
`_layers` links (the blobs themselves are shared by content and reclaimed later by the GC).

One implementation, used by `DELETE /v2/<name>/_registry/repository` (app/http/repository.py) and by
`registry delete-repository` (app/commands/delete_repository.py), with the locks every writer takes,
so that it runs safely beside pushes in any process sharing the lock store. What existed when the
deletion surveyed the repository goes; a push racing the deletion either went before it (and goes
with it) or wrote after the survey (and survives whole, with every blob it references):

1. Revisions, a batch at a time, under the batch's blob locks held exclusive (the GC protocol,
   docs/gc.md: a manifest PUT holds those locks shared from checking what it references to writing
   its revision) and then each revision's manifest lock; under the blob locks the revisions written
   since the survey are read, and a revision one of them references (an index's child) is kept. The
   tags naming a revision go with it, each under its tag lock, before the revision does: a tag never
   names a removed revision.
2. Tags left over (moved since the survey), each under its tag lock: removed unless the revision it
   names exists (a racing push's tag).
3. Referrer links whose referrer revision is gone, under that revision's manifest lock.
4. Upload sessions, each under its session lock (an S3 multipart upload is aborted through the
   driver's upload writer). A session a request holds for longer than the lock wait is left (busy).
   Pull-through spools (`fetch-…`) belong to a live upstream fetch and are left to upload expiry.
5. `_layers` links, a batch at a time under their blob locks held exclusive: a link goes unless a
   revision present now references its digest (a racing push that already wrote its revision keeps
   its links; one that had not is refused, MANIFEST_BLOB_UNKNOWN, and wholly fails).
6. The empty folders left (on a filesystem), the repository's own folder last, only when empty:
   nested repositories (`a/b/c` below `a/b`) are other repositories and are never touched.

Every step leaves a consistent store, so an interrupted deletion (a crash, a lost lock) is finished by
running it again. A pull-through repository's deletion removes the local cache only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from app import errors
from app.grammar import Digest
from app.lifecycle.references import References, read_revision
from app.locks.base import DEFAULT_WAIT, Lease, LockStore, LockTimeout, check_all, hold_all
from app.services.links import read_link
from app.services.uploads import session_lock
from app.storage import NotFound, Storage, layout
from app.storage import locks as lock_names

if TYPE_CHECKING:
    from app.actors.bridge import ActorHandle
    from app.coherence import Coherence

log = logging.getLogger("registry.repositories")

# Digests whose blob locks one batch holds exclusive at once: few enough that a push waiting for one
# of them waits for one batch only, enough that the re-listing of revisions per batch stays cheap.
LOCK_BATCH = 64
IN_FLIGHT = 8  # storage operations one deletion has in flight
# What a repository folder holds of its own; everything else in it is a nested repository.
OWN_FOLDERS = ("_manifests", "_layers", "_uploads")
SPOOL_PREFIX = "fetch-"  # pull-through spools in `_uploads` (app/services/pull_blobs.py)

T = TypeVar("T")


def holds_repository(children: Iterable[str]) -> bool:
    """Whether a folder's children make it a repository (not only a parent of nested ones)."""
    return any(child in OWN_FOLDERS for child in children)


@dataclass
class Survey:
    """What a repository holds: the deletion removes this, and keeps what is written after it."""

    revisions: list[Digest] = field(default_factory=list)
    tags: dict[str, Digest | None] = field(default_factory=dict)  # tag -> the digest it names
    uploads: list[str] = field(default_factory=list)
    layers: list[Digest] = field(default_factory=list)


@dataclass
class DeletionReport:
    name: str
    dry_run: bool
    tags: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    referrers: int = 0
    uploads: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    # Written or needed by a push that raced the deletion: left in place, whole.
    kept_manifests: list[str] = field(default_factory=list)
    kept_tags: list[str] = field(default_factory=list)
    kept_layers: list[str] = field(default_factory=list)
    busy_uploads: list[str] = field(default_factory=list)
    removed: bool = False  # nothing of the repository is left

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "dry_run": self.dry_run, "removed": self.removed,
                "tags": sorted(self.tags), "manifests": sorted(self.manifests), "referrers": self.referrers,
                "uploads": sorted(self.uploads), "layers": sorted(self.layers),
                "kept": {"manifests": sorted(self.kept_manifests), "tags": sorted(self.kept_tags),
                         "layers": sorted(self.kept_layers), "uploads": sorted(self.busy_uploads)}}

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        text = (f"{self.name}: {verb} {len(self.tags)} tags, {len(self.manifests)} manifests, "
                f"{len(self.uploads)} upload sessions, {len(self.layers)} layer links")
        if not self.dry_run and self.referrers:
            text += f", {self.referrers} referrer links"
        kept = [f"{len(items)} {what}" for what, items in (
            ("manifests", self.kept_manifests), ("tags", self.kept_tags), ("layer links", self.kept_layers),
            ("busy upload sessions", self.busy_uploads)) if items]
        if kept:
            text += f"; kept (written by pushes meanwhile): {', '.join(kept)}"
        return text


class RepositoryDeletion:
    """Deletes repositories of one store, with the store's lock store. In the server, `index` (the
    ManifestIndexActor), `upload_actor` and `coherence` are told what went; the command line gives
    what it has (an index of its own for the coherence announcement, no upload actor)."""

    def __init__(self, storage: Storage, locks: LockStore, *, index: ActorHandle | None = None,
                 upload_actor: ActorHandle | None = None, coherence: Coherence | None = None,
                 lock_wait: float = DEFAULT_WAIT) -> None:
        self.storage = storage
        self.locks = locks
        self.index = index
        self.upload_actor = upload_actor
        self.coherence = coherence
        self.lock_wait = lock_wait

    # --- what there is ----------------------------------------------------------------------------
    async def exists(self, name: str) -> bool:
        return holds_repository(await self.storage.list_dir(layout.repository(name)))

    async def survey(self, name: str) -> Survey:
        """What the repository holds; NAME_UNKNOWN when it holds nothing of its own."""
        if not await self.exists(name):
            raise errors.NameUnknown(f"repository {name} is not known to the registry")
        revisions, layers, tag_names, uploads = await asyncio.gather(
            self._digests(f"{layout.manifests_dir(name)}/revisions"),
            self._digests(f"{layout.repository(name)}/_layers"),
            self.storage.list_dir(layout.tags_dir(name)),
            self.storage.list_dir(layout.uploads_dir(name)))
        targets = await _each(tag_names,
                              lambda tag: read_link(self.storage, layout.tag_current_link(name, tag)))
        return Survey(revisions, dict(zip(tag_names, targets, strict=True)),
                      [u for u in uploads if not u.startswith(SPOOL_PREFIX)], layers)

    async def _digests(self, folder: str) -> list[Digest]:
        """The digests of a `<folder>/<algorithm>/<encoded>` tree (revisions, layer links)."""
        found: list[Digest] = []
        for algorithm in await self.storage.list_dir(folder):
            for encoded in await self.storage.list_dir(f"{folder}/{algorithm}"):
                try:
                    found.append(Digest.parse(f"{algorithm}:{encoded}"))
                except errors.RegistryError:
                    continue  # not ours (a driver's side object, a stray file)
        return found

    # --- deleting ---------------------------------------------------------------------------------
    async def delete(self, name: str, *, dry_run: bool = False) -> DeletionReport:
        survey = await self.survey(name)
        report = DeletionReport(name, dry_run)
        if dry_run:
            report.tags = sorted(survey.tags)
            report.manifests = [str(d) for d in survey.revisions]
            report.uploads = list(survey.uploads)
            report.layers = [str(d) for d in survey.layers]
            return report
        try:
            await self._delete_revisions(name, survey, report)
            await self._delete_tags(name, report)
            await self._delete_referrers(name, report)
            await self._cancel_uploads(name, survey.uploads, report)
            await self._unlink_layers(name, survey.layers, report)
            await self._remove_folders(name)
            report.removed = not await self.exists(name)
        finally:
            await self._announce(name)  # also after a failure: some of it may be gone already
        log.info("deleted repository", extra={"fields": {
            "namespace": name, "tags": len(report.tags), "manifests": len(report.manifests),
            "uploads": len(report.uploads), "layers": len(report.layers),
            "kept_manifests": len(report.kept_manifests), "removed": report.removed}})
        return report

    async def _delete_revisions(self, name: str, survey: Survey, report: DeletionReport) -> None:
        tags_of: dict[Digest, list[str]] = {}
        for tag, target in survey.tags.items():
            if target is not None:
                tags_of.setdefault(target, []).append(tag)
        surveyed = set(survey.revisions)
        known: dict[Digest, References | None] = {}
        for batch in _batches(survey.revisions):
            async with hold_all(self.locks, lock_names.sweeping(batch), wait=self.lock_wait) as held:
                # Revisions written since the survey (racing pushes) stay, and so does what they need.
                needed = await self._referenced(name, known, skip=surveyed)
                await _each(batch, partial(self._delete_revision, name, tags_of, needed, held, report))

    async def _delete_revision(self, name: str, tags_of: dict[Digest, list[str]], needed: set[Digest],
                               held: list[Lease], report: DeletionReport, digest: Digest) -> None:
        if digest in needed:
            report.kept_manifests.append(str(digest))
            return
        async with self.locks.hold(lock_names.manifest(name, digest), wait=self.lock_wait):
            for tag in tags_of.get(digest, []):
                async with self.locks.hold(lock_names.tag(name, tag), wait=self.lock_wait):
                    # Moved by a push since the survey: step 2 decides about it.
                    if await read_link(self.storage, layout.tag_current_link(name, tag)) != digest:
                        continue
                    check_all(held)
                    await self.storage.delete_tree(layout.tag_dir(name, tag))
                    report.tags.append(tag)
            check_all(held)
            await self.storage.delete_tree(layout.revision_dir(name, digest))
        report.manifests.append(str(digest))

    async def _delete_tags(self, name: str, report: DeletionReport) -> None:
        async def delete(tag: str) -> None:
            async with self.locks.hold(lock_names.tag(name, tag), wait=self.lock_wait):
                target = await read_link(self.storage, layout.tag_current_link(name, tag))
                exists = target is not None and await self.storage.exists(layout.revision_link(name, target))
                if exists:
                    report.kept_tags.append(tag)
                    return
                await self.storage.delete_tree(layout.tag_dir(name, tag))
            report.tags.append(tag)  # a tag phase 1 removed is not listed any more

        await _each(await self.storage.list_dir(layout.tags_dir(name)), delete)

    async def _delete_referrers(self, name: str, report: DeletionReport) -> None:
        """Referrer links (`referrers/<alg>/<subject>/<alg>/<referrer>/link`) of removed revisions."""
        links: list[tuple[str, Digest]] = []
        async for key in self.storage.walk(f"{layout.manifests_dir(name)}/referrers"):
            parts = key.split("/")
            if parts[-1] != "link" or len(parts) < 3:
                continue
            try:
                links.append((key, Digest.parse(f"{parts[-3]}:{parts[-2]}")))
            except errors.RegistryError:
                continue

        async def delete(link: tuple[str, Digest]) -> None:
            key, referrer = link
            async with self.locks.hold(lock_names.manifest(name, referrer), wait=self.lock_wait):
                if await self.storage.stat(layout.revision_link(name, referrer)) is None:
                    await self.storage.delete_tree(key.rsplit("/", 1)[0])
                    report.referrers += 1

        await _each(links, delete)

    async def _cancel_uploads(self, name: str, uploads: list[str], report: DeletionReport) -> None:
        async def cancel(upload_id: str) -> None:
            try:
                async with self.locks.hold(session_lock(upload_id), wait=self.lock_wait):
                    try:
                        writer = await self.storage.upload_writer(layout.upload_data(name, upload_id))
                    except NotFound:
                        pass  # started, nothing written yet
                    else:
                        await writer.cancel()  # an object store's multipart upload is aborted
                    await self.storage.delete_tree(layout.upload_dir(name, upload_id))
            except LockTimeout:
                report.busy_uploads.append(upload_id)
                return
            if self.upload_actor is not None:
                self.upload_actor.tell("forget", upload_id)
            report.uploads.append(upload_id)

        await _each(uploads, cancel)

    async def _unlink_layers(self, name: str, layers: list[Digest], report: DeletionReport) -> None:
        known: dict[Digest, References | None] = {}
        for batch in _batches(layers):
            async with hold_all(self.locks, lock_names.sweeping(batch), wait=self.lock_wait) as held:
                # Under the exclusive locks no PUT is between checking a link and writing its
                # revision: every revision that may reference one of these is in storage now.
                needed = await self._referenced(name, known)
                await _each(batch, partial(self._unlink_layer, name, needed, held, report))

    async def _unlink_layer(self, name: str, needed: set[Digest], held: list[Lease], report: DeletionReport,
                            digest: Digest) -> None:
        if digest in needed:
            report.kept_layers.append(str(digest))
            return
        check_all(held)
        await self.storage.delete_tree(layout.layer_link(name, digest).rsplit("/", 1)[0])
        report.layers.append(str(digest))

    async def _referenced(self, name: str, known: dict[Digest, References | None],
                          skip: set[Digest] | None = None) -> set[Digest]:
        """Everything the revisions present now (but those in `skip`) reference, and their own
        digests. `known` keeps what was read (a revision's references never change)."""
        present = [d for d in await self._digests(f"{layout.manifests_dir(name)}/revisions")
                   if skip is None or d not in skip]
        unread = [d for d in present if d not in known]

        async def read(digest: Digest) -> None:
            known[digest] = await read_revision(self.storage, name, digest, stored_media_type=True)

        await _each(unread, read)
        needed: set[Digest] = set(present)
        for digest in present:
            refs = known[digest]
            if refs is not None:
                needed.update(refs.all())
        return needed

    async def _remove_folders(self, name: str) -> None:
        """Empty folders only (rmdir): what a concurrent push writes keeps its folders. Then the
        repository's folder and its parents up to `repositories/`, each only when empty."""
        repository = layout.repository(name)
        for own in OWN_FOLDERS:
            await self.storage.remove_empty_folders(f"{repository}/{own}")
        parts = name.split("/")
        for depth in range(len(parts), 0, -1):
            await self.storage.remove_empty_folders(layout.repository("/".join(parts[:depth])), below=False)

    async def _announce(self, name: str) -> None:
        """Nothing cached of the repository is served any more, here or on another replica."""
        if self.index is not None:
            self.index.tell("invalidate", name)
            self.index.tell("invalidate_catalog")
        if self.coherence is not None and self.coherence.shared:
            await self.coherence.changed(name, new_namespace=True)  # bumps the catalog's version too


def _batches(items: list[T]) -> list[list[T]]:
    return [items[start:start + LOCK_BATCH] for start in range(0, len(items), LOCK_BATCH)]


async def _each(items: Sequence[T], work: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """`work` on every item, at most IN_FLIGHT at once; results in order; the first error raised
    once the others settled (no work is left running)."""
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def one(item: T) -> Any:
        async with limit:
            return await work(item)

    results = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
