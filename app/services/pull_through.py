"""Pull-through: the services of a namespace whose repository has upstreams, built per request.

`Registry.blobs_for/manifests_for/uploads_for` ask here first: a namespace in a repository with
`[[repository."<prefix>".upstream]]` entries gets the pull-through implementation of the same
interface; every other namespace gets the local services. The configuration is read at request time
(hot reload may swap it), never captured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from app.actors.bridge import ActorHandle
from app.actors.locks import Locks
from app.cache import CacheStore
from app.config import Config
from app.grammar import Digest
from app.repositories import RepositoryMap
from app.services.blobs import BlobService
from app.services.flights import Flights
from app.services.manifests import ManifestService
from app.services.pull_blobs import PullThroughBlobs, read_only
from app.services.pull_manifests import PullThroughManifests
from app.services.uploads import ContentRange
from app.storage import Storage
from app.upstream.pool import Mirror, UpstreamPool


class ReadOnlyUploads:
    """Uploads into a pull-through repository: refused with 405 UNSUPPORTED and a clear message."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror

    async def start(self, namespace: str) -> str:
        raise read_only(self.mirror)

    async def status(self, namespace: str, upload_id: str) -> int:
        raise read_only(self.mirror)

    async def append(self, namespace: str, upload_id: str, body: AsyncIterator[bytes] | None,
                     content_range: ContentRange | None) -> int:
        raise read_only(self.mirror)

    async def complete(self, namespace: str, upload_id: str, digest: Digest,
                       body: AsyncIterator[bytes] | None) -> None:
        raise read_only(self.mirror)

    async def cancel(self, namespace: str, upload_id: str) -> None:
        raise read_only(self.mirror)


class PullThrough:
    def __init__(self, storage: Storage, locks: Locks, fetches: ActorHandle, blobs: BlobService,
                 manifests: ManifestService, cache: CacheStore) -> None:
        self.storage = storage
        self.locks = locks
        self.local_blobs = blobs
        self.local_manifests = manifests
        self.pool = UpstreamPool(cache)
        self.flights = Flights(fetches)
        self._config: Config | None = None
        self._repositories = RepositoryMap({})
        self._housekeeping: set[asyncio.Task[Any]] = set()

    def mirror(self, config: Config, namespace: str) -> Mirror | None:
        """The upstreams of `namespace`'s repository, or None when it is not a pull-through one."""
        if config is not self._config:
            self._adopt(config)
        found = self._repositories.find(namespace)
        if found is None or not found[1].upstream:
            return None
        prefix, repository = found
        return Mirror(prefix, tuple(repository.upstream), self.pool)

    def _adopt(self, config: Config) -> None:
        """A new configuration (start or hot reload): new prefix map; clients of removed upstreams closed."""
        self._config = config
        self._repositories = RepositoryMap(config.repository)
        upstreams = [u for r in config.repository.values() for u in r.upstream]
        try:
            task = asyncio.get_running_loop().create_task(self.pool.retain(upstreams))
        except RuntimeError:
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
