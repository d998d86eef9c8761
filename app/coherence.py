"""Coherence of the manifest index across replicas: what one replica writes, every other one serves on
the very next request.

Each replica keeps tags, tag lists, revisions, referrers and the catalog in its manifest index. With
one process that index sees every write. With several processes on one store, a write on replica A
is not in replica B's index. So every write bumps a per-namespace version in Redis (and the catalog's
version when the namespace may be new), after storage was written and before the client is
answered. Every read of a namespace from the index first reads that version. When it moved since
this replica last looked, the namespace is invalidated and read again from storage.

Why it cannot go stale: a write is in storage before its version is bumped, and the client hears
of it only after the bump. A request that starts after the client heard of it reads the version in
a Redis round trip that starts after the request did (app/redis_raw.py), so it sees the bump and
drops what the index held. A fill (what a request read from storage) that was in flight while
the namespace was invalidated carries an older generation and is refused by the index
(`ManifestIndexActor.invalidate`).

Cost: one Redis round trip per manifest, tag or referrers request. The reads asked for in one loop
turn share one MGET, written at the end of that turn on a pipelined connection of their own
(app/redis_raw.py): several MGETs may be in flight at once, and a read never joins one that was sent
before it was asked for. Blob data and manifest bodies are content-addressed and are never
invalidated.

Without Redis (`[cache.redis]`, or the metadata store's `redis` section) nothing is shared and every
call here does nothing: one process is coherent by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from app.storage import StorageError

if TYPE_CHECKING:
    from app.actors.bridge import ActorHandle
    from app.config import Config

log = logging.getLogger("registry")

CATALOG = "\x00catalog"  # a name no namespace can have
_UNSEEN = object()  # the version of a namespace this replica has not seen
BATCH_TURNS = 4  # loop turns a version read waits at most for more readers to join it


class SharedStateUnavailable(StorageError):
    """Redis, which replicas share their state through, cannot be reached: the request answers 503."""


class Coherence:
    """One process: the index sees every write, nothing to check."""

    shared = False

    async def observe(self, namespace: str) -> None:
        """Before a read of `namespace` from the index: drop it if another replica changed it."""

    async def changed(self, namespace: str, *, new_namespace: bool = False) -> None:
        """After a write to `namespace` reached storage, before the client is answered."""

    async def observe_catalog(self) -> None:
        """Before the catalog is read from the index."""

    async def ready(self) -> str | None:
        """None when the shared state can be reached, else why not (for /readyz)."""
        return None

    async def close(self) -> None:
        pass


class VersionReader:
    """Reads of version keys through redis-py, for the URLs app/redis_raw.py does not speak (unix
    sockets): a read joins the next MGET that starts after it was asked for, never one already in
    flight (whose answer may predate the caller's request)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._waiting: dict[str, list[asyncio.Future[str | None]]] = {}
        self._running: asyncio.Task[None] | None = None

    async def read(self, key: str) -> str | None:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            # A few loop turns first, while they bring new readers: requests whose handlers run in
            # these turns (sockets that were readable together) join this read rather than the next.
            # Each of them asked before the read is sent, so the guarantee above holds.
            for _ in range(BATCH_TURNS):
                waiting = sum(len(futures) for futures in self._waiting.values())
                await asyncio.sleep(0)
                if sum(len(futures) for futures in self._waiting.values()) == waiting:
                    break
            batch, self._waiting = self._waiting, {}
            keys = list(batch)
            try:
                values = await self._client.mget(keys)
            except Exception as exc:  # every waiter of this batch hears it
                failure = _unavailable(exc)
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(failure)
                continue
            for key, value in zip(keys, values, strict=True):
                text = value.decode() if isinstance(value, bytes) else value
                for future in batch[key]:
                    if not future.done():
                        future.set_result(text)


class RedisCoherence(Coherence):
    shared = True

    def __init__(self, client: Any, key_prefix: str, index: ActorHandle, max_namespaces: int,
                 url: str | None = None) -> None:
        self._client = client
        self._prefix = f"{key_prefix}registry:version:"
        self._index = index
        from app import redis_raw

        # The versions are read on every request: through a pipelined connection of our own when the
        # URL allows it, else through redis-py. Writes (rare) always go through redis-py.
        self._reader: VersionReader | redis_raw.PipelinedReader = (
            redis_raw.PipelinedReader(url, failure=_unavailable)
            if url is not None and redis_raw.supports(url) else VersionReader(client))
        # The version of each namespace this replica's index was last made to agree with.
        self._seen: OrderedDict[str, str | None] = OrderedDict()
        self._max_seen = max(max_namespaces, 1) * 2

    def _key(self, namespace: str) -> str:
        return self._prefix + namespace

    def _remember(self, namespace: str, version: str | None) -> None:
        self._seen[namespace] = version
        self._seen.move_to_end(namespace)
        while len(self._seen) > self._max_seen:
            # Forgetting a version is safe: the next observe finds no entry and invalidates.
            self._seen.popitem(last=False)

    async def observe(self, namespace: str) -> None:
        # On every manifest and tag request: one read, one dictionary look-up when nothing moved.
        version = await self._reader.read(self._prefix + namespace)
        seen = self._seen
        if seen.get(namespace, _UNSEEN) == version:
            seen.move_to_end(namespace)
            return
        self._index.tell("invalidate", namespace)
        self._remember(namespace, version)

    async def observe_catalog(self) -> None:
        version = await self._reader.read(self._key(CATALOG))
        if self._seen.get(CATALOG, _UNSEEN) == version:
            self._seen.move_to_end(CATALOG)
            return
        self._index.tell("invalidate_catalog")
        self._remember(CATALOG, version)

    async def changed(self, namespace: str, *, new_namespace: bool = False) -> None:
        names = [namespace, CATALOG] if new_namespace else [namespace]
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.incr(self._key(name))
                versions = await pipe.execute()
        except Exception as exc:
            raise _unavailable(exc) from exc
        for name, version in zip(names, versions, strict=True):
            before = self._seen.get(name)
            # Our own bump follows what we saw: the index holds our write and nothing else is new.
            # Otherwise another replica wrote in between, and what the index holds may be older.
            if before is None or int(before) + 1 != int(version):
                if name == CATALOG:
                    self._index.tell("invalidate_catalog")
                else:
                    self._index.tell("invalidate", name)
            self._remember(name, str(version))

    async def ready(self) -> str | None:
        try:
            await self._client.ping()
        except Exception as exc:
            return f"redis: {_unavailable(exc)}"
        return None

    async def close(self) -> None:
        if not isinstance(self._reader, VersionReader):
            await self._reader.close()
        await self._client.aclose()


def _unavailable(exc: BaseException) -> SharedStateUnavailable:
    if isinstance(exc, SharedStateUnavailable):
        return exc
    log.warning("redis (shared state of the replicas) failed: %s: %s", type(exc).__name__, exc)
    return SharedStateUnavailable(f"redis is unreachable: {type(exc).__name__}: {exc}")


def shared_redis(config: Config) -> tuple[str, str] | None:
    """The Redis replicas share their state through, as (url, key prefix): `[cache.redis]`, else the
    metadata store's lock store (`[metadata_store.<fs|s3>.redis]`, or the blob store's)."""
    if config.cache.redis is not None:
        return config.cache.redis.url, config.cache.redis.key_prefix
    for store in (config.metadata_store, config.blob_store):
        if store is None:
            continue
        backend = store.fs or store.s3
        if backend is not None and backend.redis is not None:
            return backend.redis.url, backend.redis.key_prefix
    return None


def open_coherence(config: Config, index: ActorHandle) -> Coherence:
    shared = shared_redis(config)
    if shared is None:
        return Coherence()
    url, key_prefix = shared
    from app.redis_client import redis_client

    return RedisCoherence(redis_client(url), key_prefix, index, config.global_.index_max_namespaces, url)


@contextlib.asynccontextmanager
async def beside_servers(config: Config) -> AsyncIterator[tuple[Coherence, ActorHandle]]:
    """For a command that writes to a store servers may be serving (scrub, delete-repository): the
    coherence a server has (announcing through Redis when the servers share it; doing nothing
    otherwise) and the index it keeps in step, one of the command's own, used for nothing else."""
    from app.actors.bridge import ActorHandle
    from app.actors.manifest_index import ManifestIndexActor

    index = ActorHandle(ManifestIndexActor.start(config.global_.index_max_namespaces))
    coherence = open_coherence(config, index)
    try:
        yield coherence, index
    finally:
        await coherence.close()
        index.stop()
