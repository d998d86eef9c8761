"""What only the fs driver has: its temporary folder, and a full disk. The behaviour every driver shares
is tests/test_storage_contract.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.storage import StorageError
from app.storage.fs import FsStorage


async def test_no_temporary_files_left(tmp_path: Path) -> None:
    storage = FsStorage(tmp_path)
    try:
        for i in range(5):
            await storage.put(f"k/{i}", b"v")
            assert await storage.create(f"c/{i}", b"v")
        await storage.copy("k/0", "k/copy")
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:
        await storage.close()


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB filesystem (tmpfs; mounting needs root, as CI runs): writes beyond it fail ENOSPC."""
    if os.geteuid() != 0:
        pytest.fail("mounting a small filesystem needs root (CI runs as root)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


async def test_full_disk_is_a_storage_error_and_leaves_nothing(full_disk: Path) -> None:
    storage = FsStorage(full_disk)
    try:
        await storage.put("small", b"fits")
        with pytest.raises(StorageError, match="No space left"):
            await storage.put("big", os.urandom(1024 * 1024))
        with pytest.raises(StorageError, match="No space left"):
            await storage.put("small", os.urandom(1024 * 1024))
        writer = await storage.upload_writer("session", create=True)
        with pytest.raises(StorageError, match="No space left"):
            for _ in range(32):
                await writer.write(os.urandom(8192))
        await writer.cancel()
        # The failed writes left neither an object nor a temporary file; what was there is intact.
        assert await storage.stat("big") is None
        assert await storage.get("small") == b"fits"
        assert list((full_disk / "tmp").iterdir()) == []
    finally:
        await storage.close()
