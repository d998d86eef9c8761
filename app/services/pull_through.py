"""Pull-through: the services of a namespace whose repository has upstreams, built per request.

`Registry.blobs_for/manifests_for/uploads_for` ask here first: a namespace in a repository with
`[[repository."<prefix>".upstream]]` entries, or with `mirror_any_registry` (its upstream derived from
the host the name carries, app/upstream/any_registry.py), gets the pull-through implementation of the
same interface; every other namespace gets the local services. The configuration is read at request
time (hot reload may swap it), never captured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from app import registry_hosts
from app.actors.bridge import ActorHandle
from app.cache import CacheStore
from app.config import Config, RepositoryConfig, UpstreamConfig
from app.grammar import Digest
from app.locks.base import LockStore
from app.repositories import RepositoryMap
from app.services.blobs import BlobService
from app.services.flights import Flights
from app.services.manifests import ManifestService
from app.services.pull_blobs import PullThroughBlobs, read_only
from app.services.pull_manifests import PullThroughManifests
from app.services.uploads import ContentRange
from app.storage import Storage
from app.upstream.any_registry import DerivedUpstreams
from app.upstream.pool import Mirror, UpstreamPool


class ReadOnlyUploads:
    """Uploads into a pull-through repository: refused with 405 UNSUPPORTED and a clear message."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror

    async def start(self, namespace: str, client: str | None = None) -> str:
        raise read_only(self.mirror)

    async def status(self, namespace: str, upload_id: str) -> int:
        raise read_only(self.mirror)

    async def append(self, namespace: str, upload_id: str, body: AsyncIterator[bytes] | None,
                     content_range: ContentRange | None, content_length: int | None = None) -> int:
        raise read_only(self.mirror)

    async def complete(self, namespace: str, upload_id: str, digest: Digest,
                       body: AsyncIterator[bytes] | None) -> None:
        raise read_only(self.mirror)

    async def cancel(self, namespace: str, upload_id: str) -> None:
        raise read_only(self.mirror)


class PullThrough:
    def __init__(self, storage: Storage, locks: LockStore, fetches: ActorHandle, blobs: BlobService,
                 manifests: ManifestService, cache: CacheStore) -> None:
        self.storage = storage
        self.locks = locks
        self.local_blobs = blobs
        self.local_manifests = manifests
        self.pool = UpstreamPool(cache)
        self.flights = Flights(fetches)
        self.derived = DerivedUpstreams()
        self._config: Config | None = None
        self._repositories = RepositoryMap({})
        self._housekeeping: set[asyncio.Task[Any]] = set()

    def mirror(self, config: Config, namespace: str) -> Mirror | None:
        """The upstreams of `namespace`'s repository, or None when it is not a pull-through one."""
        if config is not self._config:
            self._adopt(config)
        found = self._repositories.find(namespace)
        if found is None or not found[1].pulls_through:
            return None
        prefix, repository = found
        if repository.mirror_any_registry:
            return self._any_registry(prefix, repository, namespace)
        return Mirror(prefix, tuple(repository.upstream), self.pool)

    def _any_registry(self, prefix: str, repository: RepositoryConfig, namespace: str) -> Mirror:
        """`<prefix>/<host>/<rest>`: the derived upstream of <host>. A name without a host still gets a
        (read-only) Mirror, one without upstreams whose every fetch answers NAME_UNKNOWN saying why."""
        component = namespace[len(prefix) + 1:].split("/", 1)[0]
        host = registry_hosts.decode_host(component) if component else None
        if host is None:
            return Mirror(prefix, (), self.pool, any_registry=True)
        upstream, evicted = self.derived.get(prefix, repository, host)
        if evicted:  # the least recently used host's client is closed once its requests are done
            self._housekeep(self._retain())
        return Mirror(prefix, (upstream,), self.pool, any_registry=True, host=host,
                      root=f"{prefix}/{component}")

    async def _retain(self) -> None:
        """Close the clients no upstream in use needs. What is in use is read when this runs, not when
        it was scheduled: requests meanwhile may have derived hosts whose clients must stay."""
        repositories = self._config.repository if self._config is not None else {}
        in_use: list[UpstreamConfig] = [u for r in repositories.values() for u in r.upstream]
        await self.pool.retain(in_use + self.derived.configs())

    def _adopt(self, config: Config) -> None:
        """A new configuration (start or hot reload): new prefix map; clients of removed upstreams closed
        (those of derived hosts still in use are kept, with their new settings if they changed)."""
        self._config = config
        self._repositories = RepositoryMap(config.repository)
        self.derived.adopt(config.repository)
        self._housekeep(self._retain())

    def _housekeep(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop (a tool working offline): nothing was opened
            work.close()
            return
        self._housekeeping.add(task)
        task.add_done_callback(self._housekeeping.discard)

    def blobs(self, config: Config, namespace: str) -> PullThroughBlobs | None:
        mirror = self.mirror(config, namespace)
        if mirror is None:
            return None
        return PullThroughBlobs(self.local_blobs, self.storage, self.locks, self.flights, mirror,
                                config.server.streaming_chunk_size)

    def manifests(self, config: Config, namespace: str) -> PullThroughManifests | None:
        mirror = self.mirror(config, namespace)
        if mirror is None:
            return None
        return PullThroughManifests(self.local_manifests, self.storage, self.flights, mirror)

    def uploads(self, config: Config, namespace: str) -> ReadOnlyUploads | None:
        mirror = self.mirror(config, namespace)
        return None if mirror is None else ReadOnlyUploads(mirror)

    async def close(self) -> None:
        await self.flights.close()
        for task in list(self._housekeeping):
            await task
        await self.pool.close()
