"""Blobs in one store and metadata in another (`[blob_store.*]` + `[metadata_store.*]`): each key lands
in the store that must hold it, and the two read as one storage. The blob store is each driver of the
contract suite (fs, and S3 on moto); the metadata store is fs."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.grammar import Digest
from app.storage import NotFound, Storage, layout
from app.storage.fs import FsStorage
from app.storage.routed import RoutedStorage, holds_blob_bytes

BLOB = os.urandom(3000)
DIGEST = Digest.of(BLOB)


@pytest.fixture
async def metadata(tmp_path: Path) -> AsyncIterator[FsStorage]:
    store = FsStorage(tmp_path / "metadata")
    yield store
    await store.close()


@pytest.fixture
def routed(driver: Storage, metadata: FsStorage) -> RoutedStorage:
    return RoutedStorage(driver, metadata)


async def _holds(store: Storage, key: str) -> bool:
    return await store.stat(key) is not None


def test_the_rule_over_every_kind_of_key() -> None:
    blob_keys = [layout.blob_data(DIGEST), layout.upload_data("a/b", "u1"), layout.upload_verify("a", "u"),
                 layout.upload_started_at("a", "u")]
    metadata_keys = [layout.layer_link("a/b", DIGEST), layout.revision_link("a", DIGEST),
                     layout.tag_current_link("a", "v1"), layout.referrer_link("a", DIGEST, DIGEST),
                     layout.TOKEN_SIGNING_SECRET, layout.ADMIN_PASSWORD_HASH, layout.tag_fetched_at("a", "t")]
    assert all(holds_blob_bytes(key) for key in blob_keys)
    assert not any(holds_blob_bytes(key) for key in metadata_keys)
    # A repository whose name contains "blobs" is still metadata.
    assert not holds_blob_bytes(layout.layer_link("blobs/x", DIGEST))


async def test_keys_land_in_their_store(routed: RoutedStorage, driver: Storage, metadata: FsStorage) -> None:
    await routed.put(layout.blob_data(DIGEST), BLOB)
    await routed.put(layout.layer_link("ns", DIGEST), f"{DIGEST}".encode())
    assert await routed.create(layout.TOKEN_SIGNING_SECRET, b"secret", private=True)
    assert await _holds(driver, layout.blob_data(DIGEST))
    assert not await _holds(metadata, layout.blob_data(DIGEST))
    assert await _holds(metadata, layout.layer_link("ns", DIGEST))
    assert not await _holds(driver, layout.layer_link("ns", DIGEST))
    assert await metadata.get(layout.TOKEN_SIGNING_SECRET) == b"secret"
    assert await routed.get(layout.blob_data(DIGEST)) == BLOB
    assert b"".join([chunk async for chunk in routed.read(layout.blob_data(DIGEST), 10, 20)]) == BLOB[10:30]
    body = await routed.body(layout.blob_data(DIGEST))
    assert body.size == len(BLOB)


async def test_an_upload_session_commits_inside_the_blob_store(
        routed: RoutedStorage, driver: Storage, metadata: FsStorage) -> None:
    session = layout.upload_data("ns", "u1")
    writer = await routed.upload_writer(session, create=True)
    await writer.write(BLOB[:1000])
    await writer.close(b"checkpoint")
    assert await routed.upload_modified(session) is not None
    resumed = await routed.upload_writer(session)
    assert resumed.size == 1000
    await resumed.write(BLOB[1000:])
    await resumed.commit(layout.blob_data(DIGEST))
    assert await driver.get(layout.blob_data(DIGEST)) == BLOB
    assert [key async for key in metadata.walk("")] == []


async def test_a_copy_across_the_stores(routed: RoutedStorage, driver: Storage, metadata: FsStorage) -> None:
    await routed.put(layout.blob_data(DIGEST), BLOB)
    await routed.copy(layout.blob_data(DIGEST), "elsewhere/copy")
    assert await metadata.get("elsewhere/copy") == BLOB
    await routed.copy("elsewhere/copy", layout.upload_verify("ns", "u2"))
    assert await driver.get(layout.upload_verify("ns", "u2")) == BLOB
    with pytest.raises(NotFound):
        await routed.copy("elsewhere/absent", layout.upload_verify("ns", "u3"))
    assert await driver.stat(layout.upload_verify("ns", "u3")) is None


async def test_listing_and_walking_merge_both_stores(routed: RoutedStorage) -> None:
    keys = [layout.layer_link("ns", DIGEST), layout.tag_current_link("ns", "v1"),
            layout.upload_started_at("ns", "u1"), layout.blob_data(DIGEST), layout.TOKEN_SIGNING_SECRET]
    for key in keys:
        await routed.put(key, b"x")
    # A repository's folder holds `_layers`/`_manifests` (metadata) beside `_uploads` (blob store).
    assert await routed.list_dir(layout.repository("ns")) == ["_layers", "_manifests", "_uploads"]
    assert await routed.list_dir(layout.uploads_dir("ns")) == ["u1"]
    assert await routed.list_dir(layout.tags_dir("ns")) == ["v1"]
    assert [key async for key in routed.walk("")] == sorted(keys)
    after = sorted(keys)[1]
    assert [key async for key in routed.walk("", start_after=after)] == sorted(keys)[2:]
    assert [key async for key in routed.walk(layout.repository("ns"))] == sorted(keys[:3])


async def test_deleting_a_repository_empties_it_in_both(routed: RoutedStorage, driver: Storage,
                                                        metadata: FsStorage) -> None:
    await routed.put(layout.layer_link("ns", DIGEST), b"x")
    await routed.put(layout.upload_started_at("ns", "u1"), b"x")
    await routed.put(layout.layer_link("other", DIGEST), b"x")
    assert await routed.delete(layout.layer_link("other", DIGEST))
    assert not await routed.delete(layout.layer_link("other", DIGEST))
    await routed.delete_tree(layout.repository("ns"))
    assert [key async for key in routed.walk(layout.repository("ns"))] == []
    assert [key async for key in driver.walk("")] == []
    assert [key async for key in metadata.walk("")] == []


async def test_purge_temporary_sweeps_both(tmp_path: Path) -> None:
    """What a killed process left in either store's temporary space goes; what is young stays."""
    blobs, metadata = FsStorage(tmp_path / "b"), FsStorage(tmp_path / "m")
    routed = RoutedStorage(blobs, metadata)
    try:
        stale = []
        for store in (blobs, metadata):
            (store.root / "tmp").mkdir(parents=True)
            for name in ("stale", "young"):
                (store.root / "tmp" / name).write_bytes(b"left by a killed process")
            os.utime(store.root / "tmp" / "stale", (time.time() - 7200, time.time() - 7200))
            stale.append(store.root / "tmp" / "stale")
        assert await routed.purge_temporary(older_than=3600) == 2
        assert not any(path.exists() for path in stale)
        assert all((store.root / "tmp" / "young").exists() for store in (blobs, metadata))
    finally:
        await routed.close()
