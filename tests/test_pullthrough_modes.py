"""Pull-through from a real upstream (CNCF distribution 2.8) in each auth mode: anonymous, htpasswd Basic,
and token auth (Docker Hub's flow, with a token server signing JWTs). skopeo pulls through the cache and
gets byte-identical images; containerd `?ns=` and cri-o path-style requests route to the repository."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers.distribution import DistributionProcess
from tests.helpers.interop import assert_oci_layout_has_image, copy, read_dir_manifest
from tests.helpers.oci import OCI_INDEX, Image, digest_of, make_image, make_index, random_layer
from tests.helpers.server import RegistryProcess
from tests.helpers.upstreams import Proxy, TokenServer, pull_through_config, push, write_htpasswd

USER, PASSWORD = "puller", "s3cret-pass"
ACCEPT = ", ".join([OCI_INDEX, "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])


@dataclass
class Upstream:
    registry: DistributionProcess
    session: requests.Session  # authenticated for pushes, whatever the mode
    credentials: dict[str, str]  # what the pull-through config needs
    tokens: TokenServer | None = None


def _bearer_session(tokens: TokenServer, scope: str) -> requests.Session:
    session = requests.Session()
    answer = session.get(f"{tokens.url}/token", params={"service": tokens.service, "scope": scope},
                         auth=(USER, PASSWORD), timeout=10)
    session.headers["Authorization"] = f"Bearer {answer.json()['token']}"
    return session


@pytest.fixture(params=["anonymous", "basic", "token"])
def upstream(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Upstream]:
    mode = request.param
    workdir = tmp_path / "upstream"
    workdir.mkdir()
    tokens: TokenServer | None = None
    auth: dict[str, Any] | None = None
    credentials: dict[str, str] = {}
    if mode == "basic":
        htpasswd = write_htpasswd(workdir / "htpasswd", USER, PASSWORD)
        auth = {"htpasswd": {"realm": "upstream", "path": str(htpasswd)}}
        credentials = {"username": USER, "password": PASSWORD}
    elif mode == "token":
        tokens = TokenServer(workdir, username=USER, password=PASSWORD)
        tokens.start()
        auth = tokens.distribution_auth()
        credentials = {"username": USER, "password": PASSWORD}
    registry = DistributionProcess(workdir, tmp_path / "upstream-data", auth=auth).start()
    session = requests.Session()
    if mode == "basic":
        session.auth = (USER, PASSWORD)
    elif tokens is not None:
        session = _bearer_session(tokens, "repository:team/app:pull,push")
    yield Upstream(registry, session, credentials, tokens)
    registry.stop()
    if tokens is not None:
        tokens.stop()


def _push(upstream: Upstream, name: str, image: Image, tag: str) -> None:
    push(upstream.session, upstream.registry.url, name, image, tag)


def test_skopeo_pulls_through_the_cache_byte_identical(
        upstream: Upstream, start_registry: Callable[..., RegistryProcess], tmp_path: Path) -> None:
    shared = random_layer(300_000, "shared")
    oci = make_image([shared, random_layer(500_000, "oci")])
    docker = make_image([shared, random_layer(200_000, "docker")], docker=True)
    _push(upstream, "team/app", oci, "1.0")
    _push(upstream, "team/app", docker, "docker")
    cache = start_registry(pull_through_config([{"url": upstream.registry.url, **upstream.credentials}]))

    out = tmp_path / "pulled"
    copy(f"docker://{cache.host}/cache/team/app:1.0", f"oci:{out}:1.0")
    assert_oci_layout_has_image(out, "1.0", oci)
    docker_out = tmp_path / "pulled-docker"
    copy(f"docker://{cache.host}/cache/team/app:docker", f"dir:{docker_out}")
    assert read_dir_manifest(docker_out) == docker.manifest
    for digest, blob in docker.blobs.items():
        assert (docker_out / digest.split(":", 1)[1]).read_bytes() == blob

    # Everything is now in the cache's own storage, in distribution's layout.
    data = cache.root / "docker/registry/v2"
    for digest in oci.blobs:
        hexdigest = digest.split(":", 1)[1]
        assert (data / "blobs/sha256" / hexdigest[:2] / hexdigest / "data").read_bytes() == oci.blobs[digest]
        assert (data / "repositories/cache/team/app/_layers/sha256" / hexdigest / "link").is_file()
    assert (data / "repositories/cache/team/app/_manifests/tags/1.0/current/link").read_text() == oci.digest

    # A second pull is answered from the cache: stop the upstream and pull by digest.
    upstream.registry.stop()
    again = tmp_path / "again"
    copy(f"docker://{cache.host}/cache/team/app@{oci.digest}", f"oci:{again}:x")
    assert_oci_layout_has_image(again, "x", oci)
    if upstream.tokens is not None:
        # One token per scope, then reused from the cache store.
        assert len(upstream.tokens.requests) <= 2, upstream.tokens.requests


@pytest.mark.parametrize("upstream", ["basic", "token"], indirect=True)
def test_wrong_credentials_are_an_upstream_error_not_a_404(
        upstream: Upstream, start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    _push(upstream, "team/app", image, "1.0")
    cache = start_registry(pull_through_config([{"url": upstream.registry.url, "username": USER,
                                                 "password": "wrong"}]))
    response = cache.get("/v2/cache/team/app/manifests/1.0", headers={"Accept": ACCEPT})
    assert response.status_code == 502, response.text
    assert upstream.registry.url in response.text


@pytest.fixture
def anonymous_upstream(tmp_path: Path) -> Iterator[DistributionProcess]:
    registry = DistributionProcess(tmp_path / "upstream", tmp_path / "upstream-data").start()
    yield registry
    registry.stop()


def test_containerd_ns_and_crio_path_requests_route_to_the_repository(
        anonymous_upstream: DistributionProcess, start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), anonymous_upstream.url, "library/alpine", image, "3.19")
    cache = start_registry(pull_through_config([{"url": anonymous_upstream.url}], prefix="docker.io",
                                               namespace="docker.io"))
    # containerd: the mirror gets the upstream path and `?ns=<host>`.
    response = cache.get("/v2/library/alpine/manifests/3.19?ns=docker.io", headers={"Accept": ACCEPT})
    assert response.status_code == 200, response.text
    assert response.content == image.manifest
    for digest, blob in image.blobs.items():
        got = cache.get(f"/v2/library/alpine/blobs/{digest}?ns=docker.io")
        assert got.status_code == 200 and got.content == blob
    # cri-o / podman path-style mirror (`location = "cache:5000/docker.io"`): the same cached image.
    response = cache.get("/v2/docker.io/library/alpine/manifests/3.19", headers={"Accept": ACCEPT})
    assert response.status_code == 200 and response.content == image.manifest
    # containerd with override_path (the prefix already in the path) is not prefixed twice.
    response = cache.get("/v2/docker.io/library/alpine/manifests/3.19?ns=docker.io",
                         headers={"Accept": ACCEPT})
    assert response.status_code == 200 and response.content == image.manifest
    # An `ns` no repository mirrors is a 404 (containerd falls back; tests/test_pullthrough_mirrors.py).
    assert cache.get("/v2/library/alpine/manifests/3.19?ns=quay.io").status_code == 404
    tags = cache.get("/v2/library/alpine/tags/list?ns=docker.io").json()
    assert tags == {"name": "docker.io/library/alpine", "tags": ["3.19"]}


def test_pushes_are_refused_deletes_evict_and_tags_merge(
        anonymous_upstream: DistributionProcess, start_registry: Callable[..., RegistryProcess]) -> None:
    session = requests.Session()
    first, second = make_image(), make_image()
    push(session, anonymous_upstream.url, "team/app", first, "1")
    push(session, anonymous_upstream.url, "team/app", second, "2")
    cache = start_registry(pull_through_config([{"url": anonymous_upstream.url}]))

    for method, path in [("POST", "/v2/cache/team/app/blobs/uploads/"),
                         ("POST", f"/v2/cache/team/app/blobs/uploads/?mount={digest_of(first.config)}"),
                         ("PUT", "/v2/cache/team/app/manifests/3"),
                         ("PATCH", "/v2/cache/team/app/blobs/uploads/0123"),
                         ("PUT", f"/v2/cache/team/app/blobs/uploads/0123?digest={digest_of(b'x')}")]:
        response = cache.request(method, path, data=first.manifest,
                                 headers={"Content-Type": first.media_type})
        assert response.status_code == 405, (method, path, response.text)
        error = response.json()["errors"][0]
        assert error["code"] == "UNSUPPORTED"
        assert "pull-through cache" in error["message"] and anonymous_upstream.url in error["message"]

    assert cache.get("/v2/cache/team/app/manifests/1", headers={"Accept": ACCEPT}).content == first.manifest
    # Tags: upstream's merged with the cached ones (the upstream's "2" was never pulled).
    assert cache.get("/v2/cache/team/app/tags/list").json()["tags"] == ["1", "2"]
    paged = cache.get("/v2/cache/team/app/tags/list?n=1")
    assert paged.json()["tags"] == ["1"] and 'rel="next"' in paged.headers["Link"]
    # A tag deleted upstream that was never pulled leaves the list with it.
    deleted = session.delete(f"{anonymous_upstream.url}/v2/team/app/manifests/{second.digest}")
    assert deleted.status_code == 202
    assert cache.get("/v2/cache/team/app/tags/list").json()["tags"] == ["1"]

    # Deleting evicts: the blob is unlinked and comes back from upstream on the next pull.
    layer = digest_of(first.layers[0])
    assert cache.get(f"/v2/cache/team/app/blobs/{layer}").status_code == 200
    assert cache.delete(f"/v2/cache/team/app/blobs/{layer}").status_code == 202
    assert cache.get(f"/v2/cache/team/app/blobs/{layer}").content == first.layers[0]
    assert cache.delete("/v2/cache/team/app/manifests/1").status_code == 202
    assert cache.get("/v2/cache/team/app/manifests/1", headers={"Accept": ACCEPT}).content == first.manifest


def test_index_and_children_by_digest(anonymous_upstream: DistributionProcess,
                                      start_registry: Callable[..., RegistryProcess], tmp_path: Path) -> None:
    session = requests.Session()
    amd, arm = make_image(), make_image(architecture="arm64")
    for image in (amd, arm):
        push(session, anonymous_upstream.url, "team/multi", image)
    index = make_index([amd, arm], platforms=[{"architecture": "amd64", "os": "linux"},
                                               {"architecture": "arm64", "os": "linux"}])
    assert session.put(f"{anonymous_upstream.url}/v2/team/multi/manifests/v1", data=index,
                       headers={"Content-Type": OCI_INDEX}).status_code == 201
    cache = start_registry(pull_through_config([{"url": anonymous_upstream.url}]))
    out = tmp_path / "multi"
    copy(f"docker://{cache.host}/cache/team/multi:v1", f"oci:{out}:v1", "--all")
    got = cache.get("/v2/cache/team/multi/manifests/v1", headers={"Accept": ACCEPT})
    assert got.content == index and got.headers["Content-Type"] == OCI_INDEX
    assert got.headers["Docker-Content-Digest"] == digest_of(index)
    for image in (amd, arm):
        assert cache.get(f"/v2/cache/team/multi/manifests/{image.digest}").content == image.manifest
    metrics = cache.get("/metrics").text
    assert 'registry_pull_through_misses_total{repository="cache"}' in metrics
    assert 'registry_pull_through_upstream_bytes_total{repository="cache"}' in metrics


def test_cdn_redirects_are_followed_without_forwarding_credentials(
        tmp_path: Path, start_registry: Callable[..., RegistryProcess]) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", USER, PASSWORD)
    data = tmp_path / "upstream-data"
    registry = DistributionProcess(tmp_path / "upstream", data,
                                   auth={"htpasswd": {"realm": "upstream", "path": str(htpasswd)}}).start()
    # The "CDN": another host serving the same bytes without credentials (distribution on the same data).
    cdn_backend = DistributionProcess(tmp_path / "cdn", data).start()
    cdn = Proxy(cdn_backend.url)
    front = Proxy(registry.url)
    looping = Proxy(registry.url)
    try:
        cdn.start()
        front.redirect_blobs_to = cdn.url
        front.start()
        looping.redirect_blobs_to = looping.url  # a redirect loop
        looping.start()
        session = requests.Session()
        session.auth = (USER, PASSWORD)
        image = make_image()
        push(session, registry.url, "team/app", image, "1")
        credentials = {"username": USER, "password": PASSWORD}
        cache = start_registry(
            pull_through_config([{"url": front.url, **credentials}])
            + pull_through_config([{"url": looping.url, "max_redirect": 3, **credentials}], prefix="loop",
                                open_globally=False))
        # The manifest first (as clients do): the upstream's 401 challenge says Basic, so the blob GET
        # carries credentials from its first request on.
        assert cache.get("/v2/cache/team/app/manifests/1").content == image.manifest
        layer = digest_of(image.layers[0])
        response = cache.get(f"/v2/cache/team/app/blobs/{layer}")
        assert response.status_code == 200 and response.content == image.layers[0]
        path = f"/v2/team/app/blobs/{layer}"
        assert front.get_count(path) == 1 and cdn.get_count(path) == 1
        # The Authorization meant for the registry host was not sent to the CDN host.
        assert cdn.seen_authorization[path] == [None]
        assert all(value and value.startswith("Basic ") for value in front.seen_authorization[path])

        config = digest_of(image.config)  # not cached yet
        response = cache.get(f"/v2/loop/team/app/blobs/{config}")
        assert response.status_code == 502
        assert "more than 3 redirects" in response.json()["errors"][0]["message"]
        assert looping.get_count(f"/v2/team/app/blobs/{config}") == 4  # the request and 3 redirects
    finally:
        for proxy in (front, cdn, looping):
            proxy.stop()
        cdn_backend.stop()
        registry.stop()
