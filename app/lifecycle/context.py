"""What every check works with: the store, the locks, the walk of `repositories/`, the marking, the
progress display, and a memo of which blobs exist (shared layers are looked up once)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.grammar import Digest
from app.lifecycle.inventory import Inventory
from app.lifecycle.locking import LockStore
from app.lifecycle.references import Marking
from app.storage import Storage, layout


class Progress(Protocol):
    """A progress display (a bar on a terminal, nothing otherwise)."""

    def begin(self, label: str, total: int | None) -> None: ...

    def advance(self, count: int = 1, bytes_read: int = 0) -> None: ...

    def end(self) -> None: ...


class NoProgress:
    def begin(self, label: str, total: int | None) -> None:
        pass

    def advance(self, count: int = 1, bytes_read: int = 0) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass
class ScrubContext:
    storage: Storage
    locks: LockStore
    dry_run: bool
    progress: Progress
    # (namespace) -> None: tell the servers that a repair changed the namespace (app/coherence.py,
    # with Redis); None: no server to tell (or none that shares its state).
    announce: Callable[[str], Awaitable[None]] | None = None
    inventory: Inventory = field(default_factory=Inventory)
    marking: Marking = field(default_factory=Marking)
    _blobs: dict[Digest, bool] = field(default_factory=dict)

    async def blob_exists(self, digest: Digest) -> bool:
        known = self._blobs.get(digest)
        if known is None:
            known = self._blobs[digest] = await self.storage.stat(layout.blob_data(digest)) is not None
        return known

    def forget_blob(self, digest: Digest) -> None:
        """A blob removed or quarantined by a check: looked up again when asked next."""
        self._blobs.pop(digest, None)
