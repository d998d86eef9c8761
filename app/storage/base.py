"""The storage interface: one small async contract, implemented by the fs and S3 drivers."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


class StorageError(Exception):
    """The backend failed (disk full, read-only, unreachable): answered as a 5xx, nothing half-written."""


@dataclass(frozen=True, slots=True)
class Stat:
    size: int
    modified: float  # seconds since the epoch


class AppendWriter(abc.ABC):
    """Appends to an upload's data object. `size` is what is durably stored so far."""

    size: int

    @abc.abstractmethod
    async def write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abc.abstractmethod
    async def truncate(self, size: int) -> None:
        """Drop everything after `size` bytes (undo a failed or rejected append)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class Storage(abc.ABC):
    """Keys are `/`-separated relative paths built only by `app.storage.layout`."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """The whole (small) object; FileNotFoundError when absent."""

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

    @abc.abstractmethod
    def read(self, key: str, offset: int = 0, length: int | None = None,
             chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream `length` bytes from `offset` (to the end when None); FileNotFoundError when absent."""

    def local_path(self, key: str) -> Path | None:
        """A file path the OS can sendfile from, when the backend has one."""
        return None

    @abc.abstractmethod
    async def list_dir(self, prefix: str) -> list[str]:
        """Names of the immediate children (objects and folders) of `prefix`; [] when absent."""

    @abc.abstractmethod
    def walk(self, prefix: str) -> AsyncIterator[str]:
        """Every object key below `prefix`."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove one object; False when it did not exist."""

    @abc.abstractmethod
    async def delete_tree(self, prefix: str) -> None:
        """Remove everything below `prefix`."""

    @abc.abstractmethod
    async def move(self, source: str, destination: str) -> None:
        """Atomically make `source`'s content visible at `destination`, and drop `source`."""

    @abc.abstractmethod
    async def open_append(self, key: str) -> AppendWriter:
        """A writer appending to `key` (created empty when absent)."""

    @abc.abstractmethod
    async def purge_temporary(self, older_than: float) -> int:
        """Remove the driver's temporary objects (those of atomic writes) older than `older_than`
        seconds, and nothing else; returns how many went. Left behind by a killed process; the age
        spares the writes another process sharing the store is making right now."""

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
