"""packaging/kubernetes/ stays true to the registry: its configuration loads (with the Secret's
environment overrides), and the Deployment probes the endpoints the server answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import load
from tests.helpers.server import REPO_ROOT

MANIFESTS = REPO_ROOT / "packaging" / "kubernetes" / "registry.yaml"


def _documents() -> dict[tuple[str, str], dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def test_the_configuration_map_is_a_valid_replica_configuration(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    documents = _documents()
    config_file = tmp_path / "config.toml"
    config_file.write_text(documents["ConfigMap", "registry-config"]["data"]["config.toml"])
    for key, value in documents["Secret", "registry-s3"]["stringData"].items():
        monkeypatch.setenv(key, value)
    config = load([config_file])
    assert config.blob_store.s3 is not None and config.blob_store.s3.access_key_id == "change-me"
    assert config.metadata_store is not None and config.metadata_store.s3 is not None
    assert config.metadata_store.s3.redis is not None  # locks across replicas
    assert config.cache.redis is not None  # the replicas' shared state
    from app.coherence import shared_redis
    from app.locks import lock_store_kind

    assert lock_store_kind(config.blob_store, config.metadata_store) == "redis"
    assert shared_redis(config) is not None


def test_the_deployment_probes_what_the_server_answers() -> None:
    documents = _documents()
    deployment = documents["Deployment", "registry"]
    assert deployment["spec"]["replicas"] >= 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["args"][-1] == "server"
    service = documents["Service", "registry"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    redis_url = documents["ConfigMap", "registry-config"]["data"]["config.toml"].split("redis://")[1]
    assert redis_url.startswith(documents["Service", "registry-redis"]["metadata"]["name"] + ":6379")


def test_a_lock_store_on_the_blob_store_is_one_store(tmp_path: Path) -> None:
    """`[metadata_store.s3.redis]` alone: the metadata store is the blob store (one S3 client), with
    Redis for its locks."""
    from app.storage import open_stores

    config_file = tmp_path / "config.toml"
    config_file.write_text('[blob_store.s3]\nbucket = "b"\naccess_key_id = "k"\nsecret_key = "s"\n'
                           '[metadata_store.s3.redis]\nurl = "redis://127.0.0.1:1/0"\n')
    config = load([config_file])
    assert config.metadata_store is not None and config.metadata_store.s3 is not None
    assert config.metadata_store.s3.bucket == "b" and config.metadata_store.s3.redis is not None
    storage = open_stores(config.blob_store, config.metadata_store)
    assert type(storage).__name__ == "S3Storage"
