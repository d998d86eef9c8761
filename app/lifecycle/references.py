"""The reference marking: which blobs the manifest revisions of every repository reference.

Each stored revision's manifest is read once and parsed with app/manifest.py: an image references its
config and layers, an index its child manifests, either its `subject`. A stored body that does not
parse as a manifest we support (Docker schema 1 left by distribution, anything else) is marked
conservatively: every digest-looking string in it counts as referenced, so nothing a reader might need
is ever taken for garbage.

The marked set is also conservative about links: a digest that a tag (current or history) or a
referrer link names, and every revision folder (with or without its link), counts as referenced, so
that what `--tags` and `--revisions` can still repair is never swept first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app import errors, manifest
from app.grammar import DIGEST_RE, Digest
from app.lifecycle.inventory import Inventory
from app.storage import NotFound, Storage, layout

READS_IN_FLIGHT = 16


@dataclass(frozen=True, slots=True)
class References:
    """What one manifest revision references."""

    blobs: tuple[Digest, ...]  # config and layers (what needs `_layers` links)
    children: tuple[Digest, ...]  # an index's manifests (revisions of the same repository)
    subject: Digest | None
    others: tuple[Digest, ...] = ()  # found in a body we could not parse: referenced all the same

    def all(self) -> Iterator[Digest]:
        yield from self.blobs
        yield from self.children
        if self.subject is not None:
            yield self.subject
        yield from self.others


@dataclass
class Marking:
    """The references of every revision read, and the union of everything referenced."""

    references: dict[tuple[str, Digest], References] = field(default_factory=dict)
    missing: set[tuple[str, Digest]] = field(default_factory=set)  # revisions whose manifest blob is gone
    marked: set[Digest] = field(default_factory=set)

    def mark(self, refs: References) -> None:
        self.marked.update(refs.all())


async def read_revision(storage: Storage, namespace: str, digest: Digest,
                        stored_media_type: bool) -> References | None:
    """The references of one revision; None when its manifest blob is missing."""
    try:
        body = await storage.get(layout.blob_data(digest))
    except NotFound:
        return None
    media_type = None
    if stored_media_type:
        try:
            media_type = (await storage.get(layout.revision_media_type(namespace, digest))).decode()
        except (NotFound, UnicodeDecodeError):
            media_type = None
    return parse_references(body, media_type or manifest.sniff_media_type(body), digest)


def parse_references(body: bytes, media_type: str, digest: Digest) -> References:
    try:
        parsed = manifest.parse(body, media_type, digest, max_references=None)
    except errors.RegistryError:
        return References((), (), None, tuple(_digests_in(body)))
    return References(tuple(d.digest for d in parsed.blobs), tuple(d.digest for d in parsed.children),
                      parsed.subject)


def _digests_in(body: bytes) -> set[Digest]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return set()
    found: set[Digest] = set()

    def visit(value: Any) -> None:
        if isinstance(value, str):
            if DIGEST_RE.fullmatch(value):
                found.add(Digest.parse(value))
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    with contextlib.suppress(RecursionError):
        visit(document)
    return found


async def mark(storage: Storage, inventory: Inventory,
               progress: Callable[[int], None] | None = None) -> Marking:
    marking = Marking()
    for repo in inventory.repositories.values():
        marking.marked.update(repo.revisions)
        marking.marked.update(repo.tag_history)
        for subject, referrer in repo.referrers:
            marking.marked.update((subject, referrer))
    jobs = asyncio.Semaphore(READS_IN_FLIGHT)

    async def read(namespace: str, digest: Digest, with_media_type: bool) -> None:
        async with jobs:
            refs = await read_revision(storage, namespace, digest, with_media_type)
        if refs is None:
            marking.missing.add((namespace, digest))
        else:
            marking.references[(namespace, digest)] = refs
            marking.mark(refs)
        if progress is not None:
            progress(1)

    await asyncio.gather(*(read(repo.name, digest, digest in repo.media_types)
                           for repo in inventory.repositories.values() for digest in repo.revisions))
    return marking
