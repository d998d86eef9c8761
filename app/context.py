"""Everything a request handler needs, built once at start: config, storage, actors, services."""

from __future__ import annotations

from dataclasses import dataclass

from app.actors.supervisor import Actors, start_actors
from app.config import Config
from app.policy import Authorizer
from app.services.blobs import BlobService
from app.services.manifests import ManifestService
from app.services.uploads import UploadService
from app.storage import Storage, open_storage


@dataclass
class Registry:
    config: Config
    storage: Storage
    actors: Actors
    blobs: BlobService
    uploads: UploadService
    manifests: ManifestService
    authorizer: Authorizer

    def reconfigure(self, config: Config) -> None:
        """Swap in a new, already validated configuration for new requests (hot reload).

        Everything derived from the configuration is rebuilt here first and then swapped, so a request
        sees either the old or the new configuration, never a mix. Raises (keeping the old one) when
        the new configuration cannot be applied.
        """
        authorizer = Authorizer(config)
        self.config = config
        self.authorizer = authorizer
        self.manifests.max_manifest_size = config.global_.max_manifest_size
        self.uploads.chunk_size = config.server.streaming_chunk_size

    async def close(self) -> None:
        self.actors.stop()
        await self.storage.close()


def build_registry(config: Config) -> Registry:
    authorizer = Authorizer(config)
    storage = open_storage(config.blob_store)
    actors = start_actors()
    blobs = BlobService(storage)
    uploads = UploadService(storage, actors.uploads, actors.locks, blobs, config.server.streaming_chunk_size)
    manifests = ManifestService(storage, actors.index, actors.locks, blobs, config.global_.max_manifest_size)
    return Registry(config, storage, actors, blobs, uploads, manifests, authorizer)
