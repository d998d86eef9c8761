"""Enforcing retention policies on a store: the tags no rule keeps are removed (app/retention.py decides).

Shared by `registry scrub --retention` (app/lifecycle/checks/retention.py) and the server's GC, which
calls `enforce` on its interval. For every namespace some rule applies to, each tag's facts are read
from storage: the digest its `current/link` names, its push time (that link's modification time: a
push writes it, a pull does not), and its last pull (app/services/pull_times.py). The rules decide on
that snapshot, and each tag that goes is removed under its tag lock (the lock a push of that tag
holds), only if its link still names the digest evaluated and was not written since: a tag pushed
again meanwhile is kept. Its manifest stays, untagged, until the GC collects it (`delete_untagged`).

A pull between the snapshot and the removal does not save the tag (the decision was made on the
pull times stored when the run began; the server flushes its own before it runs retention).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app.grammar import Digest
from app.lifecycle import inventory
from app.lifecycle.context import NoProgress, Progress
from app.lifecycle.locking import LOCK_WAIT, LockStore
from app.retention import Decision, RetentionPolicies, RuleFailure, TagFacts
from app.services.links import read_link
from app.services.pull_times import PullTimes, last_pulled_at
from app.storage import Storage, StorageError, layout
from app.storage import locks as lock_names

log = logging.getLogger("registry.retention")

# Tags whose facts are read at once (each: a link, a stat and two small reads).
READS_IN_FLIGHT = 16

OnRemoved = Callable[[str, str], Awaitable[None]]
# cel-python's interpreter takes ~0.5 ms per tag and rule (1,000 tags, two rules: ~1 s): the rules are
# evaluated on a thread of their own, so a server's event loop keeps serving meanwhile, and on one
# thread only, so no two evaluations ever run at once (app/retention.py). The thread starts lazily.
_EVALUATOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retention")


@dataclass
class Expired:
    """A tag no rule keeps: removed, or (dry run, or it moved meanwhile) not."""

    namespace: str
    facts: TagFacts
    removed: bool = False
    error: str | None = None  # why it was not removed (not set on a dry run)


@dataclass
class RetentionResult:
    namespaces: int = 0  # namespaces some rule applies to
    examined: int = 0  # tags evaluated
    expired: list[Expired] = field(default_factory=list)
    failures: list[tuple[str, RuleFailure]] = field(default_factory=list)  # (namespace, failure)

    @property
    def removed(self) -> int:
        return sum(1 for e in self.expired if e.removed)


async def enforce(storage: Storage, locks: LockStore, policies: RetentionPolicies, *, dry_run: bool,
                  now: float, on_removed: OnRemoved | None = None, pull_times: PullTimes | None = None,
                  progress: Progress | None = None) -> RetentionResult:
    """Remove (unless `dry_run`) every tag of the store that no retention rule keeps at `now`.

    `on_removed(namespace, tag)` is awaited after each removal, outside the tag's lock (the server
    drops the tag from its index and tells the other replicas). `pull_times`: the server's recorder,
    flushed first so that the pulls it holds in memory count. Errors of the store propagate
    (StorageError); a tag that cannot be removed (its lock is busy) is reported and kept.
    """
    result = RetentionResult()
    if not policies.configured:
        return result
    if pull_times is not None:
        await pull_times.flush()
    shown = progress or NoProgress()
    shown.begin("retention: listing repositories", None)
    try:
        names = [name for name in await inventory.namespaces(storage) if policies.rules_for(name)]
    finally:
        shown.end()
    result.namespaces = len(names)
    for namespace in names:
        tags = await read_tags(storage, namespace)
        verdict = await asyncio.get_running_loop().run_in_executor(
            _EVALUATOR, policies.decide, namespace, tags, now)
        result.examined += len(tags)
        result.failures.extend((namespace, failure) for failure in verdict.failures)
        for failure in verdict.failures[:1]:  # one line per namespace: the report has them all
            log.warning("retention %s failed for %s:%s (the tag is kept): %s", failure.rule, namespace,
                        failure.tag, failure.reason, extra={"fields": {
                            "rule": failure.text, "failures": len(verdict.failures)}})
        for decision in verdict.removed:
            result.expired.append(await _remove(storage, locks, namespace, decision, dry_run, on_removed))
    if result.expired or result.failures:
        log.info("retention enforced", extra={"fields": {
            "dry_run": dry_run, "namespaces": result.namespaces, "tags": result.examined,
            "expired": len(result.expired), "removed": result.removed,
            "rule_failures": len(result.failures)}})
    return result


async def read_tags(storage: Storage, namespace: str) -> list[TagFacts]:
    """The facts of every tag of `namespace` that has a readable `current/link`."""
    names = await storage.list_dir(layout.tags_dir(namespace))
    semaphore = asyncio.Semaphore(READS_IN_FLIGHT)

    async def read(tag: str) -> TagFacts | None:
        async with semaphore:
            link = layout.tag_current_link(namespace, tag)
            stat = await storage.stat(link)
            digest = await read_link(storage, link) if stat is not None else None
            if stat is None or digest is None:
                return None  # no tag (a folder left behind), or an unreadable link: `--tags` handles it
            pulled = await last_pulled_at(storage, namespace, tag, digest)
            return TagFacts(tag, str(digest), stat.modified, pulled)

    found = await asyncio.gather(*(read(tag) for tag in names))
    return [facts for facts in found if facts is not None]


async def _remove(storage: Storage, locks: LockStore, namespace: str, decision: Decision, dry_run: bool,
                  on_removed: OnRemoved | None) -> Expired:
    facts = decision.facts
    expired = Expired(namespace, facts)
    if dry_run:
        return expired
    link = layout.tag_current_link(namespace, facts.tag)
    try:
        async with locks.hold(lock_names.tag(namespace, facts.tag), wait=LOCK_WAIT) as lease:
            digest = await read_link(storage, link)
            stat = await storage.stat(link)
            if digest is None or stat is None:  # deleted meanwhile: gone, as decided
                expired.removed = True
                return expired
            if digest != Digest.parse(facts.digest) or stat.modified != facts.pushed_at:
                expired.error = "the tag was pushed again meanwhile: kept"
                return expired
            lease.check()
            await storage.delete_tree(layout.tag_dir(namespace, facts.tag))
    except (StorageError, TimeoutError) as exc:
        expired.error = str(exc) or "its lock is busy"
        return expired
    expired.removed = True
    if on_removed is not None:
        await on_removed(namespace, facts.tag)
    return expired
