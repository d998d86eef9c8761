from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import PasswordHasher

from app import config
from app.config import ConfigError, load


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("REGISTRY__"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


# Identity passwords must be real Argon2 PHC hashes (the configuration checks them).
PHC_HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("secret")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_zero_config_defaults(tmp_path: Path) -> None:
    cfg = load()
    assert cfg.server.bind_address == "127.0.0.1" and cfg.server.port == 5000
    assert cfg.blob_store.fs is not None
    assert cfg.blob_store.fs.root_dir == tmp_path / "xdg-data" / "registry"
    assert cfg.zero_config_access
    assert cfg.global_.max_manifest_size == 4 * 1024 * 1024
    assert cfg.global_.gc.interval == 3600


def test_default_file_is_local_config_toml(tmp_path: Path) -> None:
    write(tmp_path / "config.toml", "[server]\nport = 6001\n")
    assert load().server.port == 6001


def test_user_config_folder_file(tmp_path: Path) -> None:
    folder = tmp_path / "xdg-config" / "registry"
    folder.mkdir(parents=True)
    write(folder / "config.toml", "[server]\nport = 6002\n")
    assert load().server.port == 6002


def test_files_merge_in_order(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.toml",
        '[server]\nport = 6000\nbind_address = "0.0.0.0"\n[global]\nimmutable_tags_exclusions = ["a", "b"]\n',
    )
    b = write(tmp_path / "b.toml", '[server]\nport = 7000\n[global]\nimmutable_tags_exclusions = ["c"]\n')
    cfg = load([a, b])
    assert cfg.server.port == 7000 and cfg.server.bind_address == "0.0.0.0"
    assert cfg.global_.immutable_tags_exclusions == ["c"]  # arrays replaced, not merged


def test_environment_overrides_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = write(tmp_path / "a.toml", "[server]\nport = 6000\n")
    monkeypatch.setenv("REGISTRY__SERVER__PORT", "6100")
    monkeypatch.setenv("REGISTRY__GLOBAL__MAX_MANIFEST_SIZE", "1MiB")
    monkeypatch.setenv("REGISTRY__GLOBAL__TRUSTED_PROXIES", '["10.0.0.0/8"]')
    cfg = load([a])
    assert cfg.server.port == 6100
    assert cfg.global_.max_manifest_size == 1024 * 1024
    assert cfg.global_.trusted_proxies == ["10.0.0.0/8"]


def test_sizes_and_durations_in_files(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.toml",
        '[server]\nstreaming_chunk_size = "2MiB"\nquery_timeout = "10m"\n[global.gc]\ninterval = "30m"\n',
    )
    cfg = load([a])
    assert cfg.server.streaming_chunk_size == 2 * 1024 * 1024
    assert cfg.server.query_timeout == 600 and cfg.global_.gc.interval == 1800


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    a = write(sub / "a.toml", '[blob_store.fs]\nroot_dir = "data"\n')
    fs = load([a]).blob_store.fs
    assert fs is not None and fs.root_dir == sub / "data"


def test_old_key_names_are_aliases(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.toml",
        '[storage.fs]\nroot_dir = "/srv/r"\n[identity.alice]\nusername = "alice"\n'
        f'password = "{PHC_HASH}"\n[lock_store.redis]\nurl = "redis://127.0.0.1:6379"\n',
    )
    cfg = load([a])
    assert cfg.blob_store.fs is not None and cfg.blob_store.fs.root_dir == Path("/srv/r")
    assert cfg.auth.identity["alice"].username == "alice"
    meta = cfg.effective_metadata_store.fs
    assert meta is not None and meta.redis is not None and meta.redis.url == "redis://127.0.0.1:6379"


def test_unknown_key_is_named_with_file(tmp_path: Path) -> None:
    a = write(tmp_path / "a.toml", "[server]\nprot = 5000\n")
    with pytest.raises(ConfigError) as caught:
        load([a])
    assert str(a) in str(caught.value) and "server.prot" in str(caught.value)
    assert "unknown key `prot`" in str(caught.value)


def test_bad_value_names_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY__SERVER__PORT", "many")
    with pytest.raises(ConfigError) as caught:
        load([])
    assert "environment variable REGISTRY__SERVER__PORT" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[server\nport = 1", "invalid TOML"),
        ('[global]\nmax_manifest_size = "huge"\n', "global.max_manifest_size"),
        (
            '[blob_store.fs]\nroot_dir = "/a"\n'
            '[blob_store.s3]\naccess_key_id = "a"\nsecret_key = "b"\nbucket = "c"\n',
            "exactly one",
        ),
        ('[repository."Bad Prefix"]\n', "not a valid repository name"),
        ("[server]\nport = 70000\n", "server.port"),
    ],
)
def test_invalid_files(tmp_path: Path, text: str, fragment: str) -> None:
    a = write(tmp_path / "a.toml", text)
    with pytest.raises(ConfigError) as caught:
        load([a])
    assert fragment in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load([tmp_path / "nope.toml"])


def test_configured_repositories_leave_zero_config(tmp_path: Path) -> None:
    a = write(tmp_path / "a.toml", '[repository."library"]\naccess_policy = { default_allow = true }\n')
    cfg = load([a])
    assert not cfg.zero_config_access
    assert cfg.repository["library"].access_policy is not None


def test_redacted_hides_secrets(tmp_path: Path) -> None:
    a = write(tmp_path / "a.toml", f'[auth.identity.bob]\nusername = "bob"\npassword = "{PHC_HASH}"\n')
    shown = config.redacted(load([a]))
    assert shown["auth"]["identity"]["bob"]["password"] == "***"
    assert shown["auth"]["identity"]["bob"]["username"] == "bob"
