"""`--blobs`: every blob's bytes hashed against its digest; unreferenced old blobs removed.

Hashing streams each blob (1 MiB reads; memory stays bounded whatever the size), a few blobs at a
time. A blob whose bytes do not match is hashed once more under its lock and, if it still does not
match, quarantined: copied to `quarantine/<alg>/<hex>/data` with a `note.json` (when, why, the digest
its bytes have), then removed from distribution's tree, so clients get 404 (and push it again) rather
than corrupt bytes. Nothing is deleted for good.

A blob no revision of any repository references (app/lifecycle/references.py) and older than
`[global.gc].grace_period` is removed, with the repositories' `_layers` links to it. Before that,
under the blob's lock (the one an upload's commit holds), scrub looks again: the blob is still old,
no repository has a revision of that digest, and no revision written since the marking in a
repository that links the blob references it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

from app.grammar import DIGEST_RE, Digest
from app.lifecycle.checks.uploads import multipart_stores
from app.lifecycle.context import ScrubContext
from app.lifecycle.inventory import namespaces
from app.lifecycle.locking import LOCK_WAIT
from app.lifecycle.references import read_revision
from app.lifecycle.report import CheckReport, Finding
from app.locks.base import hold_all
from app.storage import NotFound, Stat, StorageError, layout
from app.storage import locks as lock_names

HASHING_IN_FLIGHT = 4  # a local disk: hashing is the bottleneck, a few overlap it with reads
OBJECT_STORE_IN_FLIGHT = 16  # an object store: each blob is two requests' latency
CHUNK = 1 << 20


def blob_digest(key: str) -> Digest | None:
    """The digest of a `blobs/<alg>/<hh>/<hex>/data` key; None for anything else (a driver's own
    objects beside it, foreign files)."""
    parts = key[len(layout.BLOBS) + 1:].split("/")
    if len(parts) != 4 or parts[3] != "data" or parts[2][:2] != parts[1]:
        return None
    text = f"{parts[0]}:{parts[2]}"
    return Digest.parse(text) if DIGEST_RE.fullmatch(text) else None


async def run(ctx: ScrubContext, report: CheckReport, grace_period: float) -> None:
    keys: list[tuple[str, Digest]] = []
    async for key in ctx.storage.walk(layout.BLOBS):
        digest = blob_digest(key)
        if digest is not None:
            keys.append((key, digest))
    deadline = time.time() - grace_period
    candidates: list[tuple[Digest, Stat]] = []
    ctx.progress.begin("blobs", len(keys))
    queue = iter(keys)

    async def worker() -> None:
        for key, digest in queue:
            stat = await ctx.storage.stat(key)
            if stat is not None:
                report.examined += 1
                if await _verify(ctx, report, key, digest, stat) and digest not in ctx.marking.marked \
                        and stat.modified < deadline:
                    candidates.append((digest, stat))
            ctx.progress.advance(1, stat.size if stat is not None else 0)

    try:
        jobs = OBJECT_STORE_IN_FLIGHT if multipart_stores(ctx.storage) else HASHING_IN_FLIGHT
        await asyncio.gather(*(worker() for _ in range(jobs)))
    finally:
        ctx.progress.end()
    if candidates:
        await _sweep(ctx, report, sorted(candidates, key=lambda c: str(c[0])), deadline)


async def _hash(ctx: ScrubContext, report: CheckReport, key: str, digest: Digest, size: int) -> str | None:
    """The hex digest of the bytes at `key` (None when it vanished)."""
    hasher = hashlib.new(digest.algorithm)
    try:
        if size <= CHUNK:
            data = await ctx.storage.get(key)
            hasher.update(data)
            report.bytes_read += len(data)
        else:
            async for chunk in ctx.storage.read(key, chunk_size=CHUNK):
                hasher.update(chunk)
                report.bytes_read += len(chunk)
    except NotFound:
        return None
    return hasher.hexdigest()


async def _verify(ctx: ScrubContext, report: CheckReport, key: str, digest: Digest, stat: Stat) -> bool:
    """True when the blob's bytes match its digest (False: quarantined, or reported in a dry run)."""
    actual = await _hash(ctx, report, key, digest, stat.size)
    if actual is None or actual == digest.hex:
        return actual is not None
    finding = Finding("corrupt_blob", key, f"its bytes hash to {digest.algorithm}:{actual}",
                      digest=str(digest))
    if ctx.dry_run:
        report.add(finding)
        return False
    try:
        async with ctx.locks.hold(lock_names.blob(digest), wait=LOCK_WAIT):
            again = await _hash(ctx, report, key, digest, stat.size)
            if again is None or again == digest.hex:
                return again is not None  # a read that went wrong once, or replaced meanwhile: not a fault
            report.add(finding)
            await _quarantine(ctx, digest, again, stat)
    except (StorageError, TimeoutError) as exc:
        report.add(finding)
        report.resolve(finding, False, str(exc) or "its lock is busy")
        return False
    ctx.forget_blob(digest)
    report.resolve(finding, True)
    return False


async def _quarantine(ctx: ScrubContext, digest: Digest, actual: str, stat: Stat) -> None:
    note = {"digest": str(digest), "actual": f"{digest.algorithm}:{actual}", "size": stat.size,
            "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stat.modified)),
            "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "reason": "registry scrub: the bytes do not match the digest", "from": layout.blob_data(digest)}
    await ctx.storage.copy(layout.blob_data(digest), layout.quarantine_data(digest))
    await ctx.storage.put(layout.quarantine_note(digest), json.dumps(note, indent=2).encode())
    await ctx.storage.delete_tree(layout.blob_dir(digest))


async def _sweep(ctx: ScrubContext, report: CheckReport, candidates: list[tuple[Digest, Stat]],
                 deadline: float) -> None:
    # Repositories created since the walk count too: listed again now, after the marking.
    names = sorted(set(await namespaces(ctx.storage)) | set(ctx.inventory.repositories))
    for digest, stat in candidates:
        finding = Finding("unreferenced_blob", layout.blob_data(digest), f"no revision references it; "
                          f"{stat.size} bytes, last written "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(stat.modified))}",
                          digest=str(digest))
        added = False
        try:
            # The GC protocol (docs/gc.md): manifest PUTs hold the locks of the digests they
            # reference shared while they check and write; under these exclusive locks (the blob's
            # and its stripe's, through the cross-process lock store) the re-check below finds every
            # revision they wrote, and a PUT after it finds the blob gone.
            async with hold_all(ctx.locks, lock_names.sweeping([digest]), wait=LOCK_WAIT):
                linked = await _still_unreferenced(ctx, digest, names, deadline)
                if linked is None:
                    continue  # referenced, or written, since the marking: not a finding
                report.add(finding)
                added = True
                if ctx.dry_run:
                    continue
                for namespace in linked:  # links first: a link to a deleted blob would be followed
                    await ctx.storage.delete(layout.layer_link(namespace, digest))
                # A namespace may leave the catalog with its last link (as in the GC's sweep).
                report.changed.update(linked)
                await ctx.storage.delete_tree(layout.blob_dir(digest))
        except (StorageError, TimeoutError) as exc:
            if not added:
                report.add(finding)
            report.resolve(finding, False, str(exc) or "its lock is busy")
            continue
        ctx.forget_blob(digest)
        report.resolve(finding, True)


async def _still_unreferenced(ctx: ScrubContext, digest: Digest, names: list[str],
                              deadline: float) -> list[str] | None:
    """The repositories linking `digest` when it may go; None when it must stay."""
    stat = await ctx.storage.stat(layout.blob_data(digest))
    if stat is None or stat.modified >= deadline:
        return None
    linked: list[str] = []
    for namespace in names:
        if await ctx.storage.stat(layout.revision_link(namespace, digest)) is not None:
            return None  # a manifest of that digest
        link = await ctx.storage.stat(layout.layer_link(namespace, digest))
        if link is None:
            continue
        if link.modified >= deadline:
            return None  # linked within the grace period (an upload onto it, a mount): a push is on
        linked.append(namespace)
        if await _referenced_by_new_revision(ctx, namespace, digest):
            return None
    return linked


async def _referenced_by_new_revision(ctx: ScrubContext, namespace: str, digest: Digest) -> bool:
    """Whether a revision of `namespace` that the marking did not read references `digest`."""
    repo = ctx.inventory.repository(namespace)
    for algorithm in await ctx.storage.list_dir(f"{layout.manifests_dir(namespace)}/revisions"):
        for encoded in await ctx.storage.list_dir(layout.revisions_dir(namespace, algorithm)):
            text = f"{algorithm}:{encoded}"
            if DIGEST_RE.fullmatch(text) is None:
                continue
            revision = Digest.parse(text)
            if revision in repo.revisions:
                continue  # marked already
            key = (namespace, revision)
            refs = ctx.marking.references.get(key)
            if refs is None:
                refs = await read_revision(ctx.storage, namespace, revision, True)
                if refs is None:
                    continue
                ctx.marking.references[key] = refs
            if digest in set(refs.all()):
                return True
    return False
