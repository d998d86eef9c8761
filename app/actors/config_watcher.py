"""ConfigWatcher: watches the configuration files and the TLS files they name, and reloads them live.

It owns a watchdog observer and the running, validated configuration. The *folders* of the files are
watched, not the files: an editor's rename-style save or a Kubernetes ConfigMap/Secret update (a
`..data` symlink swapped by rename) replaces the directory entry, which a watch on the file itself
misses. Events are debounced, then the content of every file is hashed; only a real change is
reloaded. A new configuration is loaded and checked on the actor's thread (TLS files included), then
applied on the event loop by the `apply` coroutine the server provides (the actor never touches the
registry itself). An invalid configuration is logged and the running one keeps serving; keys that
need a restart (see `app.reload`) keep their running values and are logged as such.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from app.actors.bridge import AsyncActor, tell
from app.config import Config, ConfigError, config_files, load
from app.reload import changed_sections, split_restart_keys

log = logging.getLogger("registry.config")

# (new configuration or None when unchanged, new TLS context or None when unchanged) → applied on the loop.
ApplyReload = Callable[[Config | None, ssl.SSLContext | None], Coroutine[Any, Any, None]]

DEBOUNCE_SECONDS = 0.3
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
    DirCreatedEvent, DirModifiedEvent, DirMovedEvent, DirDeletedEvent,
]


class _Relay(FileSystemEventHandler):
    """On the observer's thread: pass events about the watched names on to the actor."""

    def __init__(self, watcher: ConfigWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(self._watcher.is_relevant(os.fsdecode(p)) for p in paths if p):
            tell(self._watcher.actor_ref, "changed")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher(AsyncActor):
    def __init__(self, files: list[Path], config: Config, loop: asyncio.AbstractEventLoop,
                 apply: ApplyReload, debounce: float = DEBOUNCE_SECONDS) -> None:
        super().__init__()
        self.files = [Path(os.path.abspath(f)) for f in files]
        self._folders = frozenset(f for f in self.files if f.is_dir())
        self.config = config
        self._loop = loop
        self._apply = apply
        self._debounce = debounce
        self._observer: BaseObserver = Observer()
        self._watches: dict[Path, tuple[ObservedWatch, tuple[int, int]]] = {}
        self._names: frozenset[str] = frozenset()
        self._digests = self._read_digests()
        self._due = 0.0
        self._timer: threading.Timer | None = None
        self._applying = False
        self._recheck = False

    # --- lifecycle ------------------------------------------------------------------------------
    def on_start(self) -> None:
        self._rewatch()
        self._observer.start()
        log.info("watching the configuration for changes",
                 extra={"fields": {"folders": sorted(str(d) for d in self._watches)}})
        self.reload()  # a change made before the watches existed

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._observer.stop()
        self._observer.join(timeout=5)

    # --- what is watched ------------------------------------------------------------------------
    def _config_files(self) -> list[Path]:
        """The configuration files: those given, and the `*.toml` files of the folders given (read
        again each time, so a file added to a configuration folder is picked up)."""
        return config_files(self.files)

    def _watched_files(self) -> list[Path]:
        if self.config.server.tls is None:
            return self._config_files()
        from app.tls import tls_files  # cryptography (~8 MiB) only when TLS is configured

        return [*self._config_files(), *tls_files(self.config.server.tls)]

    def is_relevant(self, path: str) -> bool:
        """A watched file's name, a Kubernetes `..data`-style entry, or a `*.toml` file appearing in a
        configuration folder (called from the observer)."""
        name = os.path.basename(path)
        if name in self._names or name.startswith(".."):
            return True
        return name.endswith(".toml") and Path(os.path.dirname(path)) in self._folders

    def _rewatch(self) -> None:
        """Watch the folder of every file, and of the file a symlink points at; drop stale watches."""
        wanted: set[Path] = set(self._folders)
        names: set[str] = set()
        for file in self._watched_files():
            for path in _link_chain(file):
                wanted.add(path.parent)
                names.add(path.name)
        self._names = frozenset(names)
        for folder, (watch, identity) in list(self._watches.items()):
            if folder not in wanted or _identity(folder) != identity:
                self._observer.unschedule(watch)
                del self._watches[folder]
        for folder in wanted - self._watches.keys():
            found = _identity(folder)
            if found is None:
                continue
            try:
                watch = self._observer.schedule(_Relay(self), str(folder), event_filter=_EVENTS)
            except OSError as exc:
                log.warning("cannot watch %s for configuration changes: %s", folder, exc)
                continue
            self._watches[folder] = (watch, found)

    def _read_digests(self) -> dict[Path, str | None]:
        return {file: _digest(file) for file in self._watched_files()}

    # --- debounce -------------------------------------------------------------------------------
    def changed(self) -> None:
        """A watched folder changed: check once things have been quiet for the debounce time."""
        self._due = time.monotonic() + self._debounce
        if self._timer is None:
            self._start_timer(self._debounce)

    def _start_timer(self, delay: float) -> None:
        self._timer = threading.Timer(delay, tell, (self.actor_ref, "check"))
        self._timer.daemon = True
        self._timer.start()

    def check(self) -> None:
        self._timer = None
        remaining = self._due - time.monotonic()
        if remaining > 0:
            self._start_timer(remaining)
        elif self._applying:
            self._recheck = True
        else:
            self.reload()

    # --- reload ---------------------------------------------------------------------------------
    def reload(self) -> None:
        """Reload when some file's content changed; applying is asynchronous (see `applied`)."""
        digests = self._read_digests()
        if digests == self._digests:
            self._rewatch()
            return
        configuration = set(self._config_files())
        tls_changed = {f: d for f, d in digests.items() if f not in configuration} != {
            f: d for f, d in self._digests.items() if f not in configuration}
        self._digests = digests
        try:
            loaded = load(self.files)
        except ConfigError as exc:
            log.error("configuration reload failed; the running configuration is kept: %s", exc)
            return
        config, kept = split_restart_keys(self.config, loaded)
        for item in kept:
            log.warning("%s changed but needs a restart (%s); the running value is kept until then",
                        item.key, item.reason)
        tls = config.server.tls
        context = None
        if tls is not None and (tls_changed or tls != self.config.server.tls):
            from app.tls import build_context  # cryptography only when TLS is configured

            try:
                context = build_context(tls)
            except ConfigError as exc:
                log.error("configuration reload failed; the running configuration is kept: %s", exc)
                return
        changed = config != self.config
        if not changed and context is None:
            self._rewatch()
            return
        try:
            future: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
                self._apply(config if changed else None, context), self._loop)
        except RuntimeError:  # the loop is closed: the server is shutting down
            return
        self._applying = True
        future.add_done_callback(lambda f: tell(self.actor_ref, "applied", config, context is not None, f))

    def applied(self, config: Config, tls_rotated: bool, future: concurrent.futures.Future[None]) -> None:
        self._applying = False
        error = future.exception() if not future.cancelled() else RuntimeError("cancelled")
        if error is not None:
            log.error("configuration reload could not be applied; the running configuration is kept: %s",
                      error)
        else:
            sections = changed_sections(self.config, config)
            self.config = config
            log.info("configuration reloaded", extra={"fields": {
                "changed": sections, "tls_certificates_reloaded": tls_rotated}})
        # Files this configuration names for the first time are hashed now; the others keep the
        # hash their reload was based on, so a change made meanwhile is still seen by the recheck.
        self._digests = {f: self._digests[f] if f in self._digests else _digest(f)
                         for f in self._watched_files()}
        self._rewatch()
        if self._recheck:
            self._recheck = False
            self.reload()

    def current(self) -> Config:
        return self.config


def _link_chain(path: Path) -> list[Path]:
    """`path`, every symlink hop from it, and its final target: a change to any of them changes what
    `path` reads (Kubernetes: `config.toml -> ..data/config.toml`, `..data -> ..2026_01_01_…`)."""
    chain = [path]
    for _ in range(40):  # the kernel's own limit on nested links
        if not path.is_symlink():
            break
        try:
            path = Path(os.path.normpath(path.parent / os.readlink(path)))
        except OSError:
            break
        chain.append(path)
    chain.append(Path(os.path.realpath(chain[0])))
    return chain


def _identity(folder: Path) -> tuple[int, int] | None:
    """Device and inode of a folder: a folder deleted and created again needs a new watch."""
    try:
        stat = folder.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino
