"""The manifest index never keeps an answer older than storage: a cache fill that read storage before a
concurrent write is dropped (issue 12, step 1).

Each race is made deterministic by a gate in front of the real driver: the reader's storage call
returns what storage held, then waits at the gate while the writer runs to completion; only then is
the reader let go and its fill delivered. Each test fails when fills are applied like writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from app.actors.supervisor import start_actors
from app.grammar import Digest
from app.services.blobs import BlobService
from app.services.manifests import ManifestService
from app.storage import Storage, layout
from tests.helpers.oci import make_image


class Gate:
    """Holds the first call of `method` whose key matches, after it returned, until `open()`."""

    def __init__(self, method: str, matches: Callable[[str], bool]) -> None:
        self.method = method
        self.matches = matches
        self.reached = asyncio.Event()
        self._opened = asyncio.Event()
        self._armed = True

    def open(self) -> None:
        self._opened.set()

    async def after(self, method: str, key: str) -> None:
        if self._armed and method == self.method and self.matches(key):
            self._armed = False
            self.reached.set()
            await self._opened.wait()


class GatedStorage:
    """The driver, with a gate after `get`, `stat` and `list_dir` (the reads a fill is made of)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.gate: Gate | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def _gated(self, method: str, key: str, result: Any) -> Any:
        if self.gate is not None:
            await self.gate.after(method, key)
        return result

    async def get(self, key: str) -> bytes:
        return await self._gated("get", key, await self._storage.get(key))

    async def stat(self, key: str) -> Any:
        return await self._gated("stat", key, await self._storage.stat(key))

    async def list_dir(self, prefix: str) -> list[str]:
        return await self._gated("list_dir", prefix, await self._storage.list_dir(prefix))


_pushed: dict[tuple[str, str], tuple[bytes, str]] = {}


def _service(storage: Any) -> ManifestService:
    actors = start_actors()
    return ManifestService(storage, actors.index, actors.locks, BlobService(storage), 4 * 1024 * 1024)


async def _push(service: ManifestService, namespace: str, tag: str, seed: int = 0) -> Digest:
    """A new image (random layers) pushed with `tag`."""
    image = make_image()
    _pushed[namespace, tag] = image.manifest, image.media_type
    for data in image.blobs.values():
        digest = Digest.of(data)
        await service.storage.put(layout.blob_data(digest), data)
        await service.blobs.link(namespace, digest)
    return (await service.put(namespace, tag, image.manifest, image.media_type, [])).digest


async def _race(gated: GatedStorage, gate: Gate, reader: Any, writer: Any) -> Any:
    """Run `reader` until it is held at `gate`, run `writer` to the end, then let the reader finish."""
    gated.gate = gate
    reading = asyncio.ensure_future(reader)
    await asyncio.wait_for(gate.reached.wait(), 10)
    await writer
    gate.open()
    return await asyncio.wait_for(reading, 10)


async def test_a_tag_read_that_raced_a_push_does_not_keep_the_old_digest(driver: Storage) -> None:
    old = await _push(_service(driver), "ns", "latest", seed=1)
    gated = GatedStorage(driver)
    service = _service(gated)  # a fresh index: the tag is not cached
    tag_link = layout.tag_current_link("ns", "latest")

    seen = await _race(gated, Gate("get", lambda key: key == tag_link),
                       service.resolve_tag("ns", "latest"), _push(service, "ns", "latest", seed=2))
    assert seen == old  # it read before the push: fine, as long as it is not kept
    new = await service.resolve_tag("ns", "latest")
    assert new != old
    assert new == Digest.parse((await driver.get(tag_link)).decode())
    assert [tag for tag in (await service.list_tags("ns", None, None))[0]] == ["latest"]


async def test_a_tag_listing_that_raced_a_push_does_not_hide_the_new_tag(driver: Storage) -> None:
    await _push(_service(driver), "ns", "one", seed=1)
    gated = GatedStorage(driver)
    service = _service(gated)
    tags_folder = layout.tags_dir("ns")

    listed, _ = await _race(gated, Gate("list_dir", lambda key: key == tags_folder),
                            service.list_tags("ns", None, None), _push(service, "ns", "two", seed=2))
    assert listed == ["one"]
    assert (await service.list_tags("ns", None, None))[0] == ["one", "two"]


async def test_a_manifest_read_that_raced_its_delete_does_not_bring_it_back(driver: Storage) -> None:
    digest = await _push(_service(driver), "ns", "v1", seed=1)
    gated = GatedStorage(driver)
    service = _service(gated)
    revision = layout.revision_link("ns", digest)

    stored = await _race(gated, Gate("stat", lambda key: key == revision),
                         service.get("ns", digest), service.delete("ns", digest))
    assert stored.digest == digest
    assert await driver.stat(revision) is None
    from app import errors

    with pytest.raises(errors.ManifestUnknown):
        await service.get("ns", digest)
    with pytest.raises(errors.ManifestUnknown):
        await service.resolve_tag("ns", "v1")


async def test_a_catalog_listing_that_raced_a_new_repository_does_not_lose_it(driver: Storage) -> None:
    await _push(_service(driver), "first", "v1", seed=1)
    gated = GatedStorage(driver)
    service = _service(gated)

    listed, _ = await _race(gated, Gate("list_dir", lambda key: key == layout.REPOSITORIES),
                            service.catalog(None, None), _push(service, "second", "v1", seed=2))
    assert "first" in listed  # "second" too when the listing learnt of the push before it ended
    assert (await service.catalog(None, None))[0] == ["first", "second"]


async def test_a_referrers_listing_that_raced_a_new_referrer_does_not_hide_it(driver: Storage) -> None:
    subject = await _push(_service(driver), "ns", "v1", seed=1)
    gated = GatedStorage(driver)
    service = _service(gated)
    first = await _push_referrer(service, "ns", subject, seed=3)
    service = _service(gated)  # cold again: the first referrer is only in storage
    referrers_folder = f"{layout.referrers_dir('ns', subject)}/sha256"

    listed = await _race(gated, Gate("list_dir", lambda key: key == referrers_folder),
                         service.referrers("ns", subject, None),
                         _push_referrer(service, "ns", subject, seed=4))
    assert [d["digest"] for d in listed] == [str(first)]
    after = await service.referrers("ns", subject, None)
    assert len(after) == 2 and str(first) in {d["digest"] for d in after}


async def _push_referrer(service: ManifestService, namespace: str, subject: Digest, seed: int = 0) -> Digest:
    body, media_type = _pushed[namespace, "v1"]
    assert Digest.of(body) == subject
    image = make_image(subject={"mediaType": media_type, "digest": str(subject), "size": len(body)},
                       artifact_type=f"application/vnd.test.{seed}")
    for data in image.blobs.values():
        digest = Digest.of(data)
        await service.storage.put(layout.blob_data(digest), data)
        await service.blobs.link(namespace, digest)
    return (await service.put(namespace, Digest.of(image.manifest), image.manifest, image.media_type,
                              [])).digest
