"""`--revisions`: the links every stored manifest revision needs.

For each revision of each repository:
- a revision folder without its `link` whose manifest blob is stored: the link is re-created; a link
  that does not name its own digest is rewritten;
- the config and layers need `_layers/<alg>/<hex>/link` in the repository: a missing one is re-created
  when the blob is stored; a blob that is not stored is reported (scrub cannot bring bytes back:
  pushing the image again does);
- an index's child manifests need their revision links: re-created when the child is stored (and then
  checked like any revision);
- a manifest with a `subject` needs its referrer link: re-created; a referrer link whose referrer has
  no revision is removed;
- a revision whose manifest blob is missing is reported.

Repairs of one revision are made under its manifest lock (the one a PUT and a DELETE of it hold),
after checking that it still exists, so a concurrent DELETE is never undone.
"""

from __future__ import annotations

from collections import deque

from app.grammar import Digest
from app.lifecycle.context import ScrubContext
from app.lifecycle.inventory import Repository
from app.lifecycle.locking import LOCK_WAIT
from app.lifecycle.references import References, read_revision
from app.lifecycle.report import CheckReport, Finding
from app.services.links import read_link, write_link
from app.storage import StorageError, layout
from app.storage import locks as lock_names


async def run(ctx: ScrubContext, report: CheckReport) -> None:
    repos = list(ctx.inventory.repositories.values())
    ctx.progress.begin("revisions", sum(len(repo.revisions) for repo in repos))
    try:
        for repo in repos:
            queue = deque(sorted(repo.revisions, key=str))
            seen: set[Digest] = set()
            while queue:
                digest = queue.popleft()
                if digest in seen:
                    continue
                seen.add(digest)
                report.examined += 1
                queue.extend(await _revision(ctx, report, repo, digest))
                ctx.progress.advance()
            await _dangling_referrers(ctx, report, repo)
    finally:
        ctx.progress.end()


async def _repair(ctx: ScrubContext, report: CheckReport, finding: Finding, namespace: str,
                  revision: Digest, key: str, digest: Digest, need_revision: bool = True) -> bool:
    """Write the link `key` (naming `digest`) under the revision's lock, if the revision still exists."""
    if ctx.dry_run:
        return False
    try:
        async with ctx.locks.hold(lock_names.manifest(namespace, revision), wait=LOCK_WAIT):
            if need_revision and await ctx.storage.stat(layout.revision_link(namespace, revision)) is None:
                report.resolve(finding, False, "the revision was deleted meanwhile")
                return False
            await write_link(ctx.storage, key, digest)
    except (StorageError, TimeoutError) as exc:
        report.resolve(finding, False, str(exc) or "its lock is busy")
        return False
    report.resolve(finding, True)
    return True


async def _revision(ctx: ScrubContext, report: CheckReport, repo: Repository, digest: Digest) -> list[Digest]:
    """Check one revision; returns the child revisions whose links it re-created (to check next)."""
    namespace = repo.name
    link = layout.revision_link(namespace, digest)
    refs = await _references(ctx, repo, digest)
    if not repo.revisions.get(digest):  # a folder without its link
        if refs is None:
            return []  # no manifest either: a folder a killed push left, which serves nothing
        finding = report.add(Finding("missing_revision_link", link, f"manifest {digest} is stored, its "
                                     "revision link is missing", namespace=namespace, digest=str(digest)))
        if await _repair(ctx, report, finding, namespace, digest, link, digest, need_revision=False):
            repo.revisions[digest] = True
    elif (named := await read_link(ctx.storage, link)) != digest:
        if named is None and await ctx.storage.stat(link) is None:
            return []  # deleted since the walk
        finding = report.add(Finding("wrong_revision_link", link, f"the revision link of {digest} names "
                                     f"{named or 'nothing readable'}", namespace=namespace,
                                     digest=str(digest)))
        await _repair(ctx, report, finding, namespace, digest, link, digest, need_revision=False)
    if refs is None:
        report.add(Finding("missing_manifest_blob", layout.blob_data(digest), f"revision {digest} of "
                           f"{namespace}: its manifest blob is not stored", namespace=namespace,
                           digest=str(digest)))
        return []
    missing = [d for d in refs.blobs if not await ctx.blob_exists(d)]
    for blob in refs.blobs:
        key = layout.layer_link(namespace, blob)
        if blob in missing or blob in repo.layers or await _written_since_walk(ctx, key):
            continue
        finding = report.add(Finding("missing_layer_link", key, f"manifest {digest} references {blob}, not "
                                     f"linked in {namespace}", namespace=namespace, digest=str(blob)))
        if await _repair(ctx, report, finding, namespace, digest, key, blob):
            repo.layers.add(blob)
    relinked: list[Digest] = []
    for child in refs.children:
        key = layout.revision_link(namespace, child)
        if repo.revisions.get(child) or await _written_since_walk(ctx, key):
            continue
        if not await ctx.blob_exists(child):
            missing.append(child)
            continue
        finding = report.add(Finding("missing_revision_link", key, f"index {digest} names {child}, whose "
                                     "revision link is missing", namespace=namespace, digest=str(child)))
        if await _repair(ctx, report, finding, namespace, digest, key, child):
            repo.revisions[child] = True
            relinked.append(child)
    referrer_key = layout.referrer_link(namespace, refs.subject, digest) if refs.subject else ""
    if refs.subject is not None and (refs.subject, digest) not in repo.referrers \
            and not await _written_since_walk(ctx, referrer_key):
        key = referrer_key
        finding = report.add(Finding("missing_referrer_link", key, f"manifest {digest} has subject "
                                     f"{refs.subject}, its referrer link is missing", namespace=namespace,
                                     digest=str(digest)))
        if await _repair(ctx, report, finding, namespace, digest, key, digest):
            repo.referrers.add((refs.subject, digest))
    if missing:
        names = ", ".join(str(d) for d in missing[:3]) + (" ..." if len(missing) > 3 else "")
        report.add(Finding("missing_referenced_blob", layout.revision_link(namespace, digest),
                           f"revision {digest} of {namespace} references {len(missing)} blob(s) that are not "
                           f"stored: {names}; push the image again", namespace=namespace, digest=str(digest)))
    return relinked


async def _written_since_walk(ctx: ScrubContext, key: str) -> bool:
    """A link the walk did not see may have been written since (a push in progress): looked up now."""
    return await ctx.storage.stat(key) is not None


async def _references(ctx: ScrubContext, repo: Repository, digest: Digest) -> References | None:
    key = (repo.name, digest)
    refs = ctx.marking.references.get(key)
    if refs is None and key not in ctx.marking.missing:
        refs = await read_revision(ctx.storage, repo.name, digest, digest in repo.media_types)
        if refs is not None:
            ctx.marking.references[key] = refs
    return refs


async def _dangling_referrers(ctx: ScrubContext, report: CheckReport, repo: Repository) -> None:
    for subject, referrer in sorted(repo.referrers, key=str):
        if repo.revisions.get(referrer):
            continue
        key = layout.referrer_link(repo.name, subject, referrer)
        if await ctx.storage.stat(layout.revision_link(repo.name, referrer)) is not None:
            continue  # pushed since the walk
        finding = report.add(Finding("dangling_referrer_link", key, f"referrer {referrer} of {subject} "
                                     "has no revision", namespace=repo.name, digest=str(referrer)))
        if ctx.dry_run:
            continue
        try:
            async with ctx.locks.hold(lock_names.manifest(repo.name, referrer), wait=LOCK_WAIT):
                if await ctx.storage.stat(layout.revision_link(repo.name, referrer)) is not None:
                    report.resolve(finding, False, "pushed meanwhile: kept")
                    continue
                await ctx.storage.delete_tree(key.rsplit("/", 1)[0])
        except (StorageError, TimeoutError) as exc:
            report.resolve(finding, False, str(exc) or "its lock is busy")
            continue
        report.resolve(finding, True)
