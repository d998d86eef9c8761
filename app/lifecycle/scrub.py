"""One scrub of a store: the selected checks, in an order where no check undoes another's work.

0. retention: the tags no retention rule keeps go first, so that the checks below see the store as
   retention left it (it reads the store for itself, before the walk the others share);
1. uploads (independent of the rest);
2. blobs: corrupt blobs quarantined first, so that the checks below report the images that lost a
   blob in this very run (not only in the next); unreferenced blobs swept by a marking that also
   counts what the tags and revisions checks can still repair;
3. tags: a tag whose revision link is missing but whose manifest is stored gets its link back;
4. revisions: the links of every revision, including those the tags check re-linked.

The walk of `repositories/` and the marking are taken once, before the checks that need them.

With `announce` (the servers share their state through Redis) the namespaces the blobs, tags and
revisions checks changed are announced as each ends, as a server announces its own writes
(app/coherence.py): every server then reads them from the store again. Retention announces each
removed tag at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.lifecycle import inventory, references
from app.lifecycle.checks import blobs, retention, revisions, tags, uploads
from app.lifecycle.context import NoProgress, Progress, ScrubContext
from app.lifecycle.locking import LockStore
from app.lifecycle.report import CheckReport, Report
from app.retention import RetentionPolicies
from app.storage import Storage, StorageError

CHECKS = ("retention", "uploads", "blobs", "tags", "revisions")
UNITS = {"retention": "tags", "uploads": "upload sessions", "blobs": "blobs", "tags": "tags",
         "revisions": "revisions"}
DEFAULT_UPLOAD_AGE = 24 * 3600.0
# The checks whose repairs change what a server's manifest index holds (tags, revisions, referrers,
# the catalog, which a namespace leaves with its last layer link): their namespaces are announced as
# each ends. Retention announces each tag as it goes; upload sessions are read from the store on
# every request, never from the index.
INDEXED = ("blobs", "tags", "revisions")


@dataclass
class ScrubOptions:
    checks: set[str] = field(default_factory=lambda: set(CHECKS))
    dry_run: bool = False
    upload_age: float = DEFAULT_UPLOAD_AGE
    grace_period: float = 3600.0
    # The compiled retention rules (`retention` check); None or none configured: every tag is kept.
    retention: RetentionPolicies | None = None
    now: float | None = None  # when retention rules are evaluated (None: when the check starts)


async def scrub(storage: Storage, locks: LockStore, options: ScrubOptions, store: str = "",
                progress: Progress | None = None,
                on_check_done: Callable[[CheckReport], None] | None = None,
                announce: Callable[[str], Awaitable[None]] | None = None) -> Report:
    """Run the checks of `options` over `storage`; `on_check_done(check)` is called as each ends;
    `announce(namespace)` tells the servers of each namespace a repair changed."""
    shown = progress or NoProgress()
    ctx = ScrubContext(storage, locks, options.dry_run, shown, None if options.dry_run else announce)
    report = Report(options.dry_run, store)
    started = time.monotonic()
    prepared = False
    for name in CHECKS:
        if name not in options.checks:
            continue
        check = CheckReport(name, UNITS[name], options.dry_run)
        report.checks.append(check)
        try:
            if name == "retention":  # before the walk: the other checks see what it left
                await retention.run(ctx, check, options.retention or RetentionPolicies(None), options.now)
            else:
                if not prepared:
                    prepare_started = time.monotonic()
                    await _prepare(ctx, options)
                    prepared = True
                    report.prepare_seconds = time.monotonic() - prepare_started
                    check.started = time.monotonic()  # the listing and the marking are counted apart
                await _check(ctx, check, name, options)
        except StorageError as exc:
            check.error = str(exc)
        if ctx.announce is not None and name in INDEXED:
            try:
                for namespace in sorted(check.changed):
                    await ctx.announce(namespace)
            except StorageError as exc:  # Redis: the servers may go on answering what was repaired
                check.error = check.error or f"the servers could not be told of the repairs: {exc}"
        check.finish()
        if on_check_done is not None:
            on_check_done(check)
        if check.error is not None and not prepared:
            break  # the store cannot even be listed: the other checks would fail the same way
    report.seconds = time.monotonic() - started
    return report


async def _check(ctx: ScrubContext, check: CheckReport, name: str, options: ScrubOptions) -> None:
    if name == "uploads":
        await uploads.run(ctx, check, options.upload_age)
    elif name == "blobs":
        await blobs.run(ctx, check, options.grace_period)
    elif name == "tags":
        await tags.run(ctx, check)
    else:
        await revisions.run(ctx, check)


async def _prepare(ctx: ScrubContext, options: ScrubOptions) -> None:
    ctx.progress.begin("listing repositories", None)
    try:
        ctx.inventory = await inventory.take(ctx.storage, ctx.progress.advance)
    finally:
        ctx.progress.end()
    if options.checks & {"blobs", "revisions", "tags"}:
        stored = sum(len(repo.revisions) for repo in ctx.inventory.repositories.values())
        ctx.progress.begin("reading manifests", stored)
        try:
            ctx.marking = await references.mark(ctx.storage, ctx.inventory, ctx.progress.advance)
        finally:
            ctx.progress.end()
