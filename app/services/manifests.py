"""Manifests, tags, referrers and the catalog: storage is the truth, the index actor the cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from app import errors, manifest
from app.actors.bridge import ActorHandle
from app.actors.manifest_index import page
from app.coherence import Coherence
from app.grammar import Digest
from app.immutable import ImmutableTags
from app.locks.base import LockStore, check_all, hold_all
from app.services.blobs import BlobService
from app.services.links import read_link, write_link
from app.storage import NotFound, Storage, layout
from app.storage import locks as lock_names

# Reference checks one PUT has in flight: the storage thread pool is shared by every request, and a
# manifest with thousands of layers must not queue thousands of stats ahead of everyone else's.
REFERENCE_CHECKS_IN_FLIGHT = 8
# Hashing and parsing a manifest larger than this (~1 ms of CPU per 10 KiB) runs on a thread of its
# own, so the event loop keeps serving other requests meanwhile. One thread: the work holds the GIL,
# more threads would not be faster, and each would take the GIL from the loop in turn (json.loads of
# 4 MiB holds it ~50 ms in one piece): concurrent huge PUTs queue there, small ones parse at once.
PARSE_IN_THREAD_ABOVE = 64 * 1024
_PARSER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="manifest-parse")  # threads start lazily


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: Digest
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class PutResult:
    digest: Digest
    subject: Digest | None


class ManifestService:
    # Replaced from the configuration at start and on every reload (see Registry.reconfigure).
    immutable_tags: ImmutableTags | None = None
    # Replicas sharing one store agree through it (app/coherence.py); one process needs nothing.
    coherence: Coherence = Coherence()

    def __init__(self, storage: Storage, index: ActorHandle, locks: LockStore, blobs: BlobService,
                 max_manifest_size: int, max_manifest_references: int = manifest.MAX_REFERENCES) -> None:
        self.storage = storage
        self.index = index
        self.locks = locks
        self.blobs = blobs
        self.max_manifest_size = max_manifest_size
        self.max_manifest_references = max_manifest_references

    # --- reading ------------------------------------------------------------------------------
    async def resolve_tag(self, namespace: str, tag: str) -> Digest:
        await self.coherence.observe(namespace)
        cached = await self.index.call("resolve", namespace, tag)
        if cached is not None:
            return Digest.parse(cached)
        generation = await self.index.call("generation", namespace)
        digest = await read_link(self.storage, layout.tag_current_link(namespace, tag))
        if digest is None:
            raise errors.ManifestUnknown(f"manifest tagged {tag!r} is unknown in repository {namespace}")
        self.index.tell("fill_tag", namespace, tag, str(digest), generation)
        return digest

    async def get(self, namespace: str, reference: Digest | str) -> StoredManifest:
        if isinstance(reference, Digest):
            await self.coherence.observe(namespace)  # a tag's was observed by resolve_tag
        digest = reference if isinstance(reference, Digest) else await self.resolve_tag(namespace, reference)
        key = str(digest)
        media_type = await self.index.call("revision", namespace, key)
        generation = None if media_type is not None else await self.index.call("generation", namespace)
        if media_type is None and await self.storage.stat(layout.revision_link(namespace, digest)) is None:
            raise errors.ManifestUnknown(f"manifest {digest} is unknown in repository {namespace}")
        body = await self.index.call("body", key)
        if body is None:
            try:
                body = await self.storage.get(layout.blob_data(digest))
            except NotFound:
                raise errors.ManifestUnknown(f"manifest {digest} is missing from storage") from None
            self.index.tell("keep_body", key, body)
        if media_type is None:
            try:
                media_type = (await self.storage.get(layout.revision_media_type(namespace, digest))).decode()
            except NotFound:
                media_type = manifest.sniff_media_type(body)
            self.index.tell("fill_revision", namespace, key, media_type, generation)
        return StoredManifest(digest, media_type, body)

    # --- writing ------------------------------------------------------------------------------
    async def put(self, namespace: str, reference: Digest | str, body: bytes, content_type: str | None,
                  extra_tags: list[str]) -> PutResult:
        if len(body) > self.max_manifest_size:
            raise errors.SizeInvalid(
                f"manifest is {len(body)} bytes, more than max_manifest_size ({self.max_manifest_size})",
                status=413)
        if len(body) > PARSE_IN_THREAD_ABOVE:
            parsed = await asyncio.get_running_loop().run_in_executor(
                _PARSER, self._validate, reference, body, content_type)
        else:
            parsed = self._validate(reference, body, content_type)
        digest = parsed.digest
        tags = list(dict.fromkeys(([] if isinstance(reference, Digest) else [reference]) + extra_tags))
        rules = self.immutable_tags
        immutable = {tag for tag in tags if rules is not None and rules.applies(namespace, tag)}
        for tag in immutable:  # fail before writing anything; checked again under the tag lock
            await self._check_immutable(namespace, tag, digest)

        # The GC protocol (docs/gc.md): from checking that the referenced blobs and child manifests
        # exist to writing the revision that references them, hold their blob locks (and the
        # manifest's own) shared. The sweeper deletes a blob only under its exclusive lock, after
        # looking for revisions written since its marking: it finds this one, or this check fails.
        async with hold_all(self.locks, lock_names.references(referenced_digests(parsed)),
                            shared=True) as references:
            await self._check_references(namespace, parsed)
            # Under the manifest's lock from the revision to its tags: a DELETE of the same digest
            # comes wholly before (then this PUT writes everything again) or wholly after (then it
            # removes the tags too), never in between (a tag listed that names a removed revision).
            async with self.locks.hold(lock_names.manifest(namespace, digest)):
                check_all(references)
                await self.store_revision(namespace, digest, body, parsed)
                for tag in tags:
                    async with self.locks.hold(lock_names.tag(namespace, tag)):
                        if tag in immutable:
                            await self._check_immutable(namespace, tag, digest)
                        await self.set_tag(namespace, tag, digest)
        await self.announce(namespace)
        return PutResult(digest, parsed.subject)

    async def announce(self, namespace: str) -> None:
        """Tell the other replicas that `namespace` changed in storage (before the client hears of it)."""
        if self.coherence.shared:
            new = not await self.index.call("knows_namespace", namespace)
            await self.coherence.changed(namespace, new_namespace=new)

    def _validate(self, reference: Digest | str, body: bytes, content_type: str | None) -> manifest.Manifest:
        """The digest and the parsed manifest of a PUT body (no I/O: runs in a thread when large)."""
        algorithm = reference.algorithm if isinstance(reference, Digest) else "sha256"
        digest = Digest.of(body, algorithm)
        if isinstance(reference, Digest) and reference != digest:
            raise errors.DigestInvalid(f"manifest digest is {digest}, not {reference}")
        try:
            return manifest.parse(body, content_type, digest, self.max_manifest_references)
        except errors.RegistryError as exc:
            # The parser's frames hold the parsed document (~10x the body): the error answered to the
            # client must not keep them alive for the rest of the request.
            raise exc.with_traceback(None) from None

    async def _check_immutable(self, namespace: str, tag: str, digest: Digest) -> None:
        current = await read_link(self.storage, layout.tag_current_link(namespace, tag))
        if current is not None and current != digest:
            raise errors.Denied(f"tag {tag!r} in {namespace} is immutable: it already names {current}",
                                status=409, detail={"tag": tag, "digest": str(current)})

    async def store_revision(self, namespace: str, digest: Digest, body: bytes,
                             parsed: manifest.Manifest) -> None:
        """Commit a manifest (blob, media type, revision link, referrer link) before any tag names it."""
        key = str(digest)
        if not await self.blobs.exists(digest):
            await self.storage.put(layout.blob_data(digest), body)
        if (parsed.sniffed_type or manifest.sniff_media_type(body)) != parsed.media_type:
            # Only a body that does not say what it is needs the media type kept beside it.
            await self.storage.put(layout.revision_media_type(namespace, digest), parsed.media_type.encode())
        await write_link(self.storage, layout.revision_link(namespace, digest), digest)
        if parsed.subject is not None:
            await write_link(self.storage, layout.referrer_link(namespace, parsed.subject, digest), digest)
            self.index.tell("add_referrer", namespace, str(parsed.subject), parsed.referrer_descriptor())
        self.index.tell("keep_body", key, body)
        self.index.tell("add_revision", namespace, key, parsed.media_type)

    async def set_tag(self, namespace: str, tag: str, digest: Digest) -> None:
        """Point a tag at a committed manifest; the caller holds the tag's lock."""
        # The index entry first: a current link must never name a digest missing from the tag's index
        # (a kill between the two leaves only an index entry, which is harmless).
        await write_link(self.storage, layout.tag_index_link(namespace, tag, digest), digest)
        await write_link(self.storage, layout.tag_current_link(namespace, tag), digest)
        self.index.tell("set_tag", namespace, tag, str(digest), time.time())

    async def tag_pushed_at(self, namespace: str, tag: str) -> float | None:
        """When a tag was last pushed (retention): from the index, else the tag link's mtime."""
        known = await self.index.call("pushed_at", namespace, tag)
        if known is not None:
            return float(known)
        stat = await self.storage.stat(layout.tag_current_link(namespace, tag))
        if stat is None:
            return None
        self.index.tell("remember_pushed_at", namespace, tag, stat.modified)
        return stat.modified

    async def _check_references(self, namespace: str, parsed: manifest.Manifest) -> None:
        """Every referenced blob and child manifest exists in the namespace: each distinct digest
        checked once (one layer may be listed thousands of times), a few at a time."""
        async def child_known(digest: Digest) -> bool:
            if await self.index.call("revision", namespace, str(digest)) is not None:
                return True
            return await self.storage.stat(layout.revision_link(namespace, digest)) is not None

        blobs = list(dict.fromkeys(d.digest for d in parsed.blobs))
        children = list(dict.fromkeys(d.digest for d in parsed.children))
        checks: list[tuple[Digest, Callable[[], Awaitable[bool]]]] = [
            *((d, partial(self.blobs.is_linked, namespace, d)) for d in blobs),
            *((d, partial(child_known, d)) for d in children),
        ]
        failed = await first_false([check for _, check in checks], REFERENCE_CHECKS_IN_FLIGHT)
        if failed is not None:
            missing = checks[failed][0]
            raise errors.ManifestBlobUnknown(
                f"manifest references {missing}, which is unknown in repository {namespace}",
                detail={"digest": str(missing)})

    # --- deleting -----------------------------------------------------------------------------
    async def delete(self, namespace: str, reference: Digest | str) -> None:
        if not isinstance(reference, Digest):
            async with self.locks.hold(lock_names.tag(namespace, reference)):
                await self.resolve_tag(namespace, reference)
                await self.storage.delete_tree(layout.tag_dir(namespace, reference))
                self.index.tell("delete_tag", namespace, reference)
            await self.announce(namespace)
            return
        async with self.locks.hold(lock_names.manifest(namespace, reference)):
            stored = await self.get(namespace, reference)
            tags = await self._all_tags(namespace)
            for tag, target in tags.items():
                if target != str(reference):
                    continue
                async with self.locks.hold(lock_names.tag(namespace, tag)):
                    # A PUT of another manifest may have moved the tag since it was listed: keep it then.
                    if await read_link(self.storage, layout.tag_current_link(namespace, tag)) == reference:
                        await self.storage.delete_tree(layout.tag_dir(namespace, tag))
            described = manifest.describe_stored(stored.body, stored.media_type, reference)
            if described.subject is not None:
                await self.storage.delete_tree(
                    layout.referrer_link(namespace, described.subject, reference).rsplit("/", 1)[0])
                self.index.tell("remove_referrer", namespace, str(described.subject), str(reference))
            await self.storage.delete_tree(layout.revision_dir(namespace, reference))
            self.index.tell("drop_revision", namespace, str(reference))
        await self.announce(namespace)

    # --- listing ------------------------------------------------------------------------------
    async def _all_tags(self, namespace: str) -> dict[str, str]:
        """Every tag of a namespace read from storage, installed in the index when nothing raced."""
        generation = await self.index.call("generation", namespace)
        names = await self.storage.list_dir(layout.tags_dir(namespace))
        links = await asyncio.gather(
            *(read_link(self.storage, layout.tag_current_link(namespace, name)) for name in names))
        tags = {name: str(digest) for name, digest in zip(names, links, strict=True) if digest is not None}
        self.index.tell("load_tags", namespace, tags, generation)
        return tags

    async def list_tags(self, namespace: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        await self.coherence.observe(namespace)
        listed = await self.index.call("list_tags", namespace, n, last)
        if listed is not None:
            return listed
        tags = await self._all_tags(namespace)
        if not tags and not await self.namespace_exists(namespace):
            raise errors.NameUnknown(f"repository {namespace} is not known to the registry")
        return page(sorted(tags), n, last)

    async def namespace_exists(self, namespace: str) -> bool:
        # Its own `_manifests`, `_layers` or `_uploads`: a folder holding only nested repositories
        # (`a` of `a/b`, or `a/b` deleted beside `a/b/c`) is not one.
        children = await self.storage.list_dir(layout.repository(namespace))
        return any(child.startswith("_") for child in children)

    async def referrers(self, namespace: str, subject: Digest,
                        artifact_type: str | None) -> list[dict[str, Any]]:
        await self.coherence.observe(namespace)
        descriptors = await self.index.call("referrers", namespace, str(subject))
        if descriptors is None:
            generation = await self.index.call("generation", namespace)
            descriptors = []
            base = layout.referrers_dir(namespace, subject)
            for algorithm in await self.storage.list_dir(base):
                for encoded in await self.storage.list_dir(f"{base}/{algorithm}"):
                    try:
                        digest = Digest.parse(f"{algorithm}:{encoded}")
                        stored = await self.get(namespace, digest)
                    except errors.RegistryError:
                        continue  # a dangling referrer link (scrub repairs it)
                    described = manifest.describe_stored(stored.body, stored.media_type, digest)
                    descriptors.append(described.referrer_descriptor())
            self.index.tell("load_referrers", namespace, str(subject), descriptors, generation)
        if artifact_type is not None:
            descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
        return sorted(descriptors, key=lambda d: d["digest"])

    async def catalog(self, n: int | None, last: str | None) -> tuple[list[str], bool]:
        await self.coherence.observe_catalog()
        listed = await self.index.call("catalog", n, last)
        if listed is None:
            generation = await self.index.call("catalog_generation")
            try:
                names = await self._discover_namespaces()
            except BaseException:
                self.index.tell("load_catalog_failed")
                raise
            names = await self.index.call("load_catalog", names, generation)
            listed = await self.index.call("catalog", n, last)
            if listed is None:  # another replica changed the catalog while it was listed: not kept
                listed = page(names, n, last)
        return listed

    async def _discover_namespaces(self) -> list[str]:
        """Every folder below `repositories/` that holds a `_manifests` folder (as distribution does)."""
        found: list[str] = []

        async def visit(name: str) -> None:
            folder = f"{layout.REPOSITORIES}/{name}" if name else layout.REPOSITORIES
            children = await self.storage.list_dir(folder)
            if name and "_manifests" in children:
                found.append(name)
            await asyncio.gather(*(visit(f"{name}/{child}" if name else child)
                                   for child in children if not child.startswith("_")))

        await visit("")
        return found


def referenced_digests(parsed: manifest.Manifest) -> set[Digest]:
    """The digests a manifest PUT holds the blob locks of: its config and layers, its child manifests
    and its own (its body is a blob too). Not the subject: it need not exist, and is never checked."""
    return {parsed.digest, *(d.digest for d in parsed.blobs), *(d.digest for d in parsed.children)}


async def first_false(checks: Sequence[Callable[[], Awaitable[bool]]], limit: int) -> int | None:
    """Run `checks` with at most `limit` in flight: the index of the first one (in order) that answers
    False, None when all answer True. No check starts once one answered False."""
    failed: list[int] = []
    started = 0

    async def worker() -> None:
        nonlocal started
        while started < len(checks) and not failed:
            index, started = started, started + 1
            if not await checks[index]():
                failed.append(index)

    # Checks start in order, so every check before the lowest failed index was started: that index
    # is the first failing one overall.
    workers = [asyncio.ensure_future(worker()) for _ in range(min(limit, len(checks)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for task in workers:
            task.cancel()
        raise
    return min(failed) if failed else None
