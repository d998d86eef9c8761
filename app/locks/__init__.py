"""Lock stores: one protocol (app/locks/base.py), three implementations, chosen from the storage
configuration by `open_lock_store` (docs/locking.md):

- a `redis` section (`[metadata_store.<fs|s3>.redis]`, else `[blob_store.<fs|s3>.redis]`): Redis,
  for replicas on several machines (app/locks/redis.py);
- otherwise, a filesystem store: OS file locks under `<root_dir>/locks/`, so a `registry scrub`
  and a `registry server` on one data folder exclude each other (app/locks/files.py). Measured at
  150-400 µs per hold/release against 40-60 µs in process; a push takes one lock per blob commit
  and two for the manifest and its tag, each beside file writes of a millisecond or more (a 1 MiB
  blob push is ~27 ms at p50, docs/performance.md), so files are the default;
- otherwise (S3 without Redis): in-process locks only (app/locks/memory.py). Several replicas on
  one bucket then do not coordinate: they need Redis.

Lock names are built in app/storage/locks.py.
"""

from __future__ import annotations

from pathlib import Path

from app.actors.bridge import ActorHandle
from app.config import RedisLockConfig, StoreConfig
from app.locks.base import DEFAULT_WAIT, Lease, LockLost, LockStore, LockStoreUnavailable, LockTimeout
from app.locks.memory import MemoryLockStore

__all__ = ["DEFAULT_WAIT", "Lease", "LockLost", "LockStore", "LockStoreUnavailable", "LockTimeout",
           "MemoryLockStore", "lock_store_kind", "open_lock_store"]


def _redis_config(*stores: StoreConfig | None) -> RedisLockConfig | None:
    for store in stores:
        if store is None:
            continue
        for backend in (store.fs, store.s3):
            if backend is not None and backend.redis is not None:
                return backend.redis
    return None


def _fs_root(*stores: StoreConfig | None) -> Path | None:
    for store in stores:
        if store is not None and store.fs is not None:
            return store.fs.root_dir
    return None


def lock_store_kind(blob_store: StoreConfig, metadata_store: StoreConfig | None = None) -> str:
    """"redis", "files" or "memory": which store `open_lock_store` builds for this configuration."""
    if _redis_config(metadata_store, blob_store) is not None:
        return "redis"
    return "files" if _fs_root(metadata_store, blob_store) is not None else "memory"


def open_lock_store(blob_store: StoreConfig, metadata_store: StoreConfig | None = None, *,
                    actor: ActorHandle | None = None) -> LockStore:
    """The lock store for this storage configuration (see the module docstring). `actor`: the
    supervisor's LockActor for the in-process part (the memory store, and the file store's
    in-process layer); without it the store starts a LockActor of its own and stops it on close()."""
    redis = _redis_config(metadata_store, blob_store)
    if redis is not None:
        from app.locks.redis import RedisLockStore  # loads redis.asyncio, only when configured

        return RedisLockStore(redis)
    root = _fs_root(metadata_store, blob_store)
    if root is not None:
        from app.locks.files import FileLockStore

        return FileLockStore(root, actor=actor)
    return MemoryLockStore(actor)
