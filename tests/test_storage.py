"""The storage contract: one suite that every driver must pass (fs now; S3 joins the parametrization)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.storage import Storage, StorageError
from app.storage.fs import FsStorage


@pytest.fixture(params=["fs"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    driver: Storage = FsStorage(tmp_path / "root")
    yield driver
    await driver.close()


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def test_put_get_stat(storage: Storage) -> None:
    assert await storage.stat("a/b/c") is None
    await storage.put("a/b/c", b"hello")
    assert await storage.get("a/b/c") == b"hello"
    stat = await storage.stat("a/b/c")
    assert stat is not None and stat.size == 5 and stat.modified > 0
    await storage.put("a/b/c", b"replaced")
    assert await storage.get("a/b/c") == b"replaced"
    assert await storage.exists("a/b/c")


async def test_get_missing_raises(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        await storage.get("missing/key")
    with pytest.raises(FileNotFoundError):
        await collect(storage.read("missing/key"))


async def test_read_ranges_and_chunks(storage: Storage) -> None:
    data = bytes(range(256)) * 1000
    await storage.put("blob", data)
    assert await collect(storage.read("blob")) == data
    assert await collect(storage.read("blob", 10, 20)) == data[10:30]
    assert await collect(storage.read("blob", len(data) - 5)) == data[-5:]
    chunks = [c async for c in storage.read("blob", chunk_size=1000)]
    assert all(len(c) <= 1000 for c in chunks) and b"".join(chunks) == data


async def test_list_dir_and_walk(storage: Storage) -> None:
    for key in ("r/x/1", "r/x/2", "r/y/3", "r/z"):
        await storage.put(key, b"v")
    assert await storage.list_dir("r") == ["x", "y", "z"]
    assert await storage.list_dir("r/x") == ["1", "2"]
    assert await storage.list_dir("nothing/here") == []
    assert [k async for k in storage.walk("r")] == ["r/x/1", "r/x/2", "r/y/3", "r/z"]


async def test_delete_and_delete_tree(storage: Storage) -> None:
    await storage.put("t/a/1", b"1")
    await storage.put("t/a/2", b"2")
    await storage.put("t/b", b"3")
    assert await storage.delete("t/b") is True
    assert await storage.delete("t/b") is False
    await storage.delete_tree("t/a")
    assert await storage.list_dir("t/a") == []
    await storage.delete_tree("t/never")  # absent is fine


async def test_move_is_visible_whole(storage: Storage) -> None:
    await storage.put("up/data", b"x" * 1000)
    await storage.move("up/data", "final/data")
    assert await storage.get("final/data") == b"x" * 1000
    assert await storage.stat("up/data") is None


async def test_append_writer_appends_and_truncates(storage: Storage) -> None:
    writer = await storage.open_append("u/data")
    assert writer.size == 0
    await writer.write(b"abc")
    await writer.write(bytearray(b"def"))
    assert writer.size == 6
    await writer.truncate(4)
    await writer.write(b"Z")
    await writer.close()
    assert await storage.get("u/data") == b"abcdZ"
    again = await storage.open_append("u/data")
    assert again.size == 5
    await again.write(b"!")
    await again.close()
    assert await storage.get("u/data") == b"abcdZ!"


async def test_concurrent_puts_never_expose_partial_content(storage: Storage) -> None:
    big_a, big_b = b"a" * 2_000_000, b"b" * 2_000_000

    async def writer() -> None:
        for i in range(10):
            await storage.put("race", big_a if i % 2 else big_b)

    async def reader() -> None:
        for _ in range(30):
            try:
                content = await storage.get("race")
            except FileNotFoundError:
                continue
            assert content in (big_a, big_b)

    await asyncio.gather(writer(), reader(), reader())


async def test_fs_no_temporary_files_left(tmp_path: Path) -> None:
    storage = FsStorage(tmp_path)
    for i in range(5):
        await storage.put(f"k/{i}", b"v")
    assert list((tmp_path / "tmp").iterdir()) == []
    await storage.close()


async def test_fs_write_failure_is_a_storage_error(tmp_path: Path) -> None:
    storage = FsStorage(tmp_path)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp").chmod(0o500)
    try:
        import os

        if os.geteuid() == 0:
            # root ignores permissions: simulate a read-only filesystem through a file in the way.
            (tmp_path / "tmp").chmod(0o700)
            (tmp_path / "tmp").rmdir()
            (tmp_path / "tmp").write_bytes(b"not a folder")
            with pytest.raises((StorageError, OSError)):
                await storage.put("k", b"v")
        else:
            with pytest.raises(StorageError):
                await storage.put("k", b"v")
        assert await storage.stat("k") is None
    finally:
        await storage.close()
