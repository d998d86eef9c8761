"""podman with vfs storage, cgroupfs, file events and registries.conf all under one tmp folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers.tools import require_tool


class Podman:
    """`podman` with vfs storage, cgroupfs, file events and registries.conf all under one tmp folder."""

    def __init__(self, home: Path, runroot: Path, registry_host: str) -> None:
        self.binary = require_tool("podman")
        self.home = home
        self.runroot = runroot  # podman refuses a runroot longer than 50 characters
        for sub in ("root", "tmp", "xdg", "networks"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "auth.json").write_text("{}")  # podman refuses a REGISTRY_AUTH_FILE that is missing
        (home / "registries.conf").write_text(
            'unqualified-search-registries = []\n\n'
            f'[[registry]]\nlocation = "{registry_host}"\ninsecure = true\n')
        (home / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{runroot}"\ngraphroot = "{home / "root"}"\n')
        (home / "containers.conf").write_text(
            '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{home / "events.log"}"\n\n'
            # netavark would create /run/containers/networks whatever --network-config-dir says
            '[network]\nnetwork_backend = "cni"\n')
        self.env = {**os.environ,
                    "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"),
                    "CONTAINERS_STORAGE_CONF": str(home / "storage.conf"),
                    "CONTAINERS_CONF": str(home / "containers.conf"),
                    "XDG_RUNTIME_DIR": str(home / "xdg"),
                    # `podman login` credentials stay in this folder, and every command reads them.
                    "REGISTRY_AUTH_FILE": str(home / "auth.json"),
                    "TMPDIR": str(home / "tmp")}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [self.binary, "--storage-driver", "vfs", "--root", str(self.home / "root"),
                   "--runroot", str(self.runroot), "--tmpdir", str(self.home / "tmp"),
                   "--cgroup-manager=cgroupfs", "--events-backend=file",
                   "--network-config-dir", str(self.home / "networks"), *args]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120,
                                check=False)
        if check:
            assert result.returncode == 0, f"podman {' '.join(args)} failed:\n{result.stderr}"
        return result

    def login(self, registry_host: str, username: str, password: str,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        """`podman login` with the password on standard input, credentials kept in this folder."""
        command = [self.binary, "login", "--tls-verify=false", "-u", username, "--password-stdin",
                   registry_host]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120,
                                check=False, input=password)
        if check:
            assert result.returncode == 0, f"podman login failed:\n{result.stderr}"
        return result
