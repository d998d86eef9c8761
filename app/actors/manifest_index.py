"""ManifestIndexActor: the in-memory index of tags, revisions, referrers, media types and the catalog.

Storage is the source of truth; this actor caches what was read or written so that manifest and tag
reads do not touch the disk every time. Entries appear when the service layer loads or writes them;
a miss (None) means "not known here, ask storage" — never "absent".

Memory is bounded: at most `max_namespaces` namespaces are cached (the least recently used one is
dropped whole and read again from storage when next asked for), manifest bodies share a byte budget,
and nothing is kept about what storage does not have (an unknown name's empty tag list, a subject
without referrers), so lookups of unknown names and digests never grow the index.

Fills (what a service read from storage) carry the generation it read at, and are dropped when the
namespace changed meanwhile: a tag pushed during a listing is never overwritten by the older listing.
Generations are readings of one clock that every change advances, so a namespace dropped and cached
again cannot take a fill read before a change it no longer remembers.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from app.actors.bridge import AsyncActor

BODY_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_NAMESPACES = 1000


@dataclass
class NamespaceIndex:
    tags: dict[str, str] = field(default_factory=dict)
    tags_complete: bool = False
    sorted_tags: list[str] | None = None
    revisions: dict[str, str] = field(default_factory=dict)  # digest -> media type
    referrers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    generation: int = 0  # the clock at the last change (or when cached): older fills are not applied
    pushed_at: dict[str, float] = field(default_factory=dict)  # tag -> seconds since the epoch


def page(items: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """Items after `last` (lexically), at most `n`; and whether more follow."""
    start = bisect.bisect_right(items, last) if last else 0
    if n is None:
        return items[start:], False
    chunk = items[start:start + n]
    return chunk, start + n < len(items)


class ManifestIndexActor(AsyncActor):
    def __init__(self, max_namespaces: int = DEFAULT_MAX_NAMESPACES) -> None:
        super().__init__()
        self._namespaces: OrderedDict[str, NamespaceIndex] = OrderedDict()  # least recently used first
        self._max_namespaces = max_namespaces
        self._clock = 0
        self._dropped_through = 0  # the newest generation of a namespace no longer cached
        self._catalog: list[str] | None = None
        self._catalog_listings = 0  # storage listings for the catalog under way
        self._catalog_invalidated = 0  # the clock when another replica last changed the catalog
        self._catalog_added: dict[str, int] = {}  # namespace -> clock, added while one was under way
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._body_bytes = 0

    def configure(self, max_namespaces: int) -> None:
        self._max_namespaces = max_namespaces
        self._evict()

    # --- the namespace cache ------------------------------------------------------------------
    def _known(self, namespace: str) -> NamespaceIndex | None:
        """The cached namespace (now the most recently used), or None."""
        index = self._namespaces.get(namespace)
        if index is not None:
            self._namespaces.move_to_end(namespace)
        return index

    def _cache(self, namespace: str) -> NamespaceIndex:
        index = self._namespaces[namespace] = NamespaceIndex(generation=self._clock)
        self._evict()
        return index

    def _evict(self) -> None:
        while len(self._namespaces) > self._max_namespaces:
            _, dropped = self._namespaces.popitem(last=False)
            self._dropped_through = max(self._dropped_through, dropped.generation)

    def _changed(self, namespace: str) -> NamespaceIndex:
        """A write: the namespace's entry (cached if it was not), past every fill read before now."""
        self._clock += 1
        index = self._known(namespace) or self._cache(namespace)
        index.generation = self._clock
        return index

    def _fillable(self, namespace: str, generation: int) -> NamespaceIndex | None:
        """Where a fill read at `generation` goes; None when the namespace changed since (or may have:
        a namespace dropped from the cache after a change is only known by `_dropped_through`)."""
        index = self._known(namespace)
        if index is not None:
            return index if index.generation <= generation else None
        if self._dropped_through > generation:
            return None
        return self._cache(namespace)

    def generation(self, namespace: str) -> int:
        """The reading a service takes before it reads storage, to hand back with its fill."""
        return self._clock

    def cached_namespaces(self) -> int:
        return len(self._namespaces)

    # --- tags ---------------------------------------------------------------------------------
    def resolve(self, namespace: str, tag: str) -> str | None:
        index = self._known(namespace)
        return index.tags.get(tag) if index else None

    def set_tag(self, namespace: str, tag: str, digest: str, pushed_at: float | None = None) -> None:
        """Record a tag; `pushed_at` when known (a push through this server), else read lazily."""
        index = self._changed(namespace)
        if pushed_at is not None:
            index.pushed_at[tag] = pushed_at
        if tag not in index.tags:
            index.sorted_tags = None
        index.tags[tag] = digest

    def fill_tag(self, namespace: str, tag: str, digest: str, generation: int) -> bool:
        """A tag resolved from storage, unless the namespace changed since `generation`."""
        index = self._fillable(namespace, generation)
        if index is None:
            return False
        if tag not in index.tags:
            index.sorted_tags = None
        index.tags[tag] = digest
        return True

    def delete_tag(self, namespace: str, tag: str) -> None:
        index = self._changed(namespace)
        index.pushed_at.pop(tag, None)
        if index.tags.pop(tag, None) is not None:
            index.sorted_tags = None

    def pushed_at(self, namespace: str, tag: str) -> float | None:
        index = self._known(namespace)
        return index.pushed_at.get(tag) if index else None

    def remember_pushed_at(self, namespace: str, tag: str, pushed_at: float) -> None:
        index = self._known(namespace)  # not worth caching a namespace for
        if index is not None:
            index.pushed_at.setdefault(tag, pushed_at)

    def load_tags(self, namespace: str, tags: dict[str, str], generation: int) -> bool:
        """Install a full listing read from storage, unless a tag changed while it was read.

        An empty listing is not kept for a namespace not cached: it is most often a name that does not
        exist, and every such name would otherwise take a place in the index.
        """
        if not tags and namespace not in self._namespaces:
            return False
        index = self._fillable(namespace, generation)
        if index is None:
            return False
        index.tags = dict(tags)
        index.tags_complete = True
        index.sorted_tags = None
        return True

    def list_tags(self, namespace: str, n: int | None, last: str | None) -> tuple[list[str], bool] | None:
        index = self._known(namespace)
        # An empty listing is never served from here: the namespace may not exist at all (404), and
        # telling the two apart needs storage.
        if index is None or not index.tags_complete or not index.tags:
            return None
        if index.sorted_tags is None:
            index.sorted_tags = sorted(index.tags)
        return page(index.sorted_tags, n, last)

    # --- revisions and manifest bodies --------------------------------------------------------
    def revision(self, namespace: str, digest: str) -> str | None:
        index = self._known(namespace)
        return index.revisions.get(digest) if index else None

    def add_revision(self, namespace: str, digest: str, media_type: str) -> None:
        """A manifest was committed (a write: no fill read before it is undone by it)."""
        index = self._known(namespace) or self._cache(namespace)
        index.revisions[digest] = media_type
        self.add_namespace(namespace)

    def fill_revision(self, namespace: str, digest: str, media_type: str, generation: int) -> bool:
        """A revision read from storage, unless the namespace changed since (it may have been deleted)."""
        index = self._fillable(namespace, generation)
        if index is None:
            return False
        index.revisions[digest] = media_type
        return True

    def drop_revision(self, namespace: str, digest: str) -> None:
        index = self._changed(namespace)
        index.revisions.pop(digest, None)
        stale = [tag for tag, target in index.tags.items() if target == digest]
        for tag in stale:
            del index.tags[tag]
        if stale:
            index.sorted_tags = None

    def body(self, digest: str) -> bytes | None:
        body = self._bodies.get(digest)
        if body is not None:
            self._bodies.move_to_end(digest)
        return body

    def keep_body(self, digest: str, body: bytes) -> None:
        if digest in self._bodies or len(body) > BODY_CACHE_BYTES // 16:
            return
        self._bodies[digest] = body
        self._body_bytes += len(body)
        while self._body_bytes > BODY_CACHE_BYTES:
            _, old = self._bodies.popitem(last=False)
            self._body_bytes -= len(old)

    # --- referrers ----------------------------------------------------------------------------
    def referrers(self, namespace: str, subject: str) -> list[dict[str, Any]] | None:
        index = self._known(namespace)
        if index is None or subject not in index.referrers:
            return None
        return list(index.referrers[subject].values())

    def load_referrers(self, namespace: str, subject: str, descriptors: list[dict[str, Any]],
                       generation: int) -> bool:
        """Referrers read from storage, unless the namespace changed since `generation`.

        A subject without referrers is not kept: any digest can be asked for, and each would stay.
        """
        if not descriptors:
            return False
        index = self._fillable(namespace, generation)
        if index is None:
            return False
        index.referrers[subject] = {d["digest"]: d for d in descriptors}
        return True

    def add_referrer(self, namespace: str, subject: str, descriptor: dict[str, Any]) -> None:
        known = self._changed(namespace).referrers.get(subject)
        if known is not None:
            known[descriptor["digest"]] = descriptor

    def remove_referrer(self, namespace: str, subject: str, digest: str) -> None:
        known = self._changed(namespace).referrers.get(subject)
        if known is not None:
            known.pop(digest, None)

    # --- catalog ------------------------------------------------------------------------------
    def catalog(self, n: int | None, last: str | None) -> tuple[list[str], bool] | None:
        if self._catalog is None:
            return None
        return page(self._catalog, n, last)

    def catalog_generation(self) -> int:
        """Taken before storage is listed for the catalog: namespaces added from now on are
        remembered, and merged into that listing when it is loaded."""
        self._catalog_listings += 1
        return self._clock

    def load_catalog(self, names: list[str], generation: int) -> list[str]:
        """A listing of storage that began at `generation`, plus every namespace added since (which
        the listing may have missed: a fill never undoes a write)."""
        added = {name for name, at in self._catalog_added.items() if at > generation}
        if generation >= self._catalog_invalidated:
            self._catalog = sorted(set(names) | added)
        self._catalog_listings = max(0, self._catalog_listings - 1)
        if not self._catalog_listings:
            self._catalog_added.clear()
        return sorted(set(names) | added)

    def knows_namespace(self, namespace: str) -> bool:
        """Whether the catalog here already has it (else a push may have made a new namespace)."""
        return self._catalog is not None and namespace in self._catalog

    def load_catalog_failed(self) -> None:
        self._catalog_listings = max(0, self._catalog_listings - 1)
        if not self._catalog_listings:
            self._catalog_added.clear()

    def add_namespace(self, namespace: str) -> None:
        if self._catalog is not None:
            if namespace not in self._catalog:
                bisect.insort(self._catalog, namespace)
        elif self._catalog_listings:  # a listing is under way: it may have passed this name already
            self._clock += 1
            self._catalog_added[namespace] = self._clock

    def invalidate(self, namespace: str) -> None:
        """Another replica changed the namespace: nothing cached of it is trusted any more, and fills
        read before now are refused (app/coherence.py)."""
        self._clock += 1
        self._namespaces.pop(namespace, None)
        # An empty entry at the new generation: fills taken before it are older and refused (an
        # entry in the LRU like any other, so the index stays within `max_namespaces`).
        self._cache(namespace).generation = self._clock

    def invalidate_catalog(self) -> None:
        """Another replica may have added a namespace: the catalog is listed from storage again, and a
        listing that began before now is not installed."""
        self._catalog = None
        self._catalog_invalidated = self._clock = self._clock + 1
