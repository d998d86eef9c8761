"""The storage interface: one small async contract, implemented by the fs and S3 drivers.

Shaped so that an object store can keep it (distribution's StorageDriver and FileWriter are the model):
no truncation, no rename, no reading back an object that is still being written, no tailing of a
growing object. Large objects are written through writers the driver owns:

- an `UploadWriter` for an upload session: written over many requests, by any process, resumable by
  its key after a restart; durable only at `close()`, which also keeps the caller's checkpoint (the
  running hash) consistent with the size; `commit()` makes the whole content visible at another key at
  once, after the caller verified it;
- a `SpoolWriter` for one process streaming an object (a pull-through fetch) that readers of the same
  process follow while it is written; `commit()` likewise.

Every operation that finds nothing raises `NotFound` (the one "absent" error of the layer); a backend
that fails (disk full, read-only, unreachable) raises `StorageError` (answered 503). Platform quirks
(Windows rename retries, a folder removed underneath a write, ENOTDIR) stay inside the driver.

Keys are `/`-separated relative paths built only by `app.storage.layout`; a driver may keep its own
objects beside a writer's key (`<key>.<suffix>`: `.checkpoint`, `.state`, `.tail-…`, `.part-…`), and
nowhere else. Listings show them; whoever walks the store (scrub) skips them. A "folder" (a key
prefix) is not an object: `stat` of one is not meaningful, `delete` of one removes nothing.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass


class StorageError(Exception):
    """The backend failed (disk full, read-only, unreachable): answered as a 5xx, nothing half-written."""


class NotFound(FileNotFoundError):
    """No object at that key (or no upload session, no spool)."""


@dataclass(frozen=True, slots=True)
class Stat:
    size: int
    modified: float  # seconds since the epoch


class Body(abc.ABC):
    """A stored object about to be sent: its size, and the ways the driver can send it."""

    size: int

    @abc.abstractmethod
    def read(self, offset: int = 0, length: int | None = None,
             chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream `length` bytes from `offset` (to the end when None)."""

    def local_path(self) -> str | None:
        """A file the OS can sendfile from, when the backend has one."""
        return None

    async def redirect_url(self) -> str | None:
        """A URL the client may fetch the object from directly (S3 `redirect = true`), else None."""
        return None


class UploadWriter(abc.ABC):
    """The data of one upload session, written over many requests by one writer at a time (the caller
    holds the session's lease), possibly in several processes.

    `size` is what was accepted so far; `checkpoint` is the caller's opaque state (the running hash)
    stored with that size by the last `close()`, or None (absent, or stored for another size). On an
    object store nothing written since the last `close()` survives a crash, and the stored bytes
    cannot be read back before `commit()`: the checkpoint is the only way to resume the hash there.
    `cancel()` after `commit()` is harmless. An object store bounds a session's size (S3: 10,000 parts
    of `multipart_part_size`).
    """

    size: int
    checkpoint: bytes | None

    @abc.abstractmethod
    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append. The driver may buffer (bounded memory); nothing is durable before `close()`."""

    @abc.abstractmethod
    async def close(self, checkpoint: bytes | None = None) -> None:
        """Make everything written durable, with `checkpoint` for the new size; the session can then be
        resumed by `Storage.upload_writer(key)` in any process. After a failure, the stored session is
        the one of the previous `close()` (or an empty one)."""

    @abc.abstractmethod
    async def commit(self, destination: str) -> None:
        """Everything written (no `close()` needed) becomes the content of `destination` at once,
        replacing what was there; the session's data is gone afterwards."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Drop the session's data (also what earlier requests stored)."""


class SpoolWriter(abc.ABC):
    """One process writes an object that readers of the same process follow while it grows."""

    size: int  # bytes written so far, all readable with `read`

    @abc.abstractmethod
    async def write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abc.abstractmethod
    def read(self, offset: int, length: int, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Bytes already written (offset + length <= size)."""

    @abc.abstractmethod
    async def commit(self, destination: str) -> None:
        """The whole spool becomes `destination`'s content at once; the spool is gone afterwards."""

    @abc.abstractmethod
    async def cancel(self) -> None: ...


class Storage(abc.ABC):
    # --- small objects ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """The whole (small) object; NotFound when absent."""

    @abc.abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Atomically create or replace: readers see the old or the new content, never a part."""

    @abc.abstractmethod
    async def create(self, key: str, data: bytes, *, private: bool = False) -> bool:
        """Atomically create `key` unless it exists (then False, the existing content untouched).

        Two processes creating the same key at once: exactly one wins, and both then read its content.
        `private`: readable by the registry's own user only (a secret such as a signing key).
        """

    @abc.abstractmethod
    async def stat(self, key: str) -> Stat | None: ...

    # --- reading ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, key: str, offset: int = 0, length: int | None = None,
             chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream `length` bytes from `offset` (to the end when None); NotFound when absent."""

    @abc.abstractmethod
    async def body(self, key: str) -> Body:
        """The object at `key`, to be sent to a client; NotFound when absent."""

    # --- listing and deleting -----------------------------------------------------------------------
    @abc.abstractmethod
    async def list_dir(self, prefix: str) -> list[str]:
        """Names of the immediate children (objects and folders) of `prefix`, sorted; [] when absent."""

    @abc.abstractmethod
    def walk(self, prefix: str, start_after: str | None = None) -> AsyncIterator[str]:
        """Every object key below `prefix`, in lexical order (after `start_after`), fetched page by
        page: a listing of millions of keys never sits in memory."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove one object; False when it did not exist."""

    @abc.abstractmethod
    async def delete_tree(self, prefix: str) -> None:
        """Remove everything below `prefix`."""

    @abc.abstractmethod
    async def copy(self, source: str, destination: str) -> None:
        """`destination` gets `source`'s content at once (replacing what was there); NotFound when
        `source` is absent."""

    # --- large objects ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def upload_writer(self, key: str, *, create: bool = False) -> UploadWriter:
        """The upload session stored at `key`: a new, empty one with `create` (an existing one is
        reset), else the one earlier requests (of any process) closed; NotFound when there is none."""

    @abc.abstractmethod
    async def upload_modified(self, key: str) -> float | None:
        """When the upload session at `key` last changed (its last `close()`, or its creation), in
        seconds since the epoch; None when there is none. Idle sessions expire by it."""

    @abc.abstractmethod
    async def spool_writer(self, key: str) -> SpoolWriter:
        """A new spool at `key` (for one process)."""

    # --- housekeeping -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def purge_temporary(self, older_than: float) -> int:
        """Remove the driver's temporary objects (those of atomic writes, an object store's multipart
        uploads no session refers to) older than `older_than` seconds, and nothing else; returns how
        many went. Left behind by a killed process; the age spares the writes another process sharing
        the store is making right now."""

    async def remove_empty_folders(self, prefix: str, *, below: bool = True) -> None:  # noqa: B027
        """Remove the folder `prefix` if it holds nothing, with `below` first every empty folder below
        it (deepest first). Deletes leave empty folders behind on a filesystem (a repository deleted
        whole, app/services/repository_delete.py); a folder a concurrent write fills is kept, and a
        write never fails for one removed under it. An object store has no folders: nothing to do."""

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
