"""Everything a request handler needs, built once at start: config, storage, actors, services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.actors.supervisor import Actors, start_actors
from app.actors.uploads import UploadLimits
from app.auth.chain import Authenticator
from app.cache import CacheStore, open_cache
from app.coherence import open_coherence
from app.config import Config
from app.immutable import ImmutableTags
from app.locks import LockStore, open_lock_store
from app.policy import Authorizer
from app.services.blobs import BlobService
from app.services.manifests import ManifestService
from app.services.pull_times import PullTimes
from app.services.uploads import UploadService
from app.storage import Storage, open_stores

if TYPE_CHECKING:  # imported at run time only once a repository has upstreams (see _pull_through_for)
    from app.services.garbage import GarbageCollector
    from app.services.pull_blobs import PullThroughBlobs
    from app.services.pull_manifests import PullThroughManifests
    from app.services.pull_through import PullThrough, ReadOnlyUploads


@dataclass
class Registry:
    config: Config
    storage: Storage
    actors: Actors
    blobs: BlobService
    uploads: UploadService
    manifests: ManifestService
    authorizer: Authorizer
    authenticator: Authenticator
    # Set by build_registry once the registry exists.
    cache: CacheStore = field(init=False)
    # The locks every writer takes (app/locks/): files for an fs store, Redis when configured.
    locks: LockStore = field(init=False)
    # Built with the first configuration that has upstreams (at start or by a hot reload), then kept:
    # a registry that never mirrors anything never imports the pull-through code or its upstream client.
    pull_through: PullThrough | None = field(init=False, default=None)
    # Manifest GETs recorded for retention, written in batches (app/services/pull_times.py); set when
    # the server starts its housekeeping (app/housekeeping.py).
    pull_times: PullTimes | None = field(init=False, default=None)
    # The garbage collector, once the server's housekeeping started it (app/services/garbage.py).
    garbage: GarbageCollector | None = field(init=False, default=None)

    # The services for one namespace: the pull-through implementations when its repository has
    # upstreams (read at request time: a hot reload may add or remove them), the local ones otherwise.
    def blobs_for(self, namespace: str) -> BlobService | PullThroughBlobs:
        if self.pull_through is None:
            return self.blobs
        return self.pull_through.blobs(self.config, namespace) or self.blobs

    def manifests_for(self, namespace: str) -> ManifestService | PullThroughManifests:
        if self.pull_through is None:
            return self.manifests
        return self.pull_through.manifests(self.config, namespace) or self.manifests

    def uploads_for(self, namespace: str) -> UploadService | ReadOnlyUploads:
        if self.pull_through is None:
            return self.uploads
        return self.pull_through.uploads(self.config, namespace) or self.uploads

    def _prepare_pull_through(self, config: Config) -> None:
        """Build the pull-through services the first time a configuration has upstreams."""
        if self.pull_through is not None or not any(r.pulls_through for r in config.repository.values()):
            return
        from app.services.pull_through import PullThrough

        fetches = self.actors.start_fetch_coordinator()
        self.pull_through = PullThrough(self.storage, self.locks, fetches, self.blobs, self.manifests,
                                        self.cache)

    def reconfigure(self, config: Config) -> None:
        """Swap in a new, already validated configuration for new requests (hot reload).

        Everything derived from the configuration is rebuilt here first and then swapped, so a request
        sees either the old or the new configuration, never a mix. Raises (keeping the old one) when
        the new configuration cannot be applied.
        """
        authorizer = Authorizer(config)
        authenticator = Authenticator(config, self.storage, previous=self.authenticator)
        immutable_tags = ImmutableTags(config)
        self._prepare_pull_through(config)  # before the swap: a request never sees upstreams without it
        old_authorizer, old_authenticator = self.authorizer, self.authenticator
        self.config = config
        self.authorizer = authorizer
        self.authenticator = authenticator  # a new Basic verifier: cached successes are forgotten
        self.manifests.immutable_tags = immutable_tags
        _close_later(old_authorizer.close(), old_authenticator.close(successor=authenticator))
        self.manifests.max_manifest_size = config.global_.max_manifest_size
        self.manifests.max_manifest_references = config.global_.max_manifest_references
        self.uploads.chunk_size = config.server.streaming_chunk_size
        self.uploads.configure(UploadLimits.of(config.global_))
        self.actors.index.tell("configure", config.global_.index_max_namespaces)

    async def close(self) -> None:
        for task in list(_closing):
            task.cancel()
        await asyncio.gather(*_closing, return_exceptions=True)
        await self.authorizer.close()
        await self.authenticator.close()
        if self.pull_through is not None:
            await self.pull_through.close()
        await self.cache.close()
        await self.manifests.coherence.close()
        await self.locks.close()
        self.actors.stop()
        await self.storage.close()


# Requests that started under the previous configuration may still be talking to its webhooks and
# OIDC issuers; their HTTP sessions are closed once those requests had time to finish.
RECONFIGURE_CLOSE_DELAY = 60.0


def _close_later(*closers: Coroutine[Any, Any, None]) -> None:
    async def close() -> None:
        try:
            await asyncio.sleep(RECONFIGURE_CLOSE_DELAY)
        finally:  # also when the server stops first (the task is cancelled)
            for closer in closers:
                with contextlib.suppress(Exception):
                    await closer

    try:
        task = asyncio.get_running_loop().create_task(close())
    except RuntimeError:  # no loop (a tool reconfiguring offline): nothing was opened
        for closer in closers:
            closer.close()
        return
    _closing.add(task)
    task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()


def build_registry(config: Config) -> Registry:
    authorizer = Authorizer(config)
    storage = open_stores(config.blob_store, config.metadata_store)
    if config.observability.tracing is not None:  # spans around storage calls (app/tracing/storage.py)
        from app.tracing.storage import traced

        storage = traced(storage)
    authenticator = Authenticator(config, storage)
    actors = start_actors(config.global_.index_max_namespaces)
    locks = open_lock_store(config.blob_store, config.metadata_store, actor=actors.lock_actor)
    blobs = BlobService(storage, locks)
    uploads = UploadService(storage, actors.uploads, locks, blobs, config.server.streaming_chunk_size)
    uploads.configure(UploadLimits.of(config.global_))
    manifests = ManifestService(storage, actors.index, locks, blobs, config.global_.max_manifest_size,
                                config.global_.max_manifest_references)
    manifests.immutable_tags = ImmutableTags(config)
    manifests.coherence = open_coherence(config, actors.index)
    registry = Registry(config, storage, actors, blobs, uploads, manifests, authorizer, authenticator)
    registry.cache = open_cache(config.cache)
    registry.locks = locks
    registry._prepare_pull_through(config)
    return registry
