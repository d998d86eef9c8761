"""Starts the actors in dependency order and stops them in reverse."""

from __future__ import annotations

from dataclasses import dataclass

from app.actors.bridge import ActorHandle
from app.actors.locks import LockActor, Locks
from app.actors.manifest_index import ManifestIndexActor
from app.actors.uploads import UploadActor


@dataclass
class Actors:
    locks: Locks
    lock_actor: ActorHandle
    uploads: ActorHandle
    index: ActorHandle

    def stop(self) -> None:
        for handle in (self.index, self.uploads, self.lock_actor):
            handle.stop()


def start_actors() -> Actors:
    lock_actor = ActorHandle(LockActor.start())
    uploads = ActorHandle(UploadActor.start())
    index = ActorHandle(ManifestIndexActor.start())
    return Actors(locks=Locks(lock_actor), lock_actor=lock_actor, uploads=uploads, index=index)
