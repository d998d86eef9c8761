"""ManifestService over real fs storage and real actors (no HTTP): push times survive a restart."""

from __future__ import annotations

import json
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


async def test_media_type_survives_a_fresh_index_with_and_without_mediatype_in_the_body(
        tmp_path: Path) -> None:
    """The content type a manifest was pushed with comes back after a restart; a `mediatype` file is
    kept only for a body that does not name its own type (the others are read from the body)."""
    service, storage = await _service(tmp_path)
    declared = make_image(docker=True)
    bare = make_image()
    bare_document = json.loads(bare.manifest)
    del bare_document["mediaType"]
    bare_body = json.dumps(bare_document).encode()
    docker_type = "application/vnd.docker.distribution.manifest.v2+json"
    for image in (declared, bare):
        for data in image.blobs.values():
            digest = Digest.of(data)
            await storage.put(f"docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data", data)
            await service.blobs.link("ns", digest)
    await service.put("ns", "declared", declared.manifest, declared.media_type, [])
    # A Docker manifest whose body leaves mediaType out: only the header says what it is.
    await service.put("ns", "bare", bare_body, docker_type, [])
    revisions = tmp_path / "docker/registry/v2/repositories/ns/_manifests/revisions/sha256"
    assert not (revisions / Digest.of(declared.manifest).hex / "mediatype").exists()
    assert (revisions / Digest.of(bare_body).hex / "mediatype").read_text() == docker_type

    fresh, fresh_storage = await _service(tmp_path)
    assert (await fresh.get("ns", "declared")).media_type == declared.media_type
    assert (await fresh.get("ns", "bare")).media_type == docker_type
    await storage.close()
    await fresh_storage.close()
