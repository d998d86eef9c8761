"""Mirror routing and mirror-any-registry mode without a network: registry hosts in names, containerd's
`?ns=` rules, Docker Hub's naming, the derived upstreams (cached, bounded, kept by the pool across
reloads) and the configuration keys, including REGISTRY_UPSTREAM_CREDENTIALS."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app import errors, registry_hosts
from app.config import Config, ConfigError, RepositoryConfig, UpstreamConfig, load, redacted
from app.http.mirrors import route_for_ns
from app.http.router import Route, resolve
from app.services.pull_through import PullThrough
from app.upstream.any_registry import DerivedUpstreams, derive


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("REGISTRY__") or name == "REGISTRY_UPSTREAM_CREDENTIALS":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- registry hosts in names -------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "canonical", "component"), [
    ("ghcr.io", "ghcr.io", "ghcr.io"),
    ("Registry.Example.COM", "registry.example.com", "registry.example.com"),
    ("127.0.0.1:5000", "127.0.0.1:5000", "127.0.0.1__5000"),
    ("localhost:05000", "localhost:5000", "localhost__5000"),
    ("index.docker.io", "docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io", "docker.io"),
])
def test_hosts_are_canonical_and_encode_into_one_name_component(value: str, canonical: str,
                                                                component: str) -> None:
    assert registry_hosts.parse_host(value) == canonical
    assert registry_hosts.encode_host(canonical) == component
    assert registry_hosts.decode_host(component) == canonical
    # The encoded host is a valid repository name component (no `:`).
    assert resolve("GET", f"/v2/mirror/{component}/img/manifests/1").namespace == f"mirror/{component}/img"


@pytest.mark.parametrize("value", ["[::1]:5000", "::1", "host:0", "host:65536", "host:x", "my_host",
                                   "-bad.example", "a..b", "", "host:5000:1"])
def test_what_is_not_a_registry_host(value: str) -> None:
    with pytest.raises(ValueError, match=r"registry host|port"):
        registry_hosts.parse_host(value)
    assert registry_hosts.decode_host(value.replace(":", "__")) is None


def test_docker_hub_naming() -> None:
    assert registry_hosts.default_url("docker.io") == "https://registry-1.docker.io"
    assert registry_hosts.default_url("quay.io") == "https://quay.io"
    assert registry_hosts.default_url("127.0.0.1:5000") == "https://127.0.0.1:5000"
    assert registry_hosts.remote_name("docker.io", "alpine") == "library/alpine"
    assert registry_hosts.remote_name("docker.io", "bitnami/redis") == "bitnami/redis"
    assert registry_hosts.remote_name("quay.io", "alpine") == "alpine"


# --- ?ns= routing ------------------------------------------------------------------------------------
def repositories(**repos: dict[str, object]) -> dict[str, RepositoryConfig]:
    return {prefix.replace("_", "."): RepositoryConfig(**settings) for prefix, settings in repos.items()}


def route(path: str, method: str = "GET") -> Route:
    return resolve(method, path)


MIRROR_ANY = {"mirror_any_registry": True}
DOCKER_HUB = {"namespace": "docker.io", "upstream": [{"url": "https://registry-1.docker.io"}]}


def test_ns_of_a_repository_namespace_is_served_below_its_prefix() -> None:
    repos = repositories(hub=DOCKER_HUB)
    got = route_for_ns(route("/v2/library/alpine/manifests/3"), "Docker.IO", "cache:5000", repos)
    assert got.namespace == "hub/library/alpine" and got.reference == "3"
    # override_path (the prefix already in the path): not prefixed twice.
    got = route_for_ns(route("/v2/hub/library/alpine/manifests/3"), "docker.io", "cache:5000", repos)
    assert got.namespace == "hub/library/alpine"


@pytest.mark.parametrize(("path", "method", "code"), [
    ("/v2/library/alpine/manifests/latest", "GET", "MANIFEST_UNKNOWN"),
    ("/v2/library/alpine/manifests/latest", "HEAD", "MANIFEST_UNKNOWN"),
    (f"/v2/library/alpine/blobs/sha256:{'a' * 64}", "GET", "BLOB_UNKNOWN"),
    ("/v2/library/alpine/tags/list", "GET", "NAME_UNKNOWN"),
    ("/v2/library/alpine/blobs/uploads/", "POST", "NAME_UNKNOWN"),
])
def test_an_ns_nobody_claims_is_a_404_never_the_local_namespace(path: str, method: str, code: str) -> None:
    repos = repositories(library={"access_policy": {"default_allow": True}}, hub=DOCKER_HUB)
    with pytest.raises(errors.RegistryError) as raised:
        route_for_ns(route(path, method), "quay.io", "cache:5000", repos)
    assert raised.value.status == 404 and raised.value.code == code
    assert "quay.io" in raised.value.message


def test_an_ns_naming_this_registry_is_a_local_request() -> None:
    local = route("/v2/library/alpine/manifests/latest")
    assert route_for_ns(local, "Cache.Internal:5000", "cache.internal:5000", repositories(m=MIRROR_ANY)) \
        is local
    assert route_for_ns(local, None, "cache.internal:5000", {}) is local
    assert route_for_ns(local, "", "cache.internal:5000", {}) is local
    catalog = route("/v2/_catalog")
    assert route_for_ns(catalog, "quay.io", "cache:5000", {}) is catalog  # no name to route


def test_mirror_any_registry_takes_every_unclaimed_host() -> None:
    repos = repositories(mirror=MIRROR_ANY)
    got = route_for_ns(route("/v2/team/img/manifests/1"), "127.0.0.1:5000", "cache:5000", repos)
    assert got.namespace == "mirror/127.0.0.1__5000/team/img"
    got = route_for_ns(route("/v2/library/alpine/manifests/1"), "index.docker.io", "cache:5000", repos)
    assert got.namespace == "mirror/docker.io/library/alpine"
    # override_path with the host already in the path.
    got = route_for_ns(route("/v2/mirror/docker.io/library/alpine/manifests/1"), "docker.io", "c", repos)
    assert got.namespace == "mirror/docker.io/library/alpine"
    # An ns that is no host cannot be mirrored: 404 as for any unclaimed ns.
    with pytest.raises(errors.RegistryError) as raised:
        route_for_ns(route("/v2/img/manifests/1"), "[::1]:5000", "cache:5000", repos)
    assert raised.value.code == "MANIFEST_UNKNOWN"


def test_a_repository_namespace_wins_over_mirror_any_registry() -> None:
    # Whatever the order in the file.
    for repos in (repositories(mirror=MIRROR_ANY, hub=DOCKER_HUB),
                  repositories(hub=DOCKER_HUB, mirror=MIRROR_ANY)):
        got = route_for_ns(route("/v2/library/alpine/manifests/1"), "docker.io", "cache:5000", repos)
        assert got.namespace == "hub/library/alpine"
        got = route_for_ns(route("/v2/org/app/manifests/1"), "ghcr.io", "cache:5000", repos)
        assert got.namespace == "mirror/ghcr.io/org/app"


# --- derived upstreams -------------------------------------------------------------------------------
def mirror_repository(**hosts: dict[str, object]) -> RepositoryConfig:
    return RepositoryConfig(mirror_any_registry=True, mirror_hosts=hosts)


def pull_through() -> PullThrough:
    # Only the routing to mirrors is exercised here: no storage, actors or services are touched.
    return PullThrough(None, None, None, None, None, None)  # type: ignore[arg-type]


def test_docker_hub_names_map_to_registry_1_and_library() -> None:
    config = Config(repository={"mirror": mirror_repository()})
    service = pull_through()
    for namespace, remote in [("mirror/docker.io/alpine", "library/alpine"),
                              ("mirror/docker.io/bitnami/redis", "bitnami/redis"),
                              ("mirror/registry-1.docker.io/alpine", "library/alpine"),
                              ("mirror/index.docker.io/library/alpine", "library/alpine")]:
        mirror = service.mirror(config, namespace)
        assert mirror is not None and mirror.prefix == "mirror"
        assert [u.url for u in mirror.upstreams] == ["https://registry-1.docker.io"]
        assert mirror.remote_name(namespace) == remote
    ghcr = service.mirror(config, "mirror/ghcr.io/org/app")
    assert ghcr is not None and ghcr.upstreams[0].url == "https://ghcr.io"
    assert ghcr.remote_name("mirror/ghcr.io/org/app") == "org/app"
    local = service.mirror(config, "mirror/127.0.0.1__5000/alpine")
    assert local is not None and local.upstreams[0].url == "https://127.0.0.1:5000"
    assert local.remote_name("mirror/127.0.0.1__5000/alpine") == "alpine"


@pytest.mark.parametrize("namespace", ["mirror", "mirror/docker.io", "mirror/not_a_host/app"])
def test_a_name_without_a_registry_image_is_read_only_and_name_unknown(namespace: str) -> None:
    config = Config(repository={"mirror": mirror_repository()})
    mirror = pull_through().mirror(config, namespace)
    assert mirror is not None  # still the mirror: never a writable local namespace
    with pytest.raises(errors.RegistryError) as raised:
        mirror.remote_name(namespace)
    assert raised.value.code == "NAME_UNKNOWN" and "mirror/<registry host>/<image>" in raised.value.message


def test_per_host_settings_and_defaults(tmp_path: Path) -> None:
    repository = mirror_repository(**{"registry.example.com": {
        "url": "http://10.0.0.1:8080", "username": "u", "password": "p", "user_agent": "containerd/1.6.8",
        "manifest_check_interval": 0, "max_redirect": 1}})
    derived = derive(repository, "registry.example.com")
    assert derived == UpstreamConfig(url="http://10.0.0.1:8080", username="u", password="p",
                                     user_agent="containerd/1.6.8", manifest_check_interval=0, max_redirect=1)
    assert derive(repository, "quay.io") == UpstreamConfig(url="https://quay.io")
    only_credentials = mirror_repository(**{"docker.io": {"username": "me", "password": "pat"}})
    assert derive(only_credentials, "docker.io") == UpstreamConfig(
        url="https://registry-1.docker.io", username="me", password="pat")


def test_derived_upstreams_are_cached_per_host_and_bounded() -> None:
    repository = mirror_repository()
    table = DerivedUpstreams(limit=2)
    first, evicted = table.get("mirror", repository, "a.example")
    assert not evicted and table.get("mirror", repository, "a.example") == (first, False)
    assert table.get("mirror", repository, "a.example")[0] is first  # not rebuilt
    table.get("mirror", repository, "b.example")
    table.get("mirror", repository, "a.example")  # used again: b is now the least recently used
    _, evicted = table.get("mirror", repository, "c.example")
    assert evicted
    assert [c.url for c in table.configs()] == ["https://a.example", "https://c.example"]
    # A reload re-derives the hosts in use from the new settings, and forgets removed repositories.
    table.adopt({"mirror": mirror_repository(**{"a.example": {"url": "http://a.internal"}})})
    assert [c.url for c in table.configs()] == ["http://a.internal", "https://c.example"]
    table.adopt({"mirror": RepositoryConfig()})
    assert table.configs() == []


async def test_the_pool_keeps_the_clients_of_derived_hosts_across_reloads_and_drops_evicted_ones() -> None:
    service = pull_through()
    service.derived.limit = 2
    config = Config(repository={"mirror": mirror_repository(), "other": RepositoryConfig(
        upstream=[{"url": "https://registry.example"}])})

    def client_of(cfg: Config, namespace: str) -> object:
        mirror = service.mirror(cfg, namespace)
        assert mirror is not None
        return service.pool.client(mirror.upstreams[0])

    async def settle() -> None:
        for task in list(service._housekeeping):
            await task

    a = client_of(config, "mirror/a.example/img")
    await settle()
    # A reload (a new configuration object, the same repositories): the derived host's client stays.
    reloaded = Config(**config.model_dump(by_alias=True))
    assert client_of(reloaded, "mirror/a.example/img") is a
    await settle()
    assert a in service.pool._clients.values()
    # Two more hosts with room for two: a (least recently used) is evicted and its client retired.
    client_of(reloaded, "mirror/b.example/img")
    client_of(reloaded, "mirror/c.example/img")
    await settle()
    assert a not in service.pool._clients.values()
    assert len(service.pool._clients) == 2
    await service.pool.close()


# --- configuration -----------------------------------------------------------------------------------
def test_mirror_any_registry_configuration(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", """
[repository."mirror"]
mirror_any_registry = true
access_policy = { default_allow = true }
[repository."mirror".mirror_hosts."Registry.Example.com:05000"]
url = "http://registry.example.com:5000"
server_ca_bundle = "ca.pem"
user_agent = "containerd/1.6.8"
read_timeout = "1m"
[repository."mirror".mirror_hosts."index.docker.io"]
username = "me"
password = "pat"
""")
    repository = load([file]).repository["mirror"]
    assert repository.pulls_through and repository.mirror_any_registry
    assert set(repository.mirror_hosts) == {"registry.example.com:5000", "docker.io"}
    host = repository.mirror_hosts["registry.example.com:5000"]
    assert host.server_ca_bundle == tmp_path / "ca.pem" and host.read_timeout == 60
    assert host.user_agent == "containerd/1.6.8"


@pytest.mark.parametrize(("text", "fragment"), [
    ('mirror_any_registry = true\n[[repository."m".upstream]]\nurl = "https://x.example"',
     "`mirror_any_registry` and `upstream` are mutually exclusive"),
    ('mirror_any_registry = true\nnamespace = "docker.io"', "`namespace` does not apply"),
    ('[repository."m".mirror_hosts."x.example"]\nurl = "https://x.example"',
     "`mirror_hosts` needs `mirror_any_registry = true`"),
    ('mirror_any_registry = true\n[repository."m".mirror_hosts."a_b"]\nurl = "https://x"',
     "is not a registry host"),
    ('mirror_any_registry = true\n[repository."m".mirror_hosts."docker.io"]\n'
     '[repository."m".mirror_hosts."index.docker.io"]', "names the same registry host"),
    ('[[repository."m".upstream]]\nurl = "https://x.example"\nuser_agent = "a\\r\\nX-Evil: 1"',
     "user_agent: Value error, must be a non-empty header value"),
])
def test_mirror_configuration_errors_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    file = write(tmp_path / "c.toml", f'[repository."m"]\n{text}\n')
    with pytest.raises(ConfigError) as raised:
        load([file])
    assert fragment in str(raised.value) and "c.toml: repository.m" in str(raised.value)


def test_an_upstream_takes_a_user_agent(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", '[repository."m"]\n[[repository."m".upstream]]\n'
                                      'url = "https://x.example"\nuser_agent = "containerd/1.6.8"\n')
    assert load([file]).repository["m"].upstream[0].user_agent == "containerd/1.6.8"


MIRROR_FILE = """
[repository."mirror"]
mirror_any_registry = true
[repository."mirror".mirror_hosts."registry.example.com"]
url = "http://registry.example.com"
username = "from-file"
password = "file-secret"
"""


def test_credentials_from_the_environment_override_the_file(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_UPSTREAM_CREDENTIALS", json.dumps({
        "Registry.Example.com": {"username": "from-env", "password": "env-secret"},
        "docker.io": {"username": "hub-user", "password": "hub-secret"}}))
    config = load([write(tmp_path / "c.toml", MIRROR_FILE)])
    hosts = config.repository["mirror"].mirror_hosts
    example = hosts["registry.example.com"]
    assert (example.url, example.username, example.password) == (
        "http://registry.example.com", "from-env", "env-secret")
    assert (hosts["docker.io"].username, hosts["docker.io"].password) == ("hub-user", "hub-secret")
    assert derive(config.repository["mirror"], "docker.io").password == "hub-secret"
    shown = json.dumps(redacted(config))
    assert "env-secret" not in shown and "hub-secret" not in shown and "file-secret" not in shown


@pytest.mark.parametrize(("value", "fragment"), [
    ('{"docker.io": {"username": "u", "password": "leaked-secret"', "not valid JSON"),
    ('["leaked-secret"]', "expected a JSON object"),
    ('{"docker.io": {"username": "u", "password": 7}}', "the entry for docker.io must be"),
    ('{"docker.io": {"username": "u", "password": "leaked-secret", "token": "x"}}', "must be"),
    ('{"a_b": {"username": "u", "password": "leaked-secret"}}', "is not a registry host"),
])
def test_a_malformed_credentials_variable_is_a_start_up_error_without_its_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, fragment: str) -> None:
    monkeypatch.setenv("REGISTRY_UPSTREAM_CREDENTIALS", value)
    with pytest.raises(ConfigError) as raised:
        load([write(tmp_path / "c.toml", MIRROR_FILE)])
    message = str(raised.value)
    assert "REGISTRY_UPSTREAM_CREDENTIALS" in message and fragment in message
    assert "leaked-secret" not in message
