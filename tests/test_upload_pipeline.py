"""UploadService's streaming pipeline over real storage (each driver of the contract suite: fs, and S3
on moto) and real actors (no HTTP).

The body is written and hashed one chunk behind the socket (double buffering): these tests pin that the
order of bytes, what a disconnect keeps and what a failing disk leaves behind are unchanged by it, and
that a session continues in a fresh process (new actors) from what the store holds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app import errors
from app.actors.supervisor import Actors, start_actors
from app.grammar import Digest
from app.services.blobs import BlobService
from app.services.uploads import ClientDisconnected, ContentRange, UploadService
from app.storage import Storage, UploadWriter, layout
from app.storage.fs import FsStorage

CHUNK = 4096  # the smallest streaming_chunk_size: many flushes per body


class FailingStorage(FsStorage):
    """Real fs storage whose append writer fails (disk full) after `allowed` successful writes."""

    allowed = 1_000_000
    writes = 0

    async def upload_writer(self, key: str, *, create: bool = False) -> UploadWriter:
        writer = await super().upload_writer(key, create=create)
        real_write = writer.write

        async def write(data: Any) -> None:
            if self.writes >= self.allowed:
                raise OSError(28, "No space left on device")
            self.writes += 1
            await real_write(data)

        writer.write = write  # type: ignore[method-assign]
        return writer


def pieces(data: bytes, sizes: tuple[int, ...] = (1, 4095, 4097, 12_000, 333)) -> list[bytes]:
    """`data` cut into irregular pieces, smaller and larger than a chunk."""
    out, at, i = [], 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[at:at + size])
        at += size
        i += 1
    return out


async def body_of(parts: list[bytes], gone_after: int | None = None) -> AsyncIterator[bytes]:
    for i, part in enumerate(parts):
        if gone_after is not None and i == gone_after:
            raise ClientDisconnected("client went away")
        yield part


@pytest.fixture
def actors() -> Iterator[Actors]:
    started = start_actors()
    yield started
    started.stop()


def _service(storage: Storage, actors: Actors) -> UploadService:
    return UploadService(storage, actors.uploads, actors.locks, BlobService(storage), CHUNK)


@pytest.fixture
def service(driver: Storage, actors: Actors) -> UploadService:
    """An UploadService over a fresh store of each driver (the contract suite's `driver` fixture)."""
    return _service(driver, actors)


async def blob(service: UploadService, data: bytes) -> bytes:
    return await service.storage.get(layout.blob_data(Digest.of(data)))


async def test_irregular_pieces_over_many_flushes_keep_their_order(service: UploadService) -> None:
    data = os.urandom(300_000)
    upload = await service.start("ns")
    size = await service.append("ns", upload, body_of(pieces(data[:200_000])), None)
    assert size == 200_000
    await service.complete("ns", upload, Digest.of(data), body_of(pieces(data[200_000:])))
    assert await blob(service, data) == data


async def test_disconnect_keeps_every_byte_received_and_the_session_resumes(
        service: UploadService, actors: Actors) -> None:
    data = os.urandom(100_000)
    parts = pieces(data)
    upload = await service.start("ns")
    with pytest.raises(ClientDisconnected) as gone:
        await service.append("ns", upload, body_of(parts, gone_after=9), None)
    kept = sum(len(p) for p in parts[:9])
    assert gone.value.size == kept
    assert await service.status("ns", upload) == kept
    # A fresh process (new actors, nothing in memory) continues from what the store holds, with the
    # hash state kept beside the session: an object store cannot read the uploaded bytes back.
    fresh_actors = start_actors()
    try:
        fresh = _service(service.storage, fresh_actors)
        assert await fresh.status("ns", upload) == kept
        await fresh.complete("ns", upload, Digest.of(data), body_of([data[kept:]]))
    finally:
        fresh_actors.stop()
    assert await blob(service, data) == data


async def test_disk_full_mid_body_fails_cleanly_and_the_session_rebuilds_from_disk(
        tmp_path: Path, actors: Actors) -> None:
    """fs only: a disk that fills up mid-body (S3's failures are StorageError, tests/test_storage_s3.py)."""
    storage = FailingStorage(tmp_path)
    storage.allowed = 3
    service = _service(storage, actors)
    data = os.urandom(64_000)
    upload = await service.start("ns")
    with pytest.raises(OSError, match="No space left"):
        await service.append("ns", upload, body_of(pieces(data)), None)
    on_disk = (tmp_path / layout.upload_data("ns", upload)).read_bytes()
    # Only whole flushes that succeeded are stored, in order; nothing was written after the failure.
    assert storage.writes == 3
    assert on_disk == data[:len(on_disk)] and len(on_disk) >= 3 * CHUNK
    # The session was forgotten; the next request rebuilds size and hash from the stored bytes.
    assert await service.status("ns", upload) == len(on_disk)
    storage.allowed = 1_000_000
    await service.complete("ns", upload, Digest.of(data), body_of([data[len(on_disk):]]))
    assert hashlib.sha256(await blob(service, data)).hexdigest() == Digest.of(data).hex
    await storage.close()


async def test_a_wrong_content_range_is_refused_before_a_byte_is_written(service: UploadService) -> None:
    """No driver can take bytes back (an object store has no truncate): a Content-Range whose length is
    not the Content-Length, or that comes without one, or starts elsewhere, is refused up front."""
    data = os.urandom(50_000)
    upload = await service.start("ns")
    for content_range, length in [(ContentRange(0, 10_000), 50_000), (ContentRange(0, 49_999), None),
                                  (ContentRange(5, 50_004), 50_000)]:
        with pytest.raises(errors.RangeInvalid) as refused:
            await service.append("ns", upload, body_of(pieces(data)), content_range, length)
        assert refused.value.headers["Range"] == "0-0"
        assert await service.status("ns", upload) == 0
    assert await service.append("ns", upload, body_of(pieces(data[:20_000])), ContentRange(0, 19_999),
                                20_000) == 20_000
    await service.complete("ns", upload, Digest.of(data), body_of(pieces(data[20_000:])))
    assert await blob(service, data) == data


@pytest.mark.parametrize("size", [0, 1, 5000, CHUNK, CHUNK + 1, 50_000])
async def test_monolithic_put_commits_small_and_large_bodies(service: UploadService, size: int) -> None:
    """A body within one chunk is committed from memory, a larger one streams; both leave only the blob."""
    data = os.urandom(size)
    upload = await service.start("ns")
    await service.complete("ns", upload, Digest.of(data), body_of(pieces(data)))
    assert await blob(service, data) == data
    assert await service.blobs.is_linked("ns", Digest.of(data))
    assert await service.storage.list_dir(layout.upload_dir("ns", upload)) == []
    with pytest.raises(errors.BlobUploadUnknown):
        await service.status("ns", upload)


@pytest.mark.parametrize("size", [1000, 50_000])
async def test_monolithic_put_with_the_wrong_digest_stores_nothing(service: UploadService, size: int) -> None:
    data = os.urandom(size)
    upload = await service.start("ns")
    with pytest.raises(errors.DigestInvalid):
        await service.complete("ns", upload, Digest.of(b"other"), body_of(pieces(data)))
    assert await service.storage.stat(layout.blob_data(Digest.of(data))) is None
    assert await service.storage.stat(layout.blob_data(Digest.of(b"other"))) is None
    with pytest.raises(errors.BlobUploadUnknown):
        await service.status("ns", upload)


@pytest.mark.parametrize("gone_after", [1, 2, 12])  # within the first chunk, and beyond it
async def test_monolithic_put_cut_off_keeps_what_arrived(service: UploadService, gone_after: int) -> None:
    data = os.urandom(60_000)
    parts = pieces(data)
    upload = await service.start("ns")
    with pytest.raises(ClientDisconnected):
        await service.complete("ns", upload, Digest.of(data), body_of(parts, gone_after=gone_after))
    kept = sum(len(p) for p in parts[:gone_after])
    assert await service.status("ns", upload) == kept
    await service.complete("ns", upload, Digest.of(data), body_of([data[kept:]]))
    assert await blob(service, data) == data
