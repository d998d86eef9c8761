"""Starts the actors in dependency order and stops them in reverse."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.actors.bridge import ActorHandle
from app.actors.locks import LockActor
from app.actors.manifest_index import DEFAULT_MAX_NAMESPACES, ManifestIndexActor
from app.actors.uploads import UploadActor
from app.config import Config
from app.locks.memory import MemoryLockStore

if TYPE_CHECKING:
    from app.actors.config_watcher import ApplyReload
    from app.actors.sweeper import Job


@dataclass
class Actors:
    locks: MemoryLockStore  # this process's locks (the server's own store: app/locks/, Registry.locks)
    lock_actor: ActorHandle
    uploads: ActorHandle
    index: ActorHandle
    # FetchCoordinator (single-flight upstream fetches): started with the first pull-through repository.
    fetches: ActorHandle | None = None
    config_watcher: ActorHandle | None = None
    # Housekeeping jobs on timers (upload expiry), started once the server runs.
    sweepers: list[ActorHandle] = field(default_factory=list)

    def start_fetch_coordinator(self) -> ActorHandle:
        """The FetchCoordinator, started on first use: a registry without upstreams never needs it."""
        if self.fetches is None:
            from app.actors.fetch_coordinator import FetchCoordinator

            self.fetches = ActorHandle(FetchCoordinator.start())
        return self.fetches

    def stop(self) -> None:
        # The watcher started last (once the server listens) and stops first: no reload during shutdown.
        if self.config_watcher is not None:
            self.config_watcher.stop()
        for sweeper in self.sweepers:  # their jobs use the actors below
            sweeper.stop()
        for handle in (self.fetches, self.index, self.uploads, self.lock_actor):
            if handle is not None:
                handle.stop()

    def start_config_watcher(self, files: list[Path], config: Config, loop: asyncio.AbstractEventLoop,
                             apply: ApplyReload) -> None:
        """Watch `files` (and the TLS files they name) and reload them live through `apply`."""
        from app.actors.config_watcher import ConfigWatcher  # watchdog only when files are watched

        self.config_watcher = ActorHandle(ConfigWatcher.start(files, config, loop, apply))

    def start_sweeper(self, name: str, job: Job, loop: asyncio.AbstractEventLoop, first_delay: float) -> None:
        """Run `job` on `loop` after `first_delay`, then whenever each run says (app/actors/sweeper.py)."""
        from app.actors.sweeper import Sweeper

        self.sweepers.append(ActorHandle(Sweeper.start(name, job, loop, first_delay)))


def start_actors(index_max_namespaces: int = DEFAULT_MAX_NAMESPACES) -> Actors:
    lock_actor = ActorHandle(LockActor.start())
    uploads = ActorHandle(UploadActor.start())
    index = ActorHandle(ManifestIndexActor.start(index_max_namespaces))
    return Actors(locks=MemoryLockStore(lock_actor), lock_actor=lock_actor, uploads=uploads, index=index)
