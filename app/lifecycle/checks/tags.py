"""`--tags`: every tag's `current/link` must name a stored manifest revision.

- the link names a digest whose manifest blob is stored and parses as a manifest, but the revision
  link is missing: the revision link is re-created (the tag then serves again);
- the manifest blob is missing (or the link is unreadable, or names a blob that is no manifest): the
  tag is removed, under the tag's lock, after reading its link again (a push may have moved it).

A guard against the wrong store: when every tag of the store names a missing manifest, nothing is
removed (a `[blob_store]` pointing at another bucket or folder looks exactly like that).
"""

from __future__ import annotations

from app import errors, manifest
from app.grammar import Digest
from app.lifecycle.context import ScrubContext
from app.lifecycle.locking import LOCK_WAIT
from app.lifecycle.references import parse_references
from app.lifecycle.report import CheckReport, Finding
from app.services.links import read_link, write_link
from app.storage import NotFound, StorageError, layout
from app.storage import locks as lock_names

GUARD_MIN_TAGS = 2
# A blob larger than this is no manifest (whatever `max_manifest_size` says): never read into memory.
MAX_MANIFEST_READ = 32 * 1024 * 1024


async def run(ctx: ScrubContext, report: CheckReport) -> None:
    tags = [(repo.name, tag) for repo in ctx.inventory.repositories.values() for tag in sorted(repo.tags)]
    ctx.progress.begin("tags", len(tags))
    dangling: list[tuple[Finding, str, str, Digest | None]] = []
    try:
        for namespace, tag in tags:
            await _tag(ctx, report, namespace, tag, dangling)
            report.examined += 1
            ctx.progress.advance()
    finally:
        ctx.progress.end()
    if len(dangling) == len(tags) >= GUARD_MIN_TAGS:
        for finding, *_ in dangling:
            report.resolve(finding, False, "every tag of the store names a missing manifest: is "
                           "[blob_store] the right store? nothing was removed")
        return
    if ctx.dry_run:
        return
    for finding, namespace, tag, digest in dangling:
        try:
            async with ctx.locks.hold(lock_names.tag(namespace, tag), wait=LOCK_WAIT):
                if await read_link(ctx.storage, layout.tag_current_link(namespace, tag)) != digest:
                    report.resolve(finding, False, "the tag was moved meanwhile: kept")
                    continue
                await ctx.storage.delete_tree(layout.tag_dir(namespace, tag))
        except (StorageError, TimeoutError) as exc:
            report.resolve(finding, False, str(exc) or "its lock is busy")
            continue
        report.resolve(finding, True)


async def _tag(ctx: ScrubContext, report: CheckReport, namespace: str, tag: str,
               dangling: list[tuple[Finding, str, str, Digest | None]]) -> None:
    key = layout.tag_current_link(namespace, tag)
    digest = await read_link(ctx.storage, key)
    if digest is None:
        if await ctx.storage.stat(key) is None:
            return  # removed since the walk
        finding = report.add(Finding("dangling_tag", key, f"tag {tag!r}: its link is unreadable",
                                     namespace=namespace))
        dangling.append((finding, namespace, tag, None))
        return
    repo = ctx.inventory.repository(namespace)
    if repo.revisions.get(digest) and await ctx.blob_exists(digest):
        return
    body = await _manifest_body(ctx, digest)
    if body is None:
        finding = report.add(Finding("dangling_tag", key, f"tag {tag!r} names {digest}, whose manifest is "
                                     "not stored", namespace=namespace, digest=str(digest)))
        dangling.append((finding, namespace, tag, digest))
        return
    if repo.revisions.get(digest):
        return
    if await ctx.storage.stat(layout.revision_link(namespace, digest)) is not None:
        repo.revisions[digest] = True  # written since the walk
        return
    finding = report.add(Finding("missing_revision_link", layout.revision_link(namespace, digest),
                                 f"tag {tag!r} names {digest}: its manifest is stored, its revision link "
                                 "is missing", namespace=namespace, digest=str(digest)))
    if ctx.dry_run:
        return
    try:
        async with ctx.locks.hold(lock_names.manifest(namespace, digest), wait=LOCK_WAIT):
            await write_link(ctx.storage, layout.revision_link(namespace, digest), digest)
    except (StorageError, TimeoutError) as exc:
        report.resolve(finding, False, str(exc) or "its lock is busy")
        return
    report.resolve(finding, True)
    # The revision is known from now on: `--revisions` checks its links, the marking keeps its blobs.
    repo.revisions[digest] = True
    refs = parse_references(body, manifest.sniff_media_type(body), digest)
    ctx.marking.references[(namespace, digest)] = refs
    ctx.marking.mark(refs)
    ctx.marking.marked.add(digest)


async def _manifest_body(ctx: ScrubContext, digest: Digest) -> bytes | None:
    """The stored manifest `digest` names, if it is one (not another kind of blob)."""
    stat = await ctx.storage.stat(layout.blob_data(digest))
    if stat is None or stat.size > MAX_MANIFEST_READ:
        return None
    try:
        body = await ctx.storage.get(layout.blob_data(digest))
    except NotFound:
        return None
    try:
        manifest.parse(body, manifest.sniff_media_type(body), digest, max_references=None)
    except errors.RegistryError:
        return None
    return body
