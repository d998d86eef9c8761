"""Online garbage collection (app/lifecycle/gc.py) over each driver (fs, and S3 on moto), with the real
services and lock store of one process: what it deletes, what it keeps, and the protocol against a
manifest PUT that references an old unreferenced blob while the sweeper is deleting it."""

from __future__ import annotations

import asyncio
from typing import Any

from app import errors
from app.actors.supervisor import start_actors
from app.grammar import Digest
from app.lifecycle.gc import GCOptions, collect
from app.services.blobs import BlobService
from app.services.manifests import ManifestService
from app.storage import Storage, layout
from tests.helpers.oci import make_image, random_layer

# S3 keeps modification times to the second: objects written before this pause are older than a run
# that starts after it with a grace period of 0.
AGE = 1.1


def _service(storage: Storage) -> ManifestService:
    actors = start_actors()
    return ManifestService(storage, actors.index, actors.locks, BlobService(storage, actors.locks),
                           4 * 1024 * 1024)


async def _upload(service: ManifestService, namespace: str, blobs: dict[str, bytes]) -> None:
    for data in blobs.values():
        digest = Digest.of(data)
        await service.storage.put(layout.blob_data(digest), data)
        await service.blobs.link(namespace, digest)


async def _exists(storage: Storage, data: bytes) -> bool:
    return await storage.stat(layout.blob_data(Digest.of(data))) is not None


async def test_collects_what_nothing_references_and_keeps_every_referenced_blob(driver: Storage) -> None:
    service = _service(driver)
    shared = random_layer()
    kept = make_image([shared, random_layer()])
    dropped = make_image([shared, random_layer()])
    orphan = random_layer()
    await _upload(service, "app", kept.blobs)
    await _upload(service, "app", dropped.blobs)
    await _upload(service, "other", {"o": orphan})
    await service.put("app", "v1", kept.manifest, kept.media_type, [])
    put = await service.put("app", "v2", dropped.manifest, dropped.media_type, [])
    await service.delete("app", put.digest)
    await asyncio.sleep(AGE)

    result = await collect(driver, service.locks, GCOptions(grace_period=0))

    gone = [dropped.layers[1], dropped.config, dropped.manifest, orphan]
    assert result.blobs_deleted == 4
    assert result.bytes_reclaimed == sum(len(b) for b in gone)
    for data in gone:
        assert not await _exists(driver, data)
    assert await driver.stat(layout.layer_link("other", Digest.of(orphan))) is None
    assert await driver.stat(layout.layer_link("app", Digest.of(dropped.layers[1]))) is None
    for data in [*kept.blobs.values(), kept.manifest]:
        assert await _exists(driver, data)
    got = await _service(driver).get("app", "v1")
    assert got.body == kept.manifest
    # A second run finds nothing more.
    again = await collect(driver, service.locks, GCOptions(grace_period=0))
    assert again.blobs_deleted == 0


async def test_grace_period_and_dry_run_delete_nothing(driver: Storage) -> None:
    service = _service(driver)
    orphan = random_layer()
    await _upload(service, "app", {"o": orphan})
    young = await collect(driver, service.locks, GCOptions(grace_period=3600))
    assert young.blobs_deleted == 0 and await _exists(driver, orphan)
    await asyncio.sleep(AGE)
    dry = await collect(driver, service.locks, GCOptions(grace_period=0, dry_run=True))
    assert dry.blobs_deleted == 1 and dry.deleted_blobs == [str(Digest.of(orphan))]
    assert await _exists(driver, orphan)


async def test_untagged_manifests_only_with_delete_untagged_and_never_what_a_kept_one_reaches(
        driver: Storage) -> None:
    service = _service(driver)
    child = make_image()
    loose = make_image()
    await _upload(service, "app", child.blobs)
    await _upload(service, "app", loose.blobs)
    child_put = await service.put("app", Digest.of(child.manifest), child.manifest, child.media_type, [])
    loose_put = await service.put("app", Digest.of(loose.manifest), loose.manifest, loose.media_type, [])
    index = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":'
             b'[{"mediaType":"%s","digest":"%s","size":%d}]}'
             % (child.media_type.encode(), str(child_put.digest).encode(), len(child.manifest)))
    await service.put("app", "multi", index, "application/vnd.oci.image.index.v1+json", [])
    await asyncio.sleep(AGE)

    untouched = await collect(driver, service.locks, GCOptions(grace_period=0))
    assert untouched.manifests_deleted == 0 and untouched.blobs_deleted == 0

    result = await collect(driver, service.locks, GCOptions(grace_period=0, delete_untagged=True))
    assert result.deleted_manifests == [("app", str(loose_put.digest))]
    assert result.blobs_deleted == len(loose.blobs) + 1
    fresh = _service(driver)
    assert (await fresh.get("app", child_put.digest)).body == child.manifest  # child of a kept index
    try:
        await fresh.get("app", loose_put.digest)
        raise AssertionError("the untagged manifest is still served")
    except errors.ManifestUnknown:
        pass


class _PausingStorage:
    """The driver, with every write of a revision link held until `release` is set: a manifest PUT
    that has checked its references stops right before it writes the revision that names them."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self.reached = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()  # not paused until a test clears it

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put(self, key: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        if "/_manifests/revisions/" in key and key.endswith("/link"):
            self.reached.set()
            await self.release.wait()
        return await self._inner.put(key, data, *args, **kwargs)


async def test_a_push_that_references_an_old_unreferenced_blob_while_it_is_swept_loses_nothing(
        driver: Storage) -> None:
    """The HEAD-then-manifest race: the layer is old and unreferenced (its manifest was deleted), the
    client saw it exists and PUTs a manifest naming it; the sweeper runs between the PUT's check and
    its revision write. With the protocol, the sweeper waits for the PUT and then keeps the layer;
    without it, the layer is deleted under a manifest that was just accepted."""
    paused: Any = _PausingStorage(driver)
    service = _service(paused)
    layer = random_layer()
    first = make_image([layer])
    await _upload(service, "app", first.blobs)
    put = await service.put("app", "old", first.manifest, first.media_type, [])
    await service.delete("app", put.digest)  # now the layer and config are referenced by nothing
    await asyncio.sleep(AGE)
    paused.reached.clear()
    paused.release.clear()

    again = make_image([layer], config=first.config)  # the same blobs, another manifest
    pushing = asyncio.ensure_future(service.put("app", "new", again.manifest + b" ", again.media_type, []))
    await asyncio.wait_for(paused.reached.wait(), 10)
    sweeping = asyncio.ensure_future(collect(paused, service.locks, GCOptions(grace_period=0)))
    await asyncio.sleep(2.0)  # time enough for a sweeper that does not wait to delete the layer
    paused.release.set()
    await asyncio.wait_for(pushing, 30)
    result = await asyncio.wait_for(sweeping, 60)

    assert await _exists(driver, layer) and await _exists(driver, first.config)
    assert await driver.stat(layout.layer_link("app", Digest.of(layer))) is not None
    assert result.kept_on_recheck >= 2
    assert result.deleted_blobs == [str(Digest.of(first.manifest))]  # the deleted manifest's own blob


async def test_a_blob_linked_within_the_grace_period_is_kept(driver: Storage) -> None:
    """An upload (or mount) of a blob that is already stored only writes a link: the client's manifest
    PUT follows, so a fresh link keeps an old blob."""
    service = _service(driver)
    orphan = random_layer()
    await _upload(service, "app", {"o": orphan})
    await asyncio.sleep(3.1)
    assert await service.blobs.mount("other", Digest.of(orphan), "app")
    result = await collect(driver, service.locks, GCOptions(grace_period=2.0))
    assert result.blobs_deleted == 0 and await _exists(driver, orphan)
