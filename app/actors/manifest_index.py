"""ManifestIndexActor: the in-memory index of tags, revisions, referrers, media types and the catalog.

Storage is the source of truth; this actor caches what was read or written so that manifest and tag
reads do not touch the disk every time. Entries appear when the service layer loads or writes them;
a miss (None) means "not known here, ask storage" — never "absent".
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from app.actors.bridge import AsyncActor

BODY_CACHE_BYTES = 64 * 1024 * 1024


@dataclass
class NamespaceIndex:
    tags: dict[str, str] = field(default_factory=dict)
    tags_complete: bool = False
    sorted_tags: list[str] | None = None
    revisions: dict[str, str] = field(default_factory=dict)  # digest -> media type
    referrers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    generation: int = 0  # bumped by every tag change, so a listing read before it is not applied
    pushed_at: dict[str, float] = field(default_factory=dict)  # tag -> seconds since the epoch


def page(items: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """Items after `last` (lexically), at most `n`; and whether more follow."""
    start = bisect.bisect_right(items, last) if last else 0
    if n is None:
        return items[start:], False
    chunk = items[start:start + n]
    return chunk, start + n < len(items)


class ManifestIndexActor(AsyncActor):
    def __init__(self) -> None:
        super().__init__()
        self._namespaces: dict[str, NamespaceIndex] = {}
        self._catalog: list[str] | None = None
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._body_bytes = 0

    def _ns(self, namespace: str) -> NamespaceIndex:
        index = self._namespaces.get(namespace)
        if index is None:
            index = self._namespaces[namespace] = NamespaceIndex()
        return index

    # --- tags ---------------------------------------------------------------------------------
    def resolve(self, namespace: str, tag: str) -> str | None:
        index = self._namespaces.get(namespace)
        return index.tags.get(tag) if index else None

    def set_tag(self, namespace: str, tag: str, digest: str, pushed_at: float | None = None) -> None:
        """Record a tag; `pushed_at` when known (a push through this server), else read lazily."""
        index = self._ns(namespace)
        index.generation += 1
        if pushed_at is not None:
            index.pushed_at[tag] = pushed_at
        if tag not in index.tags:
            index.sorted_tags = None
        index.tags[tag] = digest

    def delete_tag(self, namespace: str, tag: str) -> None:
        index = self._ns(namespace)
        index.generation += 1
        index.pushed_at.pop(tag, None)
        if index.tags.pop(tag, None) is not None:
            index.sorted_tags = None

    def pushed_at(self, namespace: str, tag: str) -> float | None:
        index = self._namespaces.get(namespace)
        return index.pushed_at.get(tag) if index else None

    def remember_pushed_at(self, namespace: str, tag: str, pushed_at: float) -> None:
        self._ns(namespace).pushed_at.setdefault(tag, pushed_at)

    def generation(self, namespace: str) -> int:
        return self._ns(namespace).generation

    def load_tags(self, namespace: str, tags: dict[str, str], generation: int) -> bool:
        """Install a full listing read from storage, unless a tag changed while it was read."""
        index = self._ns(namespace)
        if index.generation != generation:
            return False
        index.tags = dict(tags)
        index.tags_complete = True
        index.sorted_tags = None
        return True

    def list_tags(self, namespace: str, n: int | None, last: str | None) -> tuple[list[str], bool] | None:
        index = self._namespaces.get(namespace)
        # An empty listing is never served from here: the namespace may not exist at all (404), and
        # telling the two apart needs storage.
        if index is None or not index.tags_complete or not index.tags:
            return None
        if index.sorted_tags is None:
            index.sorted_tags = sorted(index.tags)
        return page(index.sorted_tags, n, last)

    # --- revisions and manifest bodies --------------------------------------------------------
    def revision(self, namespace: str, digest: str) -> str | None:
        index = self._namespaces.get(namespace)
        return index.revisions.get(digest) if index else None

    def add_revision(self, namespace: str, digest: str, media_type: str) -> None:
        self._ns(namespace).revisions[digest] = media_type
        if self._catalog is not None and namespace not in self._catalog:
            bisect.insort(self._catalog, namespace)

    def drop_revision(self, namespace: str, digest: str) -> None:
        index = self._ns(namespace)
        index.generation += 1
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
        index = self._namespaces.get(namespace)
        if index is None or subject not in index.referrers:
            return None
        return list(index.referrers[subject].values())

    def load_referrers(self, namespace: str, subject: str, descriptors: list[dict[str, Any]]) -> None:
        self._ns(namespace).referrers[subject] = {d["digest"]: d for d in descriptors}

    def add_referrer(self, namespace: str, subject: str, descriptor: dict[str, Any]) -> None:
        known = self._ns(namespace).referrers.get(subject)
        if known is not None:
            known[descriptor["digest"]] = descriptor

    def remove_referrer(self, namespace: str, subject: str, digest: str) -> None:
        known = self._ns(namespace).referrers.get(subject)
        if known is not None:
            known.pop(digest, None)

    # --- catalog ------------------------------------------------------------------------------
    def catalog(self, n: int | None, last: str | None) -> tuple[list[str], bool] | None:
        if self._catalog is None:
            return None
        return page(self._catalog, n, last)

    def load_catalog(self, names: list[str]) -> None:
        self._catalog = sorted(set(names))

    def add_namespace(self, namespace: str) -> None:
        if self._catalog is not None and namespace not in self._catalog:
            bisect.insort(self._catalog, namespace)

    def forget_namespace(self, namespace: str) -> None:
        """Drop everything cached about a namespace (it will be read again from storage)."""
        self._namespaces.pop(namespace, None)
