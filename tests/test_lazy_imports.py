"""What a registry that does not use a feature must not load: idle memory is a product target (about
2.5x CNCF distribution's). TLS (cryptography), Basic identities (argon2-cffi) and pull-through (the
upstream client, the FetchCoordinator) are imported and started only once the configuration uses them,
including when a hot reload adds them later.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from app.config import load
from app.context import build_registry
from app.services.blobs import BlobService
from app.services.manifests import ManifestService
from app.services.uploads import UploadService

# Imported by the feature that needs them, never by a registry that does not use that feature.
HEAVY = [
    "cryptography",  # [server.tls], OIDC
    "prometheus_client",  # the first counter increment or /metrics scrape (app/metrics.py)
    "argon2",  # [auth.identity.*]
    "_cffi_backend",
    "app.tls",
    "app.services.pull_through",
    "app.services.pull_blobs",
    "app.services.pull_manifests",
    "app.services.flights",
    "app.services.remote",
    "app.http.remote",
    "app.upstream.pool",
    "app.upstream.client",
    "app.upstream.metrics",
    "app.actors.fetch_coordinator",
]

_PROBE = """
import asyncio, json, sys
from pathlib import Path
from app.commands import server
from app.actors import config_watcher
from app.config import load
from app.context import build_registry
from app.http.app import build_app

async def main():
    registry = build_registry(load([Path(sys.argv[1])]))
    build_app(registry)
    await registry.close()

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""


def _storage(tmp_path: Path) -> str:
    return f'[blob_store.fs]\nroot_dir = "{(tmp_path / "data").as_posix()}"\n'


def test_a_plain_configuration_loads_none_of_the_optional_features(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[server]\nport = 5055\n" + _storage(tmp_path))
    env = {**os.environ, "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _PROBE, str(config)], capture_output=True, text=True,
                            env=env, timeout=120, check=True)
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert {"app.context", "app.actors.config_watcher", "app.commands.server"} <= loaded
    assert sorted(m for m in HEAVY if m in loaded) == []


def _upstream(tmp_path: Path) -> str:
    return (_storage(tmp_path) + '[repository."cache"]\n'
            '[[repository."cache".upstream]]\nurl = "http://127.0.0.1:9"\n')


async def test_pull_through_is_built_when_a_reload_adds_upstreams(tmp_path: Path) -> None:
    plain, mirrored = tmp_path / "plain.toml", tmp_path / "mirrored.toml"
    plain.write_text(_storage(tmp_path))
    mirrored.write_text(_upstream(tmp_path))
    registry = build_registry(load([plain]))
    try:
        assert registry.pull_through is None and registry.actors.fetches is None
        assert registry.blobs_for("cache/app") is registry.blobs
        assert registry.manifests_for("cache/app") is registry.manifests
        assert registry.uploads_for("cache/app") is registry.uploads

        registry.reconfigure(load([mirrored]))
        await asyncio.sleep(0)  # the old configuration's closers start waiting (see _close_later)
        assert registry.pull_through is not None and registry.actors.fetches is not None
        assert not isinstance(registry.blobs_for("cache/app"), BlobService)
        assert not isinstance(registry.manifests_for("cache/app"), ManifestService)
        assert not isinstance(registry.uploads_for("cache/app"), UploadService)
        assert registry.blobs_for("other/app") is registry.blobs

        # Upstreams removed again: the pull-through services stay built but serve no namespace.
        registry.reconfigure(load([plain]))
        await asyncio.sleep(0)
        assert registry.blobs_for("cache/app") is registry.blobs
        assert registry.uploads_for("cache/app") is registry.uploads
    finally:
        await registry.close()


async def test_pull_through_is_built_at_start_when_configured(tmp_path: Path) -> None:
    mirrored = tmp_path / "mirrored.toml"
    mirrored.write_text(_upstream(tmp_path))
    registry = build_registry(load([mirrored]))
    try:
        assert registry.pull_through is not None and registry.actors.fetches is not None
        assert not isinstance(registry.blobs_for("cache/app"), BlobService)
    finally:
        await registry.close()
