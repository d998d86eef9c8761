"""Blobs and metadata in different stores (`[blob_store.*]` and `[metadata_store.*]`), behind one Storage.

Every key names which store holds it: blob data (`blobs/...`) and the bytes on their way to becoming a
blob (upload sessions and pull-through spools, below `_uploads/`) live in the blob store, so a commit
never crosses stores, and so do the blobs `registry scrub` quarantined (a move within one store); links,
tags, revisions, the token secret and everything else live in the metadata store. Keys are built only
by app/storage/layout.py, which makes the rule total.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.storage import layout
from app.storage.base import Body, SpoolWriter, Stat, Storage, UploadWriter


def holds_blob_bytes(key: str) -> bool:
    return (key.startswith((layout.BLOBS + "/", layout.QUARANTINE + "/"))
            or key in (layout.BLOBS, layout.QUARANTINE) or "/_uploads/" in key)


class RoutedStorage(Storage):
    def __init__(self, blobs: Storage, metadata: Storage) -> None:
        self.blobs = blobs
        self.metadata = metadata

    def _for(self, key: str) -> Storage:
        return self.blobs if holds_blob_bytes(key) else self.metadata

    async def get(self, key: str) -> bytes:
        return await self._for(key).get(key)

    async def put(self, key: str, data: bytes) -> None:
        await self._for(key).put(key, data)

    async def create(self, key: str, data: bytes, *, private: bool = False) -> bool:
        return await self._for(key).create(key, data, private=private)

    async def stat(self, key: str) -> Stat | None:
        return await self._for(key).stat(key)

    def read(self, key: str, offset: int = 0, length: int | None = None,
             chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        return self._for(key).read(key, offset, length, chunk_size)

    async def body(self, key: str) -> Body:
        return await self._for(key).body(key)

    async def list_dir(self, prefix: str) -> list[str]:
        folder = prefix.rstrip("/") + "/"
        if holds_blob_bytes(folder):
            return await self.blobs.list_dir(prefix)
        if "/_manifests/" in folder or "/_layers/" in folder:
            return await self.metadata.list_dir(prefix)
        # Above both (the root, a repository's folder: `_uploads` beside `_manifests`): both stores.
        return sorted(set(await self.metadata.list_dir(prefix)) | set(await self.blobs.list_dir(prefix)))

    async def walk(self, prefix: str, start_after: str | None = None) -> AsyncIterator[str]:
        # Both stores, merged in lexical order.
        streams = [self.metadata.walk(prefix, start_after), self.blobs.walk(prefix, start_after)]
        heads: list[str | None] = [await anext(stream, None) for stream in streams]
        while any(head is not None for head in heads):
            index = min((i for i, head in enumerate(heads) if head is not None), key=lambda i: heads[i] or "")
            head = heads[index]
            assert head is not None
            yield head
            heads[index] = await anext(streams[index], None)

    async def delete(self, key: str) -> bool:
        return await self._for(key).delete(key)

    async def delete_tree(self, prefix: str) -> None:
        await self.metadata.delete_tree(prefix)
        await self.blobs.delete_tree(prefix)

    async def remove_empty_folders(self, prefix: str, *, below: bool = True) -> None:
        await self.metadata.remove_empty_folders(prefix, below=below)
        await self.blobs.remove_empty_folders(prefix, below=below)

    async def copy(self, source: str, destination: str) -> None:
        if self._for(source) is self._for(destination):
            await self._for(source).copy(source, destination)
            return
        # Across stores (a sha512 upload verified from the session's own key): through a writer.
        writer = await self._for(destination).spool_writer(destination + ".copy")
        try:
            async for chunk in self._for(source).read(source):
                await writer.write(chunk)
            await writer.commit(destination)
        except BaseException:
            await writer.cancel()
            raise

    async def upload_writer(self, key: str, *, create: bool = False) -> UploadWriter:
        return await self._for(key).upload_writer(key, create=create)

    async def upload_modified(self, key: str) -> float | None:
        return await self._for(key).upload_modified(key)

    async def spool_writer(self, key: str) -> SpoolWriter:
        return await self._for(key).spool_writer(key)

    async def purge_temporary(self, older_than: float) -> int:
        return await self.metadata.purge_temporary(older_than) + await self.blobs.purge_temporary(older_than)

    async def close(self) -> None:
        await self.metadata.close()
        await self.blobs.close()
