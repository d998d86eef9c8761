"""The filesystem driver's writers of large objects and its sendable body (see app/storage/base.py).

An upload session is a file appended to across requests (`<key>`), with the caller's checkpoint beside
it (`<key>.checkpoint`: the size it belongs to, and the checkpoint), written atomically after the data
is flushed: a crash between the two leaves a checkpoint of another size, which reads as none (the
caller then rebuilds its hash from the data, which a file allows). A write that fails half-way (disk
full) is cut back to the last good size inside the driver, so the size always names what was accepted.
A commit renames the file into place. A spool is a file appended to and read back while it grows.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from app.storage.base import Body, SpoolWriter, UploadWriter

if TYPE_CHECKING:
    from app.storage.fs import FsStorage

CHECKPOINT_SUFFIX = ".checkpoint"


class FsBody(Body):
    def __init__(self, storage: FsStorage, path: str, size: int) -> None:
        self._storage = storage
        self._path = path
        self.size = size

    def read(self, offset: int = 0, length: int | None = None,
             chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        return self._storage.read_file(self._path, offset, length, chunk_size)

    def local_path(self) -> str | None:
        return self._path


class _AppendedFile:
    """A file appended to, opened for each write (a writer holds no descriptor between writes, so one
    abandoned by a failed request leaks nothing), whose size only counts what was wholly written."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = 0

    def open(self, create: bool) -> None:
        if create:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "wb"):
                pass
        else:
            self.size = os.stat(self.path).st_size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with open(self.path, "ab") as file:
            at = file.seek(0, os.SEEK_END)
            try:
                file.write(data)
                file.flush()
            except OSError:
                # A partial write (disk full) is undone so the size matches what the caller accepted.
                file.truncate(at)
                raise
            self.size = at + len(data)

    def close(self, sync: bool) -> None:
        if sync:
            with open(self.path, "rb") as file:
                os.fsync(file.fileno())


class FsUploadWriter(UploadWriter):
    def __init__(self, storage: FsStorage, key: str) -> None:
        self._storage = storage
        self._key = key
        self._file = _AppendedFile(storage._path(key))
        self.checkpoint: bytes | None = None

    @property
    def size(self) -> int:  # type: ignore[override]
        return self._file.size

    def open(self, create: bool) -> None:
        self._file.open(create)  # FileNotFoundError (NotFound) when resuming a session that is not there
        if create:
            self._remove(self._file.path + CHECKPOINT_SUFFIX)
            return
        try:
            with open(self._file.path + CHECKPOINT_SUFFIX, "rb") as stored:
                saved = json.loads(stored.read())
            if saved.get("size") == self._file.size and isinstance(saved.get("checkpoint"), str):
                self.checkpoint = base64.b64decode(saved["checkpoint"])
        except (FileNotFoundError, ValueError, TypeError):
            self.checkpoint = None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._storage._run(self._file.write, data)

    def _close(self, checkpoint: bytes | None) -> None:
        self._file.close(self._storage.sync_to_disk)
        if checkpoint is None:
            self._remove(self._file.path + CHECKPOINT_SUFFIX)
        else:
            saved = {"size": self._file.size, "checkpoint": base64.b64encode(checkpoint).decode()}
            self._storage._put(self._key + CHECKPOINT_SUFFIX, json.dumps(saved).encode())
        self.checkpoint = checkpoint

    async def close(self, checkpoint: bytes | None = None) -> None:
        await self._storage._run(self._close, checkpoint)

    def _commit(self, destination: str) -> None:
        self._file.close(False)  # place() syncs it when sync_to_disk
        self._storage.place(self._file.path, destination)
        self._remove(self._file.path + CHECKPOINT_SUFFIX)

    async def commit(self, destination: str) -> None:
        await self._storage._run(self._commit, destination)

    def _cancel(self) -> None:
        self._file.close(False)
        self._remove(self._file.path)
        self._remove(self._file.path + CHECKPOINT_SUFFIX)

    async def cancel(self) -> None:
        await self._storage._run(self._cancel)

    @staticmethod
    def _remove(path: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(path)


class FsSpoolWriter(SpoolWriter):
    def __init__(self, storage: FsStorage, key: str) -> None:
        self._storage = storage
        self._file = _AppendedFile(storage._path(key))

    @property
    def size(self) -> int:  # type: ignore[override]
        return self._file.size

    def open(self) -> None:
        self._file.open(create=True)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._storage._run(self._file.write, data)

    def read(self, offset: int, length: int, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        return self._storage.read_file(self._file.path, offset, length, chunk_size)

    def _commit(self, destination: str) -> None:
        self._file.close(False)
        self._storage.place(self._file.path, destination)

    async def commit(self, destination: str) -> None:
        await self._storage._run(self._commit, destination)

    def _cancel(self) -> None:
        self._file.close(False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file.path)

    async def cancel(self) -> None:
        await self._storage._run(self._cancel)
