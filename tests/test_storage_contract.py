"""The storage contract (app/storage/base.py): the one suite every driver passes (as distribution's
`testsuites`), run on fs and on S3 (moto in server mode, under a key prefix).

Sizes are chosen around S3's 5 MiB minimum part (`PART_SIZE`, which the S3 driver is configured with)
so that S3 runs uploads and spools of one and of several parts, and multipart copies. Contents are
`pattern()` bytes, in which every 8-byte word is its own position: a part twice, a part missing or two
writers mixed all show.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import pytest

from app.storage import NotFound, Storage
from tests.helpers.drivers import COPY_THRESHOLD, MIB, PART_SIZE, DriverSpec, pattern, pattern_stream
from tests.helpers.memory import peak_memory
from tests.helpers.server import REPO_ROOT

UPLOAD = "docker/registry/v2/repositories/library/app/_uploads/0c0ffee0/data"
UPLOAD_DIR = UPLOAD.rsplit("/", 1)[0]
BLOB = "docker/registry/v2/blobs/sha256/ab/ab12/data"
SPOOL_DIR = "docker/registry/v2/repositories/library/app/_uploads/fetch-1"
SPOOL = f"{SPOOL_DIR}/data"


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def keys_below(driver: Storage, prefix: str) -> list[str]:
    return [key async for key in driver.walk(prefix)]


async def write_all(writer: object, offset: int, length: int, chunk: int = MIB) -> None:
    for data in pattern_stream(offset, length, chunk):
        await writer.write(data)  # type: ignore[attr-defined]


# --- small objects ----------------------------------------------------------------------------------
async def test_put_get_replace(driver: Storage) -> None:
    await driver.put("a/b/c", b"hello")
    assert await driver.get("a/b/c") == b"hello"
    await driver.put("a/b/c", b"replaced, longer")
    assert await driver.get("a/b/c") == b"replaced, longer"
    await driver.put("a/b/c", b"")
    assert await driver.get("a/b/c") == b""
    assert await driver.exists("a/b/c")


async def test_absent_key(driver: Storage) -> None:
    assert await driver.stat("missing/key") is None
    assert not await driver.exists("missing/key")
    for attempt in (driver.get("missing/key"), collect(driver.read("missing/key")),
                    collect(driver.read("missing/key", 0, 0)), driver.body("missing/key"),
                    driver.copy("missing/key", "other/key")):
        with pytest.raises(NotFound):
            await attempt
    assert await driver.stat("other/key") is None


async def test_create_only_when_absent(driver: Storage) -> None:
    assert await driver.create("token/secret", b"first", private=True) is True
    assert await driver.create("token/secret", b"second", private=True) is False
    assert await driver.get("token/secret") == b"first"
    assert await driver.create("auth/hash", b"x") is True


async def test_concurrent_creates_exactly_one_wins(driver: Storage) -> None:
    for round_ in range(5):
        key = f"race/{round_}"
        contents = [pattern(i * 10_000, 200_000) for i in range(4)]
        won = await asyncio.gather(*(driver.create(key, content) for content in contents))
        assert sum(won) == 1, won
        assert await driver.get(key) == contents[won.index(True)]


async def test_put_is_atomic_for_readers(driver: Storage) -> None:
    old, new = pattern(0, 3 * MIB), pattern(5, 3 * MIB)
    await driver.put("manifest", old)
    for _ in range(3):
        seen = await asyncio.gather(driver.put("manifest", new), driver.get("manifest"),
                                    driver.put("manifest", old), driver.get("manifest"))
        assert seen[1] in (old, new) and seen[3] in (old, new)


async def test_stat(driver: Storage) -> None:
    await driver.put("s/one", b"12345")
    stat = await driver.stat("s/one")
    assert stat is not None and stat.size == 5
    assert abs(stat.modified - time.time()) < 120
    assert await driver.stat("s/one/deeper") is None


# --- reading ----------------------------------------------------------------------------------------
SIZE = 100_003
READ_CASES = [
    (0, None), (0, SIZE), (0, 1), (0, 0), (1, None), (10, 20), (SIZE - 1, None), (SIZE - 1, 1),
    (SIZE - 1, 10), (SIZE, None), (SIZE, 5), (SIZE, 0), (SIZE + 10, None), (SIZE + 10, 3),
    (5, SIZE + 100), (SIZE - 10, 0),
]


async def test_read_ranges_and_edges(driver: Storage) -> None:
    data = pattern(0, SIZE)
    await driver.put("blob", data)
    for offset, length in READ_CASES:
        expected = data[offset:] if length is None else data[offset:offset + length]
        assert await collect(driver.read("blob", offset, length)) == expected, (offset, length)


async def test_read_empty_object(driver: Storage) -> None:
    await driver.put("empty", b"")
    for offset, length in [(0, None), (0, 0), (0, 10), (1, None), (3, 3)]:
        assert await collect(driver.read("empty", offset, length)) == b""


async def test_read_in_chunks(driver: Storage) -> None:
    data = pattern(0, 3 * MIB + 17)
    await driver.put("chunked", data)
    for chunk_size, offset, length in [(65536, 0, None), (1000, 7, 100_000), (MIB, 0, None),
                                       (4 * MIB, 0, None), (12345, MIB - 3, MIB + 6)]:
        chunks = [chunk async for chunk in driver.read("chunked", offset, length, chunk_size=chunk_size)]
        assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
        expected = data[offset:] if length is None else data[offset:offset + length]
        assert b"".join(chunks) == expected


async def test_read_stopped_early(driver: Storage) -> None:
    await driver.put("partly", pattern(0, 3 * MIB))
    stream = driver.read("partly", chunk_size=65536)
    assert await anext(stream) == pattern(0, 65536)
    await stream.aclose()  # (a client that went away): nothing leaks, the store still answers
    assert await driver.get("partly") == pattern(0, 3 * MIB)


async def test_body(driver: Storage) -> None:
    data = pattern(0, 2 * MIB + 1)
    await driver.put("bodies/one", data)
    body = await driver.body("bodies/one")
    assert body.size == len(data)
    assert await collect(body.read()) == data
    assert await collect(body.read(MIB, 10)) == data[MIB:MIB + 10]
    assert await collect(body.read(len(data) - 1)) == data[-1:]
    chunks = [chunk async for chunk in body.read(chunk_size=100_000)]
    assert all(len(chunk) <= 100_000 for chunk in chunks) and b"".join(chunks) == data
    path = body.local_path()
    assert path is None or os.stat(path).st_size == len(data)  # (fs: what sendfile sends)
    assert await body.redirect_url() is None  # S3's `redirect` is off by default


# --- listing and deleting ---------------------------------------------------------------------------
async def test_list_dir(driver: Storage) -> None:
    for key in ("r/x/1", "r/x/2", "r/y/deep/3", "r/z", "r/x-y", "r/a.b/c", "rr/not-r"):
        await driver.put(key, b"v")
    assert await driver.list_dir("r") == ["a.b", "x", "x-y", "y", "z"]
    assert await driver.list_dir("r/x") == ["1", "2"]
    assert await driver.list_dir("r/y") == ["deep"]
    assert await driver.list_dir("r/z") == []  # an object has no children
    assert await driver.list_dir("nothing/here") == []


async def test_walk_lexical_order_and_start_after(driver: Storage) -> None:
    keys = ["w/a/1", "w/a/2", "w/a-b/1", "w/a.b", "w/a/z/9", "w/b", "w/ab/1", "w/c/d/e/f"]
    for key in keys:
        await driver.put(key, b"v")
    await driver.put("wx/outside", b"v")
    ordered = sorted(keys)  # lexical order of the whole key: `a-b/` and `a.b` come before `a/`
    assert await keys_below(driver, "w") == ordered
    assert await keys_below(driver, "w/a") == ["w/a/1", "w/a/2", "w/a/z/9"]
    for after in ("w/a-b/1", "w/a/", "w/a/2", "w/a/zz", "w/a", "w/0", "w/zzz", "w/ab"):
        assert [key async for key in driver.walk("w", start_after=after)] == [k for k in ordered if k > after]
    assert await keys_below(driver, "nothing") == []
    # From the root (`""`): every key, as it was written, in the same order.
    assert await keys_below(driver, "") == sorted([*keys, "wx/outside"])
    assert [key async for key in driver.walk("", start_after="w/b")] == [k for k in sorted(
        [*keys, "wx/outside"]) if k > "w/b"]


async def _put_many(driver: Storage, keys: list[str]) -> None:
    slots = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with slots:
            await driver.put(key, key.encode())

    await asyncio.gather(*(put(key) for key in keys))


async def test_thousands_of_keys_paginated(driver: Storage) -> None:
    # More than one page of S3's 1000 keys flat (list_dir, delete_tree), more than two nested (walk).
    flat = [f"many/flat/{i:05d}" for i in range(1500)]
    nested = [f"many/nested/{i % 7}/{i:05d}/link" for i in range(560)]
    await _put_many(driver, flat + nested)
    assert await driver.list_dir("many/flat") == [key.rsplit("/", 1)[1] for key in flat]
    assert await driver.list_dir("many/nested") == [str(i) for i in range(7)]
    assert await keys_below(driver, "many/flat") == flat
    assert await keys_below(driver, "many") == sorted(flat + nested)
    assert [key async for key in driver.walk("many/flat", start_after=flat[1499])] == flat[1500:]
    await driver.delete_tree("many/flat")
    assert await keys_below(driver, "many/flat") == []
    assert await driver.list_dir("many") == ["nested"]
    await driver.delete_tree("many")
    assert await keys_below(driver, "many") == []


async def test_delete(driver: Storage) -> None:
    await driver.put("d/one", b"1")
    assert await driver.delete("d/one") is True
    assert await driver.delete("d/one") is False
    assert await driver.stat("d/one") is None
    assert await driver.delete("never/was") is False


async def test_delete_tree_spares_siblings(driver: Storage) -> None:
    for key in ("t/a/1", "t/a/b/2", "t/ab/3", "t/a.x", "t/b"):
        await driver.put(key, b"v")
    await driver.delete_tree("t/a")
    assert await keys_below(driver, "t") == ["t/a.x", "t/ab/3", "t/b"]
    await driver.delete_tree("t/never")  # absent is fine


# --- copies -----------------------------------------------------------------------------------------
async def test_copy(driver: Storage) -> None:
    await driver.put("c/source", b"source content")
    await driver.put("c/destination", b"something that was there before")
    await driver.copy("c/source", "c/destination")
    assert await driver.get("c/destination") == b"source content"
    assert await driver.get("c/source") == b"source content"
    await driver.copy("c/source", "c/new/deeper/key")
    assert await driver.get("c/new/deeper/key") == b"source content"
    with pytest.raises(NotFound):
        await driver.copy("c/missing", "c/destination")
    assert await driver.get("c/destination") == b"source content"


async def test_copy_large_object(driver: Storage) -> None:
    # Above the S3 driver's configured threshold: a multipart copy of 5 MiB part copies.
    data = pattern(0, COPY_THRESHOLD + PART_SIZE + 123)
    await driver.put("c/large", data)
    await driver.put("c/large-copy", b"old")
    await driver.copy("c/large", "c/large-copy")
    assert await collect(driver.read("c/large-copy")) == data


# --- upload writers ---------------------------------------------------------------------------------
async def test_upload_write_close_resume_commit(driver: Storage) -> None:
    writer = await driver.upload_writer(UPLOAD, create=True)
    assert (writer.size, writer.checkpoint) == (0, None)
    await write_all(writer, 0, 3 * MIB)
    assert writer.size == 3 * MIB
    await writer.close(b"after 3")
    # Each "request" resumes by key, appends a length that crosses part boundaries, and closes.
    offset = 3 * MIB
    for length in (4 * MIB, 6 * MIB + 5, 1, PART_SIZE - 6):
        writer = await driver.upload_writer(UPLOAD)
        assert writer.size == offset
        await write_all(writer, offset, length, chunk=700_000)
        offset += length
        await writer.close(f"after {offset}".encode())
    writer = await driver.upload_writer(UPLOAD)
    assert (writer.size, writer.checkpoint) == (offset, f"after {offset}".encode())
    await writer.commit(BLOB)
    assert await collect(driver.read(BLOB)) == pattern(0, offset)
    assert (await driver.stat(BLOB)).size == offset  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        await driver.upload_writer(UPLOAD)  # the session's data is gone
    assert await keys_below(driver, UPLOAD_DIR) == []
    await writer.cancel()  # what the upload service does after every commit: harmless


async def test_upload_commit_without_close(driver: Storage) -> None:
    writer = await driver.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, 2 * PART_SIZE + 99)
    await writer.commit(BLOB)
    assert await collect(driver.read(BLOB)) == pattern(0, 2 * PART_SIZE + 99)


@pytest.mark.parametrize("size", [0, 1, PART_SIZE - 1, PART_SIZE, PART_SIZE + 1])
async def test_upload_sizes_around_a_part(driver: Storage, size: int) -> None:
    writer = await driver.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, size)
    await writer.write(b"")  # an empty write (an empty PATCH) is legal
    await writer.close(b"cp")
    writer = await driver.upload_writer(UPLOAD)
    assert (writer.size, writer.checkpoint) == (size, b"cp")
    await writer.commit(BLOB)
    assert await collect(driver.read(BLOB)) == pattern(0, size)


async def test_upload_resume_unknown_session(driver: Storage) -> None:
    with pytest.raises(NotFound):
        await driver.upload_writer(UPLOAD)


async def test_upload_session_exists_once_created(driver: Storage) -> None:
    await driver.upload_writer(UPLOAD, create=True)
    writer = await driver.upload_writer(UPLOAD)
    assert (writer.size, writer.checkpoint) == (0, None)


async def test_upload_modified_follows_each_close(driver: Storage) -> None:
    """Idle sessions expire by this time, which must move with every close (an active session started
    long ago is not idle), and say None for no session."""
    assert await driver.upload_modified(UPLOAD) is None
    writer = await driver.upload_writer(UPLOAD, create=True)
    created = await driver.upload_modified(UPLOAD)
    assert created is not None and abs(created - time.time()) < 60
    await asyncio.sleep(1.1)  # object stores keep whole seconds
    await write_all(writer, 0, 1000)
    await writer.close(b"later")
    later = await driver.upload_modified(UPLOAD)
    assert later is not None and later > created
    await writer.cancel()
    assert await driver.upload_modified(UPLOAD) is None


async def test_upload_create_resets_a_session(driver: Storage) -> None:
    writer = await driver.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, PART_SIZE + 10)
    await writer.close(b"old")
    writer = await driver.upload_writer(UPLOAD, create=True)
    assert (writer.size, writer.checkpoint) == (0, None)
    await write_all(writer, 7, 100)
    await writer.close(b"new")
    writer = await driver.upload_writer(UPLOAD)
    assert (writer.size, writer.checkpoint) == (100, b"new")
    await writer.commit(BLOB)
    assert await driver.get(BLOB) == pattern(7, 100)


async def test_upload_checkpoint_round_trip(driver: Storage) -> None:
    state = bytes(range(256)) * 3  # opaque binary, not text
    writer = await driver.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, 1000)
    await writer.close(state)
    assert (await driver.upload_writer(UPLOAD)).checkpoint == state
    writer = await driver.upload_writer(UPLOAD)
    await writer.close(None)  # no new bytes, no checkpoint
    writer = await driver.upload_writer(UPLOAD)
    assert (writer.size, writer.checkpoint) == (1000, None)


async def test_upload_checkpoint_only_for_its_size(driver: Storage) -> None:
    writer = await driver.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, PART_SIZE - 100)
    await writer.close(b"for the closed size")
    writer = await driver.upload_writer(UPLOAD)
    await write_all(writer, PART_SIZE - 100, PART_SIZE + 300)  # written (parts too), never closed
    del writer
    # A driver keeps either the closed session, or more bytes without a checkpoint: never a checkpoint
    # of another size.
    writer = await driver.upload_writer(UPLOAD)
    assert writer.size >= PART_SIZE - 100
    if writer.checkpoint is not None:
        assert (writer.size, writer.checkpoint) == (PART_SIZE - 100, b"for the closed size")
    size = writer.size
    await write_all(writer, size, 1000)
    await writer.commit(BLOB)
    assert await collect(driver.read(BLOB)) == pattern(0, size + 1000)


async def test_upload_commit_replaces_existing_object(driver: Storage) -> None:
    await driver.put(BLOB, b"what was there")
    for length in (1000, 2 * PART_SIZE + 3):
        writer = await driver.upload_writer(UPLOAD, create=True)
        await write_all(writer, 0, length)
        await writer.commit(BLOB)
        assert await collect(driver.read(BLOB)) == pattern(0, length)


async def test_upload_cancel(driver: Storage) -> None:
    await driver.put(BLOB, b"untouched")
    writer = await driver.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, PART_SIZE + 5)
    await writer.close(b"cp")
    writer = await driver.upload_writer(UPLOAD)
    await write_all(writer, PART_SIZE + 5, PART_SIZE)
    await writer.cancel()
    with pytest.raises(NotFound):
        await driver.upload_writer(UPLOAD)
    assert await keys_below(driver, UPLOAD_DIR) == []
    assert await driver.get(BLOB) == b"untouched"
    await writer.cancel()  # twice is fine


async def test_concurrent_sessions_last_commit_wins_whole(driver: Storage) -> None:
    sessions = [f"{UPLOAD_DIR}-{i}/data" for i in range(2)]
    contents = [(0, 2 * PART_SIZE + 11), (3, PART_SIZE + 7)]  # (pattern offset, length)
    for round_ in range(2):
        writers = [await driver.upload_writer(key, create=True) for key in sessions]
        for start in range(0, 2 * PART_SIZE + 11, MIB):  # interleaved writes
            for writer, (offset, length) in zip(writers, contents, strict=True):
                if start < length:
                    await writer.write(pattern(offset + start, min(MIB, length - start)))
        await asyncio.gather(*(writer.commit(BLOB) for writer in writers))
        stored = await collect(driver.read(BLOB))
        assert stored in [pattern(offset, length) for offset, length in contents], round_


async def _run_child(spec: DriverSpec, *args: str) -> str:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.helpers.drivers", spec.dumps(), *args, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, err.decode()
    return out.decode()


async def test_upload_resumed_by_another_process(driver_spec: DriverSpec, driver: Storage) -> None:
    writer = await driver.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, PART_SIZE + 3)
    await writer.close(b"ours")
    # Another process resumes the session by its key alone, appends across a part, and closes.
    await _run_child(driver_spec, "append", UPLOAD, str(PART_SIZE + 3), str(PART_SIZE + 11), "theirs")
    writer = await driver.upload_writer(UPLOAD)
    assert (writer.size, writer.checkpoint) == (2 * PART_SIZE + 14, b"theirs")
    await write_all(writer, 2 * PART_SIZE + 14, 100)
    await writer.commit(BLOB)
    assert await collect(driver.read(BLOB)) == pattern(0, 2 * PART_SIZE + 114)


@pytest.mark.timeout(900)
async def test_upload_large_stream_in_bounded_memory(driver_spec: DriverSpec) -> None:
    # The S3 driver as configured by default (10 MiB parts, one CopyObject up to 5 GiB): moto copies a
    # range by reading the whole source, so a gigabyte in 5 MiB part copies would take it minutes. The
    # multipart copy has tests of its own. (moto does not keep a slow completion alive as S3 does.)
    driver = driver_spec.open(multipart_part_size=10 * MIB, multipart_copy_threshold=5 * 1024 * MIB,
                              read_timeout=300)
    try:
        await _large_stream(driver)
    finally:
        await driver.close()


async def _large_stream(driver: Storage) -> None:
    size = 1024 * MIB + 12345
    requests = 4  # as PATCH requests do: resume, append a quarter, close
    digest = hashlib.sha256()
    await driver.put("warm-up", b"")  # the S3 client exists before the measurement starts
    with peak_memory() as peak:
        offset = 0
        for request in range(requests):
            writer = await (driver.upload_writer(UPLOAD, create=True) if request == 0
                            else driver.upload_writer(UPLOAD))
            assert writer.size == offset
            end = size if request == requests - 1 else (request + 1) * (size // requests)
            for data in pattern_stream(offset, end - offset):
                digest.update(data)
                await writer.write(data)
            offset = end
            if request < requests - 1:
                await writer.close(b"%d" % offset)
        await writer.commit(BLOB)
        stored = hashlib.sha256()
        async for chunk in driver.read(BLOB):
            stored.update(chunk)
    assert stored.hexdigest() == digest.hexdigest()
    assert (await driver.stat(BLOB)).size == size  # type: ignore[union-attr]
    # The parts in flight and being filled, the read buffers, allocator slack: far from the gigabyte.
    assert peak.above_start < 100 * MIB, f"{peak.above_start / MIB:.1f} MiB ({peak.method})"


async def test_killed_mid_upload_leaves_nothing_partial(driver_spec: DriverSpec, driver: Storage) -> None:
    closed = PART_SIZE + 1000
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.helpers.drivers", driver_spec.dumps(), "stream-until-killed", UPLOAD,
        str(closed), BLOB, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    try:
        written = 0
        while written < closed + 3 * PART_SIZE:  # parts uploaded past the closed state
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            assert line, "the writer process ended"
            written = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert await driver.stat(BLOB) is None
    assert await keys_below(driver, BLOB.rsplit("/", 1)[0]) == []
    try:
        writer = await driver.upload_writer(UPLOAD)
    except NotFound:
        return  # cleanly unknown is allowed
    # Resumable: the closed session (with its checkpoint), or more bytes without one.
    assert writer.size >= closed
    if writer.checkpoint is not None:
        assert (writer.size, writer.checkpoint) == (closed, b"closed")
    size = writer.size
    await write_all(writer, size, 10)
    await writer.commit(BLOB)
    assert await collect(driver.read(BLOB)) == pattern(0, size + 10)


# --- spool writers ----------------------------------------------------------------------------------
async def test_spool_read_while_writing_then_commit(driver: Storage) -> None:
    spool = await driver.spool_writer(SPOOL)
    total = 3 * PART_SIZE + 12345
    followers: list[asyncio.Task[bytes]] = []
    for start in range(0, total, 700_001):
        await spool.write(pattern(start, min(700_001, total - start)))
        size = spool.size
        assert size == min(start + 700_001, total)
        window = max(0, size - 2 * MIB)
        assert await collect(spool.read(window, size - window)) == pattern(window, size - window)
        # A follower reading from the start while the leader keeps writing.
        followers.append(asyncio.create_task(collect(spool.read(0, size, chunk_size=300_000))))
    for follower in followers:
        data = await follower
        assert data == pattern(0, len(data))
    across = PART_SIZE - 10
    assert await collect(spool.read(across, 20)) == pattern(across, 20)
    assert await collect(spool.read(0, total)) == pattern(0, total)
    await driver.put(BLOB, b"replaced by the commit")
    await spool.commit(BLOB)
    assert await collect(driver.read(BLOB)) == pattern(0, total)
    assert await keys_below(driver, SPOOL_DIR) == []


@pytest.mark.parametrize("size", [0, 1000, PART_SIZE, PART_SIZE + 1])
async def test_spool_commit_of_one_part(driver: Storage, size: int) -> None:
    spool = await driver.spool_writer(SPOOL)
    await write_all(spool, 0, size)
    assert await collect(spool.read(0, size)) == pattern(0, size)
    await spool.commit(BLOB)
    assert await collect(driver.read(BLOB)) == pattern(0, size)
    assert await keys_below(driver, SPOOL_DIR) == []


async def test_spool_cancel(driver: Storage) -> None:
    spool = await driver.spool_writer(SPOOL)
    await write_all(spool, 0, 2 * PART_SIZE + 1)
    await spool.cancel()
    assert await driver.stat(BLOB) is None
    assert await keys_below(driver, SPOOL_DIR) == []


# --- housekeeping -----------------------------------------------------------------------------------
async def test_purge_temporary_spares_what_is_live(driver: Storage) -> None:
    await driver.put("kept/object", b"v")
    writer = await driver.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, PART_SIZE + 10)
    await writer.close(b"cp")
    removed = await driver.purge_temporary(0)
    assert isinstance(removed, int) and removed >= 0
    assert await driver.get("kept/object") == b"v"
    writer = await driver.upload_writer(UPLOAD)
    assert (writer.size, writer.checkpoint) == (PART_SIZE + 10, b"cp")
    await writer.commit(BLOB)
    assert await collect(driver.read(BLOB)) == pattern(0, PART_SIZE + 10)
