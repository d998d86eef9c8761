"""What a registry that does not use a feature must not load: idle memory is a product target (about
2.5x CNCF distribution's). Basic identities (argon2-cffi), CEL rules (cel-python) and pull-through (the
upstream client, the FetchCoordinator) are imported and started only once the configuration uses them,
including when a hot reload adds them later; TLS and the token service never load cryptography
(~11 MiB) unless a token key file asks for asymmetric tokens; OpenTelemetry only with
`[observability.tracing]`.
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
    "cryptography",  # OIDC, [auth.token] key_file
    "jwt",  # OIDC, [auth.token] key_file
    "celpy",  # CEL rules
    "lark",
    "re2._re2",  # the CEL matches() function, at its first use
    "prometheus_client",  # the first counter increment or /metrics scrape (app/metrics.py)
    "tqdm",  # the progress bar of `registry scrub`
    "app.lifecycle.scrub",  # `registry scrub` (app/commands/scrub.py imports it when it runs)
    "redis",  # the Redis lock store and the replicas' shared state, only when configured
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
    "opentelemetry",  # [observability.tracing]: the SDK, the OTLP exporter, protobuf, requests
    "google.protobuf",
    "requests",
    "app.tracing.otel",
    "app.tracing.storage",
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
    config = load([Path(sys.argv[1])])
    if config.server.tls is not None:  # what `registry server` builds before listening
        from app.tls import ServerTLS
        ServerTLS(config.server.tls)
    from app import tracing
    tracing.start(config.observability.tracing)  # as serve() does
    registry = build_registry(config)
    await server._prepare_token_key(registry)
    build_app(registry)
    await registry.close()
    tracing.shutdown()

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""


def _storage(tmp_path: Path) -> str:
    return f'[blob_store.fs]\nroot_dir = "{(tmp_path / "data").as_posix()}"\n'


def _loaded(tmp_path: Path, text: str) -> set[str]:
    config = tmp_path / "config.toml"
    config.write_text(text)
    env = {**os.environ, "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _PROBE, str(config)], capture_output=True, text=True,
                            env=env, timeout=120, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_a_plain_configuration_loads_none_of_the_optional_features(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, "[server]\nport = 5055\n" + _storage(tmp_path))
    assert {"app.context", "app.actors.config_watcher", "app.commands.server"} <= loaded
    assert sorted(m for m in HEAVY if m in loaded) == []


def test_the_production_configuration_loads_no_cryptography(tmp_path: Path) -> None:
    """TLS, one identity (so the token service is on) and one rule: argon2 and cel-python load, but
    neither cryptography nor PyJWT (TLS files are checked with `ssl`, tokens are HS256 with `hmac`),
    nor re2 before a rule uses `matches()`, nor a policy with no rules any CEL at all."""
    from tests.helpers.tls import CertificateAuthority

    CertificateAuthority().issue_server().write(tmp_path / "tls.crt", tmp_path / "tls.key")
    hash_ = "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$0kGy0ErjSvQzI6c8lYqVfA"
    text = (f'[server]\nport = 5055\n[server.tls]\nserver_certificate_bundle = "{tmp_path / "tls.crt"}"\n'
            f'server_private_key = "{tmp_path / "tls.key"}"\n' + _storage(tmp_path)
            + f'[auth.identity.alice]\nusername = "alice"\npassword = "{hash_}"\n'
            + "[global.access_policy]\nrules = ['identity.username == \"alice\"']\n")
    loaded = _loaded(tmp_path, text)
    assert {"app.tls", "argon2", "celpy", "app.auth.tokens"} <= loaded
    assert sorted(m for m in ("cryptography", "jwt", "re2._re2", "regex") if m in loaded) == []
    no_rules = _loaded(tmp_path, _storage(tmp_path) + "[global.access_policy]\ndefault_allow = true\n")
    assert "celpy" not in no_rules and "lark" not in no_rules


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


def test_tracing_loads_opentelemetry_only_when_configured(tmp_path: Path) -> None:
    traced = _loaded(tmp_path, _storage(tmp_path) + '[observability.tracing]\nendpoint = "http://127.0.0.1:9"\n')
    assert {"opentelemetry.sdk.trace", "app.tracing.storage"} <= traced
