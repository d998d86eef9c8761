"""`registry service`: the executable registered with the operating system's service manager.

One `ServiceSpec` (what to run, with which configuration and data folder, for the user or the whole
machine) and one backend per service manager, each in its own module: `systemd.py` (Linux),
`launchd.py` (macOS), `windows.py` (the Windows service manager; the service process itself is
`windows_host.py`). Default locations per OS and scope come from `locations.py`.

The data folder reaches the server as the `REGISTRY__BLOB_STORE__FS__ROOT_DIR` override, and only
when the configuration file does not configure `[blob_store]` itself (then the file decides). Nothing
else is written into the service definition, so it stays a thin "run `server` with this file".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

Scope = Literal["user", "system"]

NAME = "registry"
DISPLAY_NAME = "Simple-Registry"
DESCRIPTION = "Simple-Registry OCI container registry"
DATA_VARIABLE = "REGISTRY__BLOB_STORE__FS__ROOT_DIR"
# Tests and image builds: the service definition (and the default files install creates) are written
# below this folder instead of `/`; the paths inside them stay the real ones (like DESTDIR).
ROOT_VARIABLE = "REGISTRY_SERVICE_ROOT"


class ServiceError(Exception):
    """The service manager refused, or the request cannot be done as asked: one clear line."""


@dataclass(frozen=True)
class ServiceSpec:
    scope: Scope
    command: list[str]  # the executable (`python -m app` when not frozen)
    config_file: Path
    data_dir: Path | None  # None: the configuration's [blob_store] decides
    root: Path = Path("/")
    environment: dict[str, str] = field(default_factory=dict)

    def server_arguments(self) -> list[str]:
        return [*self.command, "-c", str(self.config_file), "server"]

    def rooted(self, path: Path) -> Path:
        """Where a file the installer writes at `path` really goes (below REGISTRY_SERVICE_ROOT)."""
        if self.root == Path("/"):
            return path
        return self.root / path.relative_to(path.anchor)


@dataclass(frozen=True)
class Status:
    definition: Path | str  # the unit file, the plist, or the Windows service's name
    installed: bool
    running: bool
    state: str  # the service manager's own words
    arguments: list[str] = field(default_factory=list)  # what the installed definition runs
    environment: dict[str, str] = field(default_factory=dict)
    logs: str = ""  # where its output goes


class Backend(Protocol):
    def install(self, spec: ServiceSpec) -> list[str]:
        """Register (not start) the service; returns what to tell the operator."""
        ...

    def uninstall(self, spec: ServiceSpec) -> list[str]: ...

    def start(self, spec: ServiceSpec) -> None: ...

    def stop(self, spec: ServiceSpec) -> None: ...

    def status(self, spec: ServiceSpec) -> Status: ...


def service_root() -> Path:
    return Path(os.environ.get(ROOT_VARIABLE) or "/")
