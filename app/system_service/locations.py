"""Where a service's configuration, data and logs live by default, per OS and scope.

A user service uses the folders `registry server` uses by itself (platformdirs' user folders), so a
user service and a manual run see the same registry. A system service uses the machine-wide ones:
platformdirs' site folders on macOS and Windows (`ProgramData`), and on Linux the folders systemd
manages for a service (`/etc/registry` as its ConfigurationDirectory, `/var/lib/registry` as its
StateDirectory, which is platformdirs' site state folder); platformdirs' Linux site config folder
(`/etc/xdg`) is for desktop defaults, and its site data folder is read-only under ProtectSystem.
On macOS and Windows a system service keeps its data in a `data` folder beside its configuration, so
the account it runs as can be given the data without the file that configures it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import platformdirs

from app.config import APP_NAME
from app.system_service import Scope


@dataclass(frozen=True)
class Locations:
    config_file: Path
    data_dir: Path
    log_dir: Path | None  # None: the service manager keeps the output (journald, the Event Log)


def default_locations(platform: str, scope: Scope) -> Locations:
    if platform == "darwin":
        from platformdirs.macos import MacOS

        mac = MacOS(APP_NAME, appauthor=False)  # pure path logic: also usable for tests on Linux
        if scope == "user":
            return Locations(Path(mac.user_config_dir) / "config.toml", Path(mac.user_data_dir),
                             Path(mac.user_log_dir))
        site = Path(mac.site_config_dir)
        return Locations(site / "config.toml", site / "data", Path(mac.site_log_dir))
    if platform == "win32":
        base = _program_data() / APP_NAME
        return Locations(base / "config.toml", base / "data", base / "logs")
    if scope == "user":
        return Locations(platformdirs.user_config_path(APP_NAME, appauthor=False) / "config.toml",
                         platformdirs.user_data_path(APP_NAME, appauthor=False), None)
    return Locations(Path("/etc") / APP_NAME / "config.toml",
                     platformdirs.site_state_path(APP_NAME, appauthor=False), None)


def _program_data() -> Path:
    if sys.platform == "win32":
        return Path(platformdirs.site_data_dir(appauthor=False))  # C:\ProgramData
    return Path(str(PureWindowsPath(os.environ.get("PROGRAMDATA", r"C:\ProgramData"))))


def server_command() -> list[str]:
    """How the service manager starts this registry: the frozen executable itself, or this Python
    with `-m app` (a checkout installed with pip). Absolute, but not resolved: a virtual
    environment's python is a symlink whose target would lose the environment."""
    executable = os.path.abspath(sys.executable)
    if getattr(sys, "frozen", False):
        return [executable]
    return [executable, "-m", "app"]
