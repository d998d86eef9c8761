"""ManifestService over real fs storage and real actors (no HTTP): push times survive a restart."""

from __future__ import annotations

import time
from pathlib import Path

from app.actors.supervisor import start_actors
from app.grammar import Digest
from app.services.blobs import BlobService
from app.services.manifests import ManifestService
from app.storage.fs import FsStorage
from tests.helpers.oci import make_image


async def _service(root: Path) -> tuple[ManifestService, FsStorage]:
    storage = FsStorage(root)
    actors = start_actors()
    blobs = BlobService(storage)
    return ManifestService(storage, actors.index, actors.locks, blobs, 4 * 1024 * 1024), storage


async def test_tag_push_time_recorded_and_read_back_from_storage(tmp_path: Path) -> None:
    service, storage = await _service(tmp_path)
    image = make_image()
    for data in image.blobs.values():
        digest = Digest.of(data)
        await storage.put(f"docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data", data)
        await service.blobs.link("ns", digest)
    before = time.time()
    await service.put("ns", "v1", image.manifest, image.media_type, [])
    pushed = await service.tag_pushed_at("ns", "v1")
    assert pushed is not None and before - 1 <= pushed <= time.time() + 1
    assert await service.tag_pushed_at("ns", "never") is None
    # A fresh process (new actors) reads it from the tag link's modification time.
    fresh, fresh_storage = await _service(tmp_path)
    restored = await fresh.tag_pushed_at("ns", "v1")
    assert restored is not None and abs(restored - pushed) < 2
    await storage.close()
    await fresh_storage.close()
