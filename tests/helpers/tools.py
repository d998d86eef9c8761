"""Finding external programs: a missing tool fails the test with how to install it (never a skip)."""

from __future__ import annotations

import shutil

import pytest

INSTALL_HINTS = {
    "skopeo": "apt-get install -y skopeo",
    "podman": "apt-get install -y podman",
    "umoci": "apt-get install -y umoci",
    "docker-registry": "apt-get install -y docker-registry",
    "redis-server": "apt-get install -y redis-server",
    "containerd": "apt-get install -y containerd",
    "ctr": "apt-get install -y containerd",
    "dockerd": "apt-get install -y docker.io",
    "docker": "apt-get install -y docker.io",
    "systemd-analyze": "apt-get install -y systemd",
}


def require_tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if shutil.which(f"/usr/bin/{name}") else None)
    if path is None:
        pytest.fail(f"{name} is required by this test and was not found; install it with: "
                    f"{INSTALL_HINTS.get(name, 'your package manager')}", pytrace=False)
    return path
