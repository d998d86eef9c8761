"""Blobs: namespace-scoped visibility (a `_layers` link), stat, link/unlink, existence anywhere."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from app import errors
from app.grammar import Digest
from app.locks.base import LockStore
from app.services.links import write_link
from app.storage import Body, NotFound, Stat, Storage, layout
from app.storage import locks as lock_names

if TYPE_CHECKING:
    from app.services.remote import RemoteBlob


class BlobService:
    def __init__(self, storage: Storage, locks: LockStore | None = None) -> None:
        self.storage = storage
        # Mounts hold the blob's lock shared (the GC protocol, docs/gc.md). The registry always gives
        # its lock store; without one (unit tests of other services) a mount takes no lock.
        self.locks = locks

    async def stat(self, namespace: str, digest: Digest) -> Stat:
        """The blob as visible in `namespace`; BLOB_UNKNOWN when not linked there or not stored."""
        if await self.storage.stat(layout.layer_link(namespace, digest)) is None:
            raise errors.BlobUnknown(f"blob {digest} is unknown in repository {namespace}")
        stat = await self.storage.stat(layout.blob_data(digest))
        if stat is None:
            raise errors.BlobUnknown(f"blob {digest} is unknown in repository {namespace}")
        return stat

    async def body(self, namespace: str, digest: Digest) -> Body:
        """The blob's data to send, as visible in `namespace`; BLOB_UNKNOWN when not linked or stored."""
        if await self.storage.stat(layout.layer_link(namespace, digest)) is None:
            raise errors.BlobUnknown(f"blob {digest} is unknown in repository {namespace}")
        try:
            return await self.storage.body(layout.blob_data(digest))
        except NotFound:
            raise errors.BlobUnknown(f"blob {digest} is unknown in repository {namespace}") from None

    async def open_remote(self, namespace: str, digest: Digest, method: str,
                          range_header: str | None) -> RemoteBlob | None:
        """A blob served from elsewhere than local storage (pull-through); here, never: None."""
        return None

    async def is_linked(self, namespace: str, digest: Digest) -> bool:
        return await self.storage.stat(layout.layer_link(namespace, digest)) is not None

    async def exists(self, digest: Digest) -> bool:
        return await self.storage.stat(layout.blob_data(digest)) is not None

    async def link(self, namespace: str, digest: Digest) -> None:
        await write_link(self.storage, layout.layer_link(namespace, digest), digest)

    async def unlink(self, namespace: str, digest: Digest) -> None:
        if not await self.storage.delete(layout.layer_link(namespace, digest)):
            raise errors.BlobUnknown(f"blob {digest} is unknown in repository {namespace}")

    async def mount(self, namespace: str, digest: Digest, source: str | None) -> bool:
        """Link a blob readable in `source` (or, without source, stored anywhere) into `namespace`.

        Under the blob's lock, shared: the GC sweeper, which deletes a blob (and its links) only under
        that lock exclusive, cannot delete it between the check and the new link. The new link is
        fresh, and the sweeper keeps every blob linked within its grace period (the client's manifest
        PUT that follows finds it)."""
        async with contextlib.AsyncExitStack() as held:
            if self.locks is not None:
                await held.enter_async_context(self.locks.hold(lock_names.blob(digest), shared=True))
            if source is not None:
                if not await self.is_linked(source, digest) or not await self.exists(digest):
                    return False
            elif not await self.exists(digest):
                return False
            await self.link(namespace, digest)
        return True
