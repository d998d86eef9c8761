"""Storage: the interface, distribution's layout, and the drivers."""

from __future__ import annotations

from app.config import StoreConfig
from app.storage.base import AppendWriter, Stat, Storage, StorageError

__all__ = ["AppendWriter", "Stat", "Storage", "StorageError", "open_storage"]


def open_storage(config: StoreConfig) -> Storage:
    if config.fs is not None:
        from app.storage.fs import FsStorage

        return FsStorage(config.fs.root_dir, sync_to_disk=config.fs.sync_to_disk)
    raise NotImplementedError("S3 storage is not built yet: configure [blob_store.fs]")
