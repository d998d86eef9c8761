"""Storage: the interface, distribution's layout, and the drivers."""

from __future__ import annotations

from app.config import StoreConfig
from app.storage.base import Body, NotFound, SpoolWriter, Stat, Storage, StorageError, UploadWriter

__all__ = ["Body", "NotFound", "SpoolWriter", "Stat", "Storage", "StorageError", "UploadWriter",
           "open_storage"]


def open_storage(config: StoreConfig) -> Storage:
    if config.fs is not None:
        from app.storage.fs import FsStorage

        return FsStorage(config.fs.root_dir, sync_to_disk=config.fs.sync_to_disk)
    assert config.s3 is not None  # the configuration holds exactly one of them
    from app.storage.s3 import S3Storage  # the AWS stack is loaded only for an S3 store

    return S3Storage(config.s3)


def open_stores(blob_store: StoreConfig, metadata_store: StoreConfig | None) -> Storage:
    """The registry's storage: the blob store, or both stores behind one interface when the metadata
    store is configured apart (app/storage/routed.py)."""
    blobs = open_storage(blob_store)
    if metadata_store is None or _without_locks(metadata_store) == _without_locks(blob_store):
        return blobs  # one store (its lock store, `redis`, is not storage)
    from app.storage.routed import RoutedStorage

    return RoutedStorage(blobs, open_storage(metadata_store))


def _without_locks(store: StoreConfig) -> StoreConfig:
    return StoreConfig(fs=store.fs.model_copy(update={"redis": None}) if store.fs else None,
                       s3=store.s3.model_copy(update={"redis": None}) if store.s3 else None)
