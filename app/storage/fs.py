"""Filesystem storage driver: blocking calls run in a small thread pool, never on the event loop.

Small objects are written to `<root>/tmp/` and renamed into place (readers see the old or the new
content, never a part); writers of large objects are in app/storage/fs_writers.py. Keys are the
layout's paths below the root, so the data folder is distribution's.
"""

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
from app.storage.base import Body, NotFound, SpoolWriter, Stat, Storage, StorageError, UploadWriter
from app.storage.fs_writers import CHECKPOINT_SUFFIX, FsBody, FsSpoolWriter, FsUploadWriter

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
SHARING_RETRIES = 100  # x 50 ms
WALK_PAGE = 1000


def _in_folder(target: str, place: Callable[[], None], exists_is_final: bool = False) -> None:
    """Create `target`'s folder and `place()` the file in it, again when a concurrent delete of the
    folder (a manifest deleted while it is pushed again) removed it in between: a driver never fails
    on a folder removed underneath it. On Windows a file cannot be renamed while another handle has it
    open (a reader of a spool being committed): the sharing violation is retried for a few seconds."""
    for attempt in range(PLACE_ATTEMPTS):
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            for sharing in range(SHARING_RETRIES):
                try:
                    place()
                    return
                except PermissionError:
                    if os.name != "nt" or sharing == SHARING_RETRIES - 1:
                        raise
                    time.sleep(0.05)
        except FileNotFoundError:
            if attempt == PLACE_ATTEMPTS - 1:
                raise
        except FileExistsError:
            # makedirs(exist_ok=True) raises it when the folder vanished between its mkdir and isdir.
            if (exists_is_final and os.path.exists(target)) or attempt == PLACE_ATTEMPTS - 1:
                raise


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
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            # A folder where an object was asked for, or a file where a folder would be: no object.
            raise NotFound(str(exc)) from exc
        except OSError as exc:
            raise _translate(exc) from exc

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

    def temporary_name(self) -> str:
        """A fresh file name in `<root>/tmp`, the only place temporary files are made."""
        os.makedirs(self._tmp, exist_ok=True)
        return os.path.join(self._tmp, uuid.uuid4().hex)

    def place(self, source: str, key: str) -> None:
        """Rename a finished file (in tmp, or a writer's) into place at `key`, durably if configured."""
        target = self._path(key)
        if self.sync_to_disk:
            with open(source, "rb") as file:
                os.fsync(file.fileno())
        _in_folder(target, lambda: os.replace(source, target))
        self._fsync_dir(os.path.dirname(target))

    def _put(self, key: str, data: bytes) -> None:
        tmp = self.temporary_name()
        try:
            with open(tmp, "wb") as file:
                file.write(data)
            self.place(tmp, key)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def put(self, key: str, data: bytes) -> None:
        await self._run(self._put, key, data)

    def _create(self, key: str, data: bytes, private: bool) -> bool:
        target = self._path(key)
        tmp = self.temporary_name()
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
        async for chunk in self.read_file(self._path(key), offset, length, chunk_size):
            yield chunk

    async def read_file(self, path: str, offset: int = 0, length: int | None = None,
                        chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        file: BinaryIO = await self._run(open, path, "rb")
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

    async def body(self, key: str) -> Body:
        path = self._path(key)
        size = (await self._run(os.stat, path)).st_size
        return FsBody(self, path, size)

    def _list_dir(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    async def list_dir(self, prefix: str) -> list[str]:
        return await self._run(self._list_dir, prefix)

    def _walk_page(self, prefix: str, start_after: str | None, limit: int) -> list[str]:
        """Up to `limit` keys below `prefix`, in lexical order of the whole key, after `start_after`.

        Folders are visited in the order their names sort *with the slash* (`a.b` before `a/`), which
        is the lexical order of the keys; subtrees wholly before `start_after` are not entered."""
        found: list[str] = []

        def visit(folder: str, key_prefix: str) -> bool:  # False once the page is full
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                return True
            named = [(entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name, entry)
                     for entry in entries]
            for name, entry in sorted(named, key=lambda pair: pair[0]):
                key = key_prefix + name
                if name.endswith("/"):
                    if start_after is not None and key < start_after and not start_after.startswith(key):
                        continue
                    if not visit(entry.path, key):
                        return False
                elif start_after is None or key > start_after:
                    found.append(key)
                    if len(found) >= limit:
                        return False
            return True

        folder = prefix.strip("/")
        visit(self._path(folder), folder + "/" if folder else "")
        return found

    async def walk(self, prefix: str, start_after: str | None = None) -> AsyncIterator[str]:
        after = start_after
        while True:
            page = await self._run(self._walk_page, prefix, after, WALK_PAGE)
            for key in page:
                yield key
            if len(page) < WALK_PAGE:
                return
            after = page[-1]

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

    def _remove_empty_folders(self, prefix: str, below: bool) -> None:
        top = self._path(prefix)
        # rmdir removes only an empty folder, atomically: a file placed meanwhile keeps its folder, and
        # a write whose folder went just before retries (_in_folder).
        folders = [path for path, _, _ in os.walk(top, topdown=False)] if below else [top]
        for folder in folders:
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    async def remove_empty_folders(self, prefix: str, *, below: bool = True) -> None:
        await self._run(self._remove_empty_folders, prefix, below)

    def _copy(self, source: str, destination: str) -> None:
        tmp = self.temporary_name()
        try:
            shutil.copyfile(self._path(source), tmp)
            self.place(tmp, destination)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def copy(self, source: str, destination: str) -> None:
        await self._run(self._copy, source, destination)

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

    async def upload_writer(self, key: str, *, create: bool = False) -> UploadWriter:
        writer = FsUploadWriter(self, key)
        await self._run(writer.open, create)
        return writer

    def _upload_modified(self, key: str) -> float | None:
        times = []
        for path in (self._path(key), self._path(key) + CHECKPOINT_SUFFIX):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                times.append(os.stat(path).st_mtime)
        return max(times) if times else None

    async def upload_modified(self, key: str) -> float | None:
        return await self._run(self._upload_modified, key)

    async def spool_writer(self, key: str) -> SpoolWriter:
        writer = FsSpoolWriter(self, key)
        await self._run(writer.open)
        return writer

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
