"""app/reload.py: which keys apply live, which keep their running value until a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import Config
from app.reload import changed_sections, split_restart_keys


def config(**sections: Any) -> Config:
    base: dict[str, Any] = {"blob_store": {"fs": {"root_dir": "/srv/registry"}}}
    base.update(sections)
    return Config(**base)


def test_live_keys_are_applied_as_loaded() -> None:
    running = config()
    loaded = config(**{"global": {"max_manifest_size": "8MiB"},
                       "repository": {"team": {"access_policy": {"default_allow": True}}}})
    applied, kept = split_restart_keys(running, loaded)
    assert kept == []
    assert applied == loaded


def test_listener_keys_keep_their_running_values_and_the_rest_applies() -> None:
    running = config(server={"bind_address": "127.0.0.1", "port": 5000})
    loaded = config(server={"bind_address": "0.0.0.0", "port": 6000, "streaming_chunk_size": "2MiB"},
                    **{"global": {"max_manifest_size": 4096}})
    applied, kept = split_restart_keys(running, loaded)
    assert [k.key for k in kept] == ["server.bind_address", "server.port"]
    assert (applied.server.bind_address, applied.server.port) == ("127.0.0.1", 5000)
    assert applied.server.streaming_chunk_size == 2 * 1024 * 1024
    assert applied.global_.max_manifest_size == 4096


def test_storage_switch_needs_a_restart() -> None:
    running = config()
    loaded = config(blob_store={"s3": {"access_key_id": "a", "secret_key": "b", "bucket": "c"}})
    applied, kept = split_restart_keys(running, loaded)
    assert [k.key for k in kept] == ["blob_store"]
    assert applied.blob_store == running.blob_store


def test_tls_on_or_off_needs_a_restart_but_new_files_apply(tmp_path: Path) -> None:
    tls = {"server_certificate_bundle": str(tmp_path / "a.crt"),
           "server_private_key": str(tmp_path / "a.key")}
    plain = config()
    secure = config(server={"tls": tls})
    applied, kept = split_restart_keys(plain, secure)
    assert [k.key for k in kept] == ["server.tls"] and applied.server.tls is None
    applied, kept = split_restart_keys(secure, plain)
    assert [k.key for k in kept] == ["server.tls"] and applied.server.tls == secure.server.tls
    rotated = config(server={"tls": {**tls, "server_certificate_bundle": str(tmp_path / "b.crt"),
                                     "client_auth": "required", "client_ca_bundle": str(tmp_path / "ca")}})
    applied, kept = split_restart_keys(secure, rotated)
    assert kept == [] and applied.server.tls == rotated.server.tls


def test_tracing_needs_a_restart() -> None:
    running = config(observability={"tracing": {"endpoint": "http://otel:4318", "sampling_rate": 0.5}})
    for change in ({"sampling_rate": 0.1}, {"endpoint": "http://other:4318"}, {"service_name": "edge"}):
        loaded = config(observability={"tracing": {"endpoint": "http://otel:4318", "sampling_rate": 0.5,
                                                   **change}})
        applied, kept = split_restart_keys(running, loaded)
        assert [k.key for k in kept] == ["observability.tracing"], change
        assert applied.observability.tracing == running.observability.tracing
    applied, kept = split_restart_keys(running, config())  # switched off: also at the next start
    assert [k.key for k in kept] == ["observability.tracing"]


def test_changed_sections_names_top_level_keys() -> None:
    old = config()
    new = config(**{"global": {"max_manifest_size": 4096}}, repository={"x": {}})
    assert changed_sections(old, new) == ["global", "repository"]
    assert changed_sections(old, old) == []
