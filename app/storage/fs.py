"""Filesystem storage driver: blocking calls run in a small thread pool, never on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from app.storage import layout
from app.storage.base import AppendWriter, Stat, Storage, StorageError

T = TypeVar("T")

# File names are built as strings (os.path), not as pathlib objects: pathlib interns every component it
# parses, and measured on CPython 3.11 with the parsing in the executor's threads the process keeps
# growing with the number of distinct names (+1.8 MiB per 15,000 unknown repository names looked up,
# still there after malloc_trim). Keys carry client-chosen names, upload ids and temporary file names.

_FAILURE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EACCES, errno.EPERM}


def _translate(exc: OSError) -> Exception:
    if exc.errno in _FAILURE_ERRNOS:
        return StorageError(f"storage write failed: {os.strerror(exc.errno or 0)}")
    return exc


PLACE_ATTEMPTS = 10


def _in_folder(target: str, place: Callable[[], None], exists_is_final: bool = False) -> None:
    """Create `target`'s folder and `place()` the file in it, again when a concurrent delete of the
    folder (a manifest deleted while it is pushed again) removed it in between: a driver never fails
    on a folder removed underneath it."""
    for attempt in range(PLACE_ATTEMPTS):
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            place()
            return
        except FileNotFoundError:
            if attempt == PLACE_ATTEMPTS - 1:
                raise
        except FileExistsError:
            # makedirs(exist_ok=True) raises it when the folder vanished between its mkdir and isdir.
            if (exists_is_final and os.path.exists(target)) or attempt == PLACE_ATTEMPTS - 1:
                raise


class FsAppendWriter(AppendWriter):
    def __init__(self, storage: FsStorage, path: str) -> None:
        self._storage = storage
        self._path = path
        self._file: Any = None
        self.size = 0

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        self._file = open(self._path, "ab")  # noqa: SIM115 - closed by close()
        self.size = self._file.seek(0, os.SEEK_END)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._file.write(data)
            self._file.flush()
        except OSError:
            # A partial write (disk full) is undone so size always matches what was hashed.
            self._file.truncate(self.size)
            self._file.seek(self.size)
            raise
        self.size += len(data)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._storage._run(self._write, data)

    async def truncate(self, size: int) -> None:
        def _truncate() -> None:
            self._file.truncate(size)
            self._file.seek(size)
            self.size = size

        await self._storage._run(_truncate)

    async def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None

            def _close() -> None:
                if self._storage.sync_to_disk:
                    os.fsync(file.fileno())
                file.close()

            await self._storage._run(_close)


class FsStorage(Storage):
    def __init__(self, root: Path, sync_to_disk: bool = False, threads: int = 16) -> None:
        self.root = Path(root)
        self._root = os.fspath(self.root)
        self._tmp = os.path.join(self._root, layout.TMP)
        self.sync_to_disk = sync_to_disk
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fs")

    def _path(self, key: str) -> str:
        return os.path.join(self._root, key)

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, func, *args)
        except OSError as exc:
            raise _translate(exc) from exc

    def local_path(self, key: str) -> Path | None:
        return Path(self._path(key))

    def _get(self, key: str) -> bytes:
        with open(self._path(key), "rb") as file:
            return file.read()

    async def get(self, key: str) -> bytes:
        return await self._run(self._get, key)

    def _fsync_dir(self, path: str) -> None:
        if self.sync_to_disk and os.name != "nt":
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _put(self, key: str, data: bytes) -> None:
        target = self._path(key)
        os.makedirs(self._tmp, exist_ok=True)
        tmp = os.path.join(self._tmp, uuid.uuid4().hex)
        try:
            with open(tmp, "wb") as file:
                file.write(data)
                if self.sync_to_disk:
                    file.flush()
                    os.fsync(file.fileno())
            _in_folder(target, lambda: os.replace(tmp, target))
            self._fsync_dir(os.path.dirname(target))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def put(self, key: str, data: bytes) -> None:
        await self._run(self._put, key, data)

    def _create(self, key: str, data: bytes, private: bool) -> bool:
        target = self._path(key)
        os.makedirs(self._tmp, exist_ok=True)
        tmp = os.path.join(self._tmp, uuid.uuid4().hex)
        try:
            descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
            with open(descriptor, "wb") as file:
                file.write(data)
                if self.sync_to_disk:
                    file.flush()
                    os.fsync(file.fileno())
            try:
                # The link fails when the target exists: the first creator wins, whole.
                _in_folder(target, lambda: os.link(tmp, target), exists_is_final=True)
            except FileExistsError:
                return False
            self._fsync_dir(os.path.dirname(target))
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def create(self, key: str, data: bytes, *, private: bool = False) -> bool:
        return await self._run(self._create, key, data, private)

    def _stat(self, key: str) -> Stat | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Stat(st.st_size, st.st_mtime)

    async def stat(self, key: str) -> Stat | None:
        return await self._run(self._stat, key)

    async def read(self, key: str, offset: int = 0, length: int | None = None,
                   chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        file: BinaryIO = await self._run(open, self._path(key), "rb")
        try:
            await self._run(file.seek, offset)
            remaining = length
            while remaining is None or remaining > 0:
                size = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = await self._run(file.read, size)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            file.close()

    def _list_dir(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    async def list_dir(self, prefix: str) -> list[str]:
        return await self._run(self._list_dir, prefix)

    def _walk(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        keys: list[str] = []
        for folder, _dirs, files in os.walk(base):
            rel = os.path.relpath(folder, self._root).replace(os.sep, "/")
            keys.extend(f"{rel}/{name}" for name in files)
        return sorted(keys)

    async def walk(self, prefix: str) -> AsyncIterator[str]:
        for key in await self._run(self._walk, prefix):
            yield key

    def _delete(self, key: str) -> bool:
        try:
            os.unlink(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    async def delete(self, key: str) -> bool:
        return await self._run(self._delete, key)

    async def delete_tree(self, prefix: str) -> None:
        await self._run(shutil.rmtree, self._path(prefix), True)

    def _move(self, source: str, destination: str) -> None:
        target = self._path(destination)
        if self.sync_to_disk:
            with open(self._path(source), "rb") as file:
                os.fsync(file.fileno())
        _in_folder(target, lambda: os.replace(self._path(source), target))
        self._fsync_dir(os.path.dirname(target))

    async def move(self, source: str, destination: str) -> None:
        await self._run(self._move, source, destination)

    def _purge_temporary(self, older_than: float) -> int:
        """Files directly in `<root>/tmp` (where `_put` and `_create` stage) older than `older_than`.

        Folders are left alone and links are removed, never followed: nothing outside tmp is touched.
        """
        deadline = time.time() - older_than
        removed = 0
        try:
            entries = os.scandir(self._tmp)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        continue
                    if entry.stat(follow_symlinks=False).st_mtime < deadline:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # its writer renamed it into place meanwhile
        return removed

    async def purge_temporary(self, older_than: float) -> int:
        return await self._run(self._purge_temporary, older_than)

    async def open_append(self, key: str) -> AppendWriter:
        writer = FsAppendWriter(self, self._path(key))
        await self._run(writer._open)
        return writer

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
