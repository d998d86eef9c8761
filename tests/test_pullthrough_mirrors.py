"""Mirrors against real components: containerd's `?ns=` (a private containerd daemon pulling with `ctr`
through a hosts directory), mirror-any-registry mode (containerd and cri-o/skopeo path form, per-host
credentials from REGISTRY_UPSTREAM_CREDENTIALS, per-host User-Agent), and upstream rate limits (429
TOOMANYREQUESTS: failover, stale-if-error, 503 with Retry-After, the Retry-After window respected).
Upstreams are CNCF distribution 2.8, behind a counting proxy where the test needs to see requests."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers.daemons import Ctr, write_hosts_toml
from tests.helpers.distribution import DistributionProcess
from tests.helpers.interop import assert_oci_layout_has_image, copy
from tests.helpers.oci import Image, digest_of, make_image, push_image, random_layer
from tests.helpers.server import RegistryProcess, toml_value
from tests.helpers.upstreams import (
    Proxy,
    pull_through_config,
    pull_through_counters,
    push,
    write_htpasswd,
)

ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
LOCAL_OPEN = """
[global.access_policy]
default_allow = true
[repository."team"]
access_policy = { default_allow = true }
"""


def mirror_any_config(hosts: dict[str, dict[str, Any]] | None = None, prefix: str = "mirror",
                      extra: str = "") -> str:
    """A mirror-any-registry repository open to everyone, with per-host tables."""
    lines = ["[global.access_policy]", "default_allow = true", f'[repository."{prefix}"]',
             "mirror_any_registry = true", f'[repository."{prefix}".access_policy]', "default_allow = true"]
    for host, settings in (hosts or {}).items():
        lines.append(f'[repository."{prefix}".mirror_hosts."{host}"]')
        lines += [f"{key} = {toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n" + extra


def manifest(cache: RegistryProcess, name: str, reference: str, **kwargs: Any) -> requests.Response:
    return cache.get(f"/v2/{name}/manifests/{reference}", headers={"Accept": ACCEPT, **kwargs})


def stored_under(cache: RegistryProcess, namespace: str, image: Image) -> bool:
    """Every blob of `image` is in the cache's storage and linked into `namespace`."""
    data = cache.root / "docker/registry/v2"
    for digest, blob in image.blobs.items():
        hexdigest = digest.split(":", 1)[1]
        if (data / "blobs/sha256" / hexdigest[:2] / hexdigest / "data").read_bytes() != blob:
            return False
        if not (data / "repositories" / namespace / "_layers/sha256" / hexdigest / "link").is_file():
            return False
    return True


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


# --- containerd ?ns= ------------------------------------------------------------------------------
def test_an_unclaimed_ns_is_a_404_even_when_the_local_namespace_has_the_image(
        start_registry: Callable[..., RegistryProcess]) -> None:
    cache = start_registry(LOCAL_OPEN)
    local = make_image()
    assert push_image(requests.Session(), cache.url, "team/img", local, "1").status_code == 201
    layer = digest_of(local.layers[0])
    assert manifest(cache, "team/img", "1").content == local.manifest  # the local image, without ns

    for path, code in [("/v2/team/img/manifests/1?ns=quay.io", "MANIFEST_UNKNOWN"),
                       (f"/v2/team/img/manifests/{local.digest}?ns=quay.io", "MANIFEST_UNKNOWN"),
                       (f"/v2/team/img/blobs/{layer}?ns=quay.io", "BLOB_UNKNOWN"),
                       ("/v2/team/img/tags/list?ns=quay.io", "NAME_UNKNOWN")]:
        response = cache.get(path, headers={"Accept": ACCEPT})
        assert response.status_code == 404, (path, response.text)
        error = response.json()["errors"][0]
        assert error["code"] == code and "quay.io" in error["message"], error
    head = cache.head("/v2/team/img/manifests/1?ns=quay.io", headers={"Accept": ACCEPT})
    assert head.status_code == 404 and "Docker-Content-Digest" not in head.headers

    # An ns naming this registry itself (its Host, whatever the case) is a plain local request.
    own = manifest(cache, "team/img", "1?ns=" + cache.host)
    assert own.status_code == 200 and own.content == local.manifest
    named = cache.get(f"/v2/team/img/blobs/{layer}?ns=Cache.Internal:5000",
                      headers={"Host": "cache.internal:5000"})
    assert named.status_code == 200 and named.content == local.layers[0]


def test_containerd_falls_back_to_the_registry_when_no_repository_claims_its_ns(
        upstream: DistributionProcess, ctr: Ctr,
        start_registry: Callable[..., RegistryProcess], tmp_path: Path) -> None:
    remote, local = make_image(), make_image()  # same name, different content
    push(requests.Session(), upstream.url, "team/img", remote, "1")
    cache = start_registry(LOCAL_OPEN)
    assert push_image(requests.Session(), cache.url, "team/img", local, "1").status_code == 201
    hosts = tmp_path / "hosts"
    write_hosts_toml(hosts, upstream.host, server=upstream.url, mirrors=[cache.url])

    reference = f"{upstream.host}/team/img:1"
    ctr.pull(reference, hosts_dir=hosts)
    assert ctr.image(reference).digest == remote.digest != local.digest
    # containerd did ask the cache first (and got the 404 that sent it on), for the name it has locally.
    asked = [json.loads(line) for line in cache.logs().splitlines() if '"registry.access"' in line]
    assert any(entry["path"] == "/v2/team/img/manifests/1" and entry["status"] == 404 for entry in asked)


def test_containerd_pulls_any_registry_through_the_cache(
        upstream: DistributionProcess, proxy: Proxy, ctr: Ctr,
        start_registry: Callable[..., RegistryProcess], tmp_path: Path) -> None:
    image = make_image([random_layer(200_000), random_layer(100_000)])
    push(requests.Session(), upstream.url, "team/img", image, "1")
    # The registry named in the image reference is `upstream.host`; the cache reaches it by the proxy.
    cache = start_registry(mirror_any_config({upstream.host: {"url": proxy.url}}))
    hosts = tmp_path / "hosts"
    write_hosts_toml(hosts, upstream.host, server=upstream.url, mirrors=[cache.url])

    reference = f"{upstream.host}/team/img:1"
    ctr.pull(reference, hosts_dir=hosts)
    assert ctr.image(reference).digest == image.digest
    # Through the cache: every blob fetched upstream once, by the cache, and now in its storage.
    for digest in image.blobs:
        assert proxy.get_count(f"/v2/team/img/blobs/{digest}") == 1
    namespace = f"mirror/{upstream.host.replace(':', '__')}/team/img"
    assert stored_under(cache, namespace, image)
    counters = pull_through_counters(cache.get("/metrics").text, repository="mirror")
    assert counters["misses"] >= 1 + len(image.blobs) and counters["upstream_bytes"] > 300_000


# --- mirror-any-registry --------------------------------------------------------------------------
def test_skopeo_pulls_any_registry_by_path_byte_identical(
        upstream: DistributionProcess, start_registry: Callable[..., RegistryProcess],
        tmp_path: Path) -> None:
    image = make_image([random_layer(300_000), random_layer(50_000)])
    push(requests.Session(), upstream.url, "team/img", image, "1.0")
    cache = start_registry(mirror_any_config({upstream.host: {"url": upstream.url}}))
    component = upstream.host.replace(":", "__")

    out = tmp_path / "pulled"
    copy(f"docker://{cache.host}/mirror/{component}/team/img:1.0", f"oci:{out}:1.0")
    assert_oci_layout_has_image(out, "1.0", image)
    # Byte-identical to what distribution serves.
    assert manifest(cache, f"mirror/{component}/team/img", "1.0").content == upstream.get(
        "/v2/team/img/manifests/1.0", headers={"Accept": ACCEPT}).content == image.manifest
    assert stored_under(cache, f"mirror/{component}/team/img", image)
    counters = pull_through_counters(cache.get("/metrics").text, repository="mirror")
    assert counters["misses"] >= 1 + len(image.blobs)

    # containerd's form of the same request lands in the same cached namespace (served without upstream).
    upstream.stop()
    again = manifest(cache, "team/img", f"{image.digest}?ns={upstream.host}")
    assert again.status_code == 200 and again.content == image.manifest
    # Read-only like every pull-through repository; a name without a registry host says how to name one.
    pushed = cache.post(f"/v2/mirror/{component}/team/img/blobs/uploads/")
    assert pushed.status_code == 405 and pushed.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert cache.post("/v2/mirror/team/img/blobs/uploads/").status_code == 405
    unnamed = manifest(cache, "mirror/not_a_host/img", "1")
    assert unnamed.status_code == 404 and "mirror/<registry host>/<image>" in unnamed.text


def test_a_repository_namespace_wins_over_mirror_any_registry(
        upstream: DistributionProcess, start_registry: Callable[..., RegistryProcess],
        tmp_path: Path) -> None:
    other = DistributionProcess(tmp_path / "other", tmp_path / "other-data").start()
    try:
        mirrored, pinned = make_image(), make_image()
        push(requests.Session(), upstream.url, "team/img", mirrored, "1")
        push(requests.Session(), other.url, "team/img", pinned, "1")
        # `pinned` claims ns=<other.host> explicitly; every other ns goes to the mirror-any repository.
        cache = start_registry(
            mirror_any_config({upstream.host: {"url": upstream.url}})
            + pull_through_config([{"url": other.url}], prefix="pinned", namespace=other.host,
                                  open_globally=False))
        claimed = manifest(cache, "team/img", f"1?ns={other.host}")
        assert claimed.status_code == 200 and claimed.content == pinned.manifest
        any_host = manifest(cache, "team/img", f"1?ns={upstream.host}")
        assert any_host.status_code == 200 and any_host.content == mirrored.manifest
        data = cache.root / "docker/registry/v2/repositories"
        assert (data / "pinned/team/img/_manifests/tags/1").is_dir()
        assert (data / f"mirror/{upstream.host.replace(':', '__')}/team/img/_manifests/tags/1").is_dir()
    finally:
        other.stop()


def test_per_host_credentials_come_from_the_environment(
        tmp_path: Path, start_registry: Callable[..., RegistryProcess]) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", "puller", "env-only-s3cret")
    private = DistributionProcess(tmp_path / "private", tmp_path / "private-data",
                                  auth={"htpasswd": {"realm": "private", "path": str(htpasswd)}}).start()
    try:
        session = requests.Session()
        session.auth = ("puller", "env-only-s3cret")
        image = make_image()
        push(session, private.url, "team/img", image, "1")
        component = private.host.replace(":", "__")
        # The file's credentials are wrong; the environment's win for that host.
        config = mirror_any_config({private.host: {"url": private.url, "username": "puller",
                                                   "password": "wrong"}})
        without = start_registry(config, name="file-only")
        refused = manifest(without, f"mirror/{component}/team/img", "1")
        assert refused.status_code == 502 and private.url in refused.text

        credentials = json.dumps({private.host: {"username": "puller", "password": "env-only-s3cret"}})
        cache = start_registry(config, env={"REGISTRY_UPSTREAM_CREDENTIALS": credentials})
        out = tmp_path / "pulled"
        copy(f"docker://{cache.host}/mirror/{component}/team/img:1", f"oci:{out}:1")
        assert_oci_layout_has_image(out, "1", image)
        assert "env-only-s3cret" not in cache.logs()
    finally:
        private.stop()


def test_a_malformed_credentials_variable_stops_the_start(
        start_registry: Callable[..., RegistryProcess]) -> None:
    with pytest.raises(RuntimeError) as raised:
        start_registry(mirror_any_config(), env={"REGISTRY_UPSTREAM_CREDENTIALS": '{"docker.io": "s3cret'})
    assert "REGISTRY_UPSTREAM_CREDENTIALS" in str(raised.value) and "not valid JSON" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_the_per_host_user_agent_is_sent_upstream(
        upstream: DistributionProcess, proxy: Proxy, start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), upstream.url, "team/img", image, "1")
    plain = Proxy(upstream.url)
    plain.start()
    try:
        cache = start_registry(mirror_any_config({
            proxy.host: {"url": proxy.url, "user_agent": "containerd/1.6.8"},
            plain.host: {"url": plain.url}}))
        for host in (proxy.host, plain.host):
            assert manifest(cache, "team/img", f"1?ns={host}").content == image.manifest
            assert cache.get(f"/v2/team/img/blobs/{digest_of(image.layers[0])}?ns={host}").status_code == 200
        assert proxy.seen_user_agents and set(proxy.seen_user_agents) == {"containerd/1.6.8"}
        assert plain.seen_user_agents and set(plain.seen_user_agents) == {"simple-registry-pull-through"}
    finally:
        plain.stop()


# --- 429 TOOMANYREQUESTS ----------------------------------------------------------------------------
def requests_seen(proxy: Proxy) -> int:
    return sum(proxy.counts.values())


def test_a_rate_limited_upstream_fails_over_to_the_next(
        upstream: DistributionProcess, proxy: Proxy, start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), upstream.url, "team/app", image, "1")
    proxy.rate_limit = "60"
    cache = start_registry(pull_through_config([{"url": proxy.url}, {"url": upstream.url}]))
    assert manifest(cache, "cache/team/app", "1").content == image.manifest
    for digest, blob in image.blobs.items():
        assert cache.get(f"/v2/cache/team/app/blobs/{digest}").content == blob
    # Asked once; inside its Retry-After window the blobs went straight to the second upstream.
    assert requests_seen(proxy) == 1
    assert pull_through_counters(cache.get("/metrics").text)["upstream_errors"] == 1


def test_rate_limited_with_a_cached_manifest_serves_it_stale(
        proxy: Proxy, upstream: DistributionProcess, start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), upstream.url, "team/app", image, "latest")
    # Interval 0: every pull of the tag asks upstream first.
    cache = start_registry(pull_through_config([{"url": proxy.url, "manifest_check_interval": 0}]))
    assert manifest(cache, "cache/team/app", "latest").content == image.manifest

    proxy.rate_limit = "30"
    before = requests_seen(proxy)
    for _ in range(2):
        stale = manifest(cache, "cache/team/app", "latest")
        assert stale.status_code == 200 and stale.content == image.manifest
    assert requests_seen(proxy) == before + 1  # the second pull did not ask inside the window
    assert "stale-if-error" in cache.logs()


def test_rate_limited_without_a_cached_copy_is_a_503_with_retry_after(
        proxy: Proxy, start_registry: Callable[..., RegistryProcess]) -> None:
    proxy.rate_limit = "120"
    cache = start_registry(pull_through_config([{"url": proxy.url}]))
    for path in ["/v2/cache/team/app/manifests/1", f"/v2/cache/team/app/blobs/{digest_of(b'never')}",
                 "/v2/cache/team/app/tags/list"]:
        response = cache.get(path, headers={"Accept": ACCEPT})
        assert response.status_code == 503, (path, response.text)
        error = response.json()["errors"][0]
        assert error["code"] == "UNAVAILABLE"
        assert proxy.url in error["message"] and "rate-limit" in error["message"], error
        assert 1 <= int(response.headers["Retry-After"]) <= 120


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_rate_limited_upstream_is_not_asked_again_inside_its_retry_after(
        form: str, proxy: Proxy, upstream: DistributionProcess,
        start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), upstream.url, "team/app", image, "1")
    cache = start_registry(pull_through_config([{"url": proxy.url}]))
    proxy.rate_limit = "3" if form == "seconds" else email.utils.formatdate(time.time() + 3, usegmt=True)
    limited_at = time.monotonic()
    assert manifest(cache, "cache/team/app", "1").status_code == 503
    assert requests_seen(proxy) == 1
    proxy.rate_limit = None  # upstream would answer now, but the window is still running
    for _ in range(3):
        response = manifest(cache, "cache/team/app", "1")
        assert response.status_code == 503 and 1 <= int(response.headers["Retry-After"]) <= 3
        assert cache.get(f"/v2/cache/team/app/blobs/{digest_of(image.layers[0])}").status_code == 503
    assert requests_seen(proxy) == 1
    time.sleep(max(0.0, limited_at + 3.2 - time.monotonic()))
    assert manifest(cache, "cache/team/app", "1").content == image.manifest
    assert requests_seen(proxy) > 1
