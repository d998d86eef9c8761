"""Pull-through manifests over time, against a real upstream: failover between upstreams, stale-if-error,
mutable tags revalidated after manifest_check_interval, immutable tags and digests never asked again,
and errors that name the upstream instead of a misleading 404."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers.distribution import DistributionProcess
from tests.helpers.oci import digest_of, make_image
from tests.helpers.server import RegistryProcess, free_port
from tests.helpers.upstreams import (
    Proxy,
    pull_through_config,
    pull_through_counters,
    push,
)

ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[DistributionProcess]:
    registry = DistributionProcess(tmp_path / "upstream", tmp_path / "upstream-data").start()
    yield registry
    registry.stop()


@pytest.fixture
def proxy(upstream: DistributionProcess) -> Iterator[Proxy]:
    counting = Proxy(upstream.url)
    counting.start()
    yield counting
    counting.stop()


def manifest(cache: RegistryProcess, reference: str, name: str = "cache/team/app") -> requests.Response:
    return cache.get(f"/v2/{name}/manifests/{reference}", headers={"Accept": ACCEPT})


def test_failover_to_the_next_upstream(upstream: DistributionProcess, tmp_path: Path,
                                       start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), upstream.url, "team/app", image, "1")
    broken = Proxy(upstream.url, fail_with=503)
    broken.start()
    try:
        closed_port = f"http://127.0.0.1:{free_port()}"
        cache = start_registry(pull_through_config(
            [{"url": closed_port, "connect_timeout": 2}, {"url": broken.url}, {"url": upstream.url}]))
        assert manifest(cache, "1").content == image.manifest
        for digest, blob in image.blobs.items():
            assert cache.get(f"/v2/cache/team/app/blobs/{digest}").content == blob
        assert broken.counts[("GET", "/v2/team/app/manifests/1")] == 1
        counters = pull_through_counters(cache.get("/metrics").text)
        # Each request tried the closed port and the 503 first: two errors per upstream request.
        assert counters["upstream_errors"] == 2 * (1 + len(image.blobs))
    finally:
        broken.stop()


def test_no_upstream_and_no_copy_is_an_error_naming_the_upstream(
        start_registry: Callable[..., RegistryProcess]) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    cache = start_registry(pull_through_config([{"url": down}]))
    response = manifest(cache, "latest")
    assert response.status_code == 502
    error = response.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE" and down in error["message"]
    blob = cache.get(f"/v2/cache/team/app/blobs/{digest_of(b'x')}")
    assert blob.status_code == 502 and down in blob.text
    tags = cache.get("/v2/cache/team/app/tags/list")
    assert tags.status_code == 502 and down in tags.text


def test_stale_if_error_serves_the_cached_copy(upstream: DistributionProcess,
                                               start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), upstream.url, "team/app", image, "latest")
    # Interval 0: every pull of the tag asks upstream first.
    cache = start_registry(pull_through_config([{"url": upstream.url, "manifest_check_interval": 0}]))
    assert manifest(cache, "latest").content == image.manifest
    for digest in image.blobs:
        assert cache.get(f"/v2/cache/team/app/blobs/{digest}").status_code == 200

    upstream.stop()
    again = manifest(cache, "latest")
    assert again.status_code == 200 and again.content == image.manifest
    assert again.headers["Docker-Content-Digest"] == image.digest
    for digest, blob in image.blobs.items():
        assert cache.get(f"/v2/cache/team/app/blobs/{digest}").content == blob
    assert cache.get("/v2/cache/team/app/tags/list").json()["tags"] == ["latest"]
    assert "stale-if-error" in cache.logs()
    # What was never cached cannot be served: an error naming the upstream, not a 404.
    other = manifest(cache, "other")
    assert other.status_code == 502 and upstream.url in other.text


def test_a_mutable_tag_moved_upstream_is_seen_after_the_check_interval(
        upstream: DistributionProcess, proxy: Proxy, start_registry: Callable[..., RegistryProcess]) -> None:
    first, second = make_image(), make_image()
    session = requests.Session()
    push(session, upstream.url, "team/app", first, "latest")
    cache = start_registry(pull_through_config([{"url": proxy.url, "manifest_check_interval": 2}]))
    assert manifest(cache, "latest").headers["Docker-Content-Digest"] == first.digest

    push(session, upstream.url, "team/app", second, "latest")
    # Within the interval: the cached copy, without asking upstream.
    assert manifest(cache, "latest").headers["Docker-Content-Digest"] == first.digest
    assert proxy.counts[("HEAD", "/v2/team/app/manifests/latest")] == 0
    time.sleep(2.2)
    moved = manifest(cache, "latest")
    assert moved.headers["Docker-Content-Digest"] == second.digest and moved.content == second.manifest
    assert proxy.counts[("HEAD", "/v2/team/app/manifests/latest")] == 1
    assert proxy.get_count("/v2/team/app/manifests/latest") == 2
    # Unchanged after the next interval: one HEAD, no GET.
    time.sleep(2.2)
    assert manifest(cache, "latest").headers["Docker-Content-Digest"] == second.digest
    assert proxy.counts[("HEAD", "/v2/team/app/manifests/latest")] == 2
    assert proxy.get_count("/v2/team/app/manifests/latest") == 2
    # The old manifest stays reachable by digest, from the cache.
    assert manifest(cache, first.digest).content == first.manifest
    assert proxy.get_count(f"/v2/team/app/manifests/{first.digest}") == 0


def test_digests_and_immutable_tags_are_never_revalidated(
        upstream: DistributionProcess, proxy: Proxy, start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), upstream.url, "team/app", image, "v1.0.0")
    cache = start_registry(pull_through_config([{"url": proxy.url, "manifest_check_interval": 0}],
                                               immutable_tags=True, immutable_tags_exclusions=["^latest$"]))
    for _ in range(3):
        assert manifest(cache, "v1.0.0").content == image.manifest
        assert manifest(cache, image.digest).content == image.manifest
    assert proxy.get_count("/v2/team/app/manifests/v1.0.0") == 1
    assert proxy.counts[("HEAD", "/v2/team/app/manifests/v1.0.0")] == 0
    assert proxy.get_count(f"/v2/team/app/manifests/{image.digest}") == 0


def test_upstream_404_is_answered_as_404(upstream: DistributionProcess,
                                         start_registry: Callable[..., RegistryProcess]) -> None:
    cache = start_registry(pull_through_config([{"url": upstream.url}]))
    response = manifest(cache, "nope")
    assert response.status_code == 404 and response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert upstream.url in response.json()["errors"][0]["message"]
    unknown = cache.get("/v2/cache/team/nothing/tags/list")
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_upstreams_follow_a_live_configuration_reload(upstream: DistributionProcess, tmp_path: Path,
                                                      start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), upstream.url, "team/app", image, "1")
    down = f"http://127.0.0.1:{free_port()}"
    cache = start_registry(pull_through_config([{"url": down}]))
    assert manifest(cache, "1").status_code == 502
    # The running server reads the repository's upstreams at request time: a reload switches them.
    config = cache.config_path.read_text().replace(down, upstream.url)
    cache.config_path.write_text(config)
    deadline = time.monotonic() + 10
    while manifest(cache, "1").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert manifest(cache, "1").content == image.manifest
    # And a repository that loses its upstreams is a plain (writable) repository again.
    cache.config_path.write_text(config.split("[[repository")[0])
    deadline = time.monotonic() + 10
    while cache.post("/v2/cache/team/app/blobs/uploads/").status_code == 405 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cache.post("/v2/cache/team/app/blobs/uploads/").status_code == 202
    assert manifest(cache, "1").content == image.manifest  # what was cached stays


def test_a_manifest_that_does_not_match_its_digest_is_refused_and_not_stored(
        upstream: DistributionProcess, start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), upstream.url, "team/app", image, "1")
    liar = Proxy(upstream.url, lie_about={"1", image.digest})
    liar.start()
    try:
        cache = start_registry(pull_through_config([{"url": liar.url}]))
        for reference in ("1", image.digest):
            response = manifest(cache, reference)
            assert response.status_code == 502, response.text
            assert liar.url in response.text and "nothing was stored" in response.text
        assert not (cache.root / "docker/registry/v2/repositories/cache/team/app/_manifests").exists()
        liar.lie_about.clear()
        assert manifest(cache, "1").content == image.manifest
    finally:
        liar.stop()
