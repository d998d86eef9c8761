"""ManifestService over each storage driver (fs, and S3 on moto) and real actors (no HTTP): push times
and media types survive a restart (a fresh index over the same store)."""

from __future__ import annotations

import json
import time

import pytest

from app.actors.supervisor import start_actors
from app.grammar import Digest
from app.services.blobs import BlobService
from app.services.manifests import ManifestService
from app.storage import NotFound, Storage, layout
from tests.helpers.drivers import DriverSpec
from tests.helpers.oci import make_image


def _service(storage: Storage) -> ManifestService:
    actors = start_actors()
    return ManifestService(storage, actors.index, actors.locks, BlobService(storage), 4 * 1024 * 1024)


async def _store_blobs(service: ManifestService, storage: Storage, blobs: dict[str, bytes]) -> None:
    for data in blobs.values():
        digest = Digest.of(data)
        await storage.put(layout.blob_data(digest), data)
        await service.blobs.link("ns", digest)


async def test_tag_push_time_recorded_and_read_back_from_storage(
        driver: Storage, driver_spec: DriverSpec) -> None:
    service = _service(driver)
    image = make_image()
    await _store_blobs(service, driver, image.blobs)
    before = time.time()
    await service.put("ns", "v1", image.manifest, image.media_type, [])
    pushed = await service.tag_pushed_at("ns", "v1")
    assert pushed is not None and before - 1 <= pushed <= time.time() + 1
    assert await service.tag_pushed_at("ns", "never") is None
    # A fresh process (new actors, a new driver) reads it from the tag link's modification time.
    fresh_storage = driver_spec.open()
    try:
        restored = await _service(fresh_storage).tag_pushed_at("ns", "v1")
        assert restored is not None and abs(restored - pushed) < 2
    finally:
        await fresh_storage.close()


async def test_media_type_survives_a_fresh_index_with_and_without_mediatype_in_the_body(
        driver: Storage, driver_spec: DriverSpec) -> None:
    """The content type a manifest was pushed with comes back after a restart; a `mediatype` object is
    kept only for a body that does not name its own type (the others are read from the body)."""
    service = _service(driver)
    declared = make_image(docker=True)
    bare = make_image()
    bare_document = json.loads(bare.manifest)
    del bare_document["mediaType"]
    bare_body = json.dumps(bare_document).encode()
    docker_type = "application/vnd.docker.distribution.manifest.v2+json"
    for image in (declared, bare):
        await _store_blobs(service, driver, image.blobs)
    await service.put("ns", "declared", declared.manifest, declared.media_type, [])
    # A Docker manifest whose body leaves mediaType out: only the header says what it is.
    await service.put("ns", "bare", bare_body, docker_type, [])
    with pytest.raises(NotFound):
        await driver.get(layout.revision_media_type("ns", Digest.of(declared.manifest)))
    assert await driver.get(layout.revision_media_type("ns", Digest.of(bare_body))) == docker_type.encode()

    fresh_storage = driver_spec.open()
    try:
        fresh = _service(fresh_storage)
        assert (await fresh.get("ns", "declared")).media_type == declared.media_type
        assert (await fresh.get("ns", "bare")).media_type == docker_type
    finally:
        await fresh_storage.close()
