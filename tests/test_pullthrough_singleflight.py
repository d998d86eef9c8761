"""Single-flight blob fetches through the pull-through cache, against a real upstream behind a counting
proxy: twenty clients, one upstream GET, bytes streamed as they arrive; a lying upstream stores nothing;
Range requests and HEADs on a miss are forwarded and not cached."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.helpers.distribution import DistributionProcess
from tests.helpers.oci import digest_of, make_image
from tests.helpers.server import RegistryProcess
from tests.helpers.upstreams import (
    Proxy,
    pull_through_config,
    pull_through_counters,
    push,
    upload_blob,
)

CLIENTS = 20
BIG = 50 * 1024 * 1024


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[DistributionProcess]:
    registry = DistributionProcess(tmp_path / "upstream", tmp_path / "upstream-data").start()
    yield registry
    registry.stop()


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    started: list[Proxy] = []
    yield started
    for proxy in started:
        proxy.stop()


@dataclass
class Pull:
    status: int
    size: int
    sha256: str
    first_byte_at: float | None
    error: str | None = None


def pull(url: str, barrier: threading.Barrier | None = None) -> Pull:
    if barrier is not None:
        barrier.wait()
    hasher = hashlib.sha256()
    size, first = 0, None
    try:
        with requests.get(url, stream=True, timeout=120) as response:
            for chunk in response.iter_content(256 * 1024):
                if first is None:
                    first = time.time()
                hasher.update(chunk)
                size += len(chunk)
            return Pull(response.status_code, size, "sha256:" + hasher.hexdigest(), first)
    except requests.RequestException as exc:
        return Pull(-1, size, "sha256:" + hasher.hexdigest(), first, f"{type(exc).__name__}: {exc}")


def stored_files(server: RegistryProcess) -> list[str]:
    """Every key the server's store holds (fs or S3: tests/helpers/stores.py)."""
    return server.store.keys("")


def test_twenty_clients_one_upstream_get_streamed_as_it_arrives(
        upstream: DistributionProcess, proxies: list[Proxy],
        start_registry: Callable[..., RegistryProcess]) -> None:
    blob = os.urandom(BIG)
    digest = digest_of(blob)
    upload_blob(requests.Session(), upstream.url, "team/big", blob)
    del blob
    # ~2.5 s for the upstream transfer: every client joins while it runs.
    proxy = Proxy(upstream.url, throttle=20 * 1024 * 1024)
    proxies.append(proxy)
    proxy.start()
    cache = start_registry(pull_through_config([{"url": proxy.url}]))
    url = f"{cache.url}/v2/cache/team/big/blobs/{digest}"

    barrier = threading.Barrier(CLIENTS)
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda _: pull(url, barrier), range(CLIENTS)))

    path = f"/v2/team/big/blobs/{digest}"
    assert proxy.get_count(path) == 1, proxy.counts
    assert sum(count for (method, _), count in proxy.counts.items() if method == "GET") == 1
    assert [(r.status, r.size, r.sha256, r.error) for r in results] == [(200, BIG, digest, None)] * CLIENTS
    # Streamed, not store-and-forward: every client had bytes before the upstream transfer was over.
    upstream_done = proxy.finished_at[path]
    assert all(r.first_byte_at is not None and r.first_byte_at < upstream_done for r in results), \
        [round(upstream_done - (r.first_byte_at or 0), 3) for r in results]
    assert proxy.bytes_sent == BIG

    hexdigest = digest.split(":", 1)[1]
    data = "docker/registry/v2"
    stored = cache.store.read(f"{data}/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data")
    assert stored is not None and digest_of(stored) == digest
    del stored
    assert cache.store.read(f"{data}/repositories/cache/team/big/_layers/sha256/{hexdigest}/link") == \
        digest.encode()
    assert not [f for f in stored_files(cache) if "_uploads" in f or f.startswith("tmp/")]

    # The next client is served from storage: no new upstream request.
    assert pull(url).sha256 == digest
    assert proxy.get_count(path) == 1
    counters = pull_through_counters(cache.get("/metrics").text)
    assert counters["upstream_bytes"] == BIG
    assert counters["misses"] == CLIENTS and counters["hits"] == 1 and counters["upstream_errors"] == 0


def test_a_lying_upstream_aborts_every_client_and_stores_nothing(
        upstream: DistributionProcess, proxies: list[Proxy],
        start_registry: Callable[..., RegistryProcess]) -> None:
    blob = os.urandom(8 * 1024 * 1024)
    digest = digest_of(blob)
    upload_blob(requests.Session(), upstream.url, "team/app", blob)
    # Wrong bytes of the right length, slowly enough that clients are mid-body when the lie is found.
    liar = Proxy(upstream.url, throttle=8 * 1024 * 1024, lie_about={digest})
    proxies.append(liar)
    liar.start()
    cache = start_registry(pull_through_config([{"url": liar.url}]))
    url = f"{cache.url}/v2/cache/team/app/blobs/{digest}"

    barrier = threading.Barrier(5)
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: pull(url, barrier), range(5)))
    assert liar.get_count(f"/v2/team/app/blobs/{digest}") == 1
    for result in results:
        # Either refused before the first byte (502) or cut off mid-body: never a complete response.
        assert result.status == 502 or result.error is not None, result
        assert result.size < len(blob)
    hexdigest = digest.split(":", 1)[1]
    assert not [f for f in stored_files(cache) if hexdigest in f or "_uploads" in f], \
        stored_files(cache)
    log = cache.logs()
    assert "not " + digest in log and "nothing was stored" in log

    # The same upstream, honest now: the next pull succeeds and is stored.
    liar.lie_about.clear()
    honest = pull(url)
    assert (honest.status, honest.sha256, honest.error) == (200, digest, None)
    assert any(hexdigest in f for f in stored_files(cache))


def test_range_and_head_on_a_miss_are_forwarded_not_cached(
        upstream: DistributionProcess, proxies: list[Proxy],
        start_registry: Callable[..., RegistryProcess]) -> None:
    blob = os.urandom(1_000_000)
    digest = digest_of(blob)
    upload_blob(requests.Session(), upstream.url, "team/app", blob)
    proxy = Proxy(upstream.url)
    proxies.append(proxy)
    proxy.start()
    cache = start_registry(pull_through_config([{"url": proxy.url}]))
    path = f"/v2/cache/team/app/blobs/{digest}"

    head = cache.head(path)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(blob))
    assert head.headers["Docker-Content-Digest"] == digest
    ranged = cache.get(path, headers={"Range": "bytes=1000-1999"})
    assert ranged.status_code == 206 and ranged.content == blob[1000:2000]
    assert ranged.headers["Content-Range"] == f"bytes 1000-1999/{len(blob)}"
    hexdigest = digest.split(":", 1)[1]
    assert not [f for f in stored_files(cache) if hexdigest in f]
    assert proxy.counts[("HEAD", f"/v2/team/app/blobs/{digest}")] == 1

    # A whole GET caches it; ranges are then answered locally.
    assert cache.get(path).content == blob
    assert cache.get(path, headers={"Range": "bytes=-10"}).content == blob[-10:]
    assert proxy.get_count(f"/v2/team/app/blobs/{digest}") == 2
    # Unknown upstream: a 404 answer, not an error.
    missing = cache.get(f"/v2/cache/team/app/blobs/{digest_of(b'nope')}")
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_concurrent_manifest_misses_make_one_upstream_request(
        upstream: DistributionProcess, proxies: list[Proxy],
        start_registry: Callable[..., RegistryProcess]) -> None:
    image = make_image()
    push(requests.Session(), upstream.url, "team/app", image, "1")
    proxy = Proxy(upstream.url)
    proxies.append(proxy)
    proxy.start()
    cache = start_registry(pull_through_config([{"url": proxy.url}]))
    barrier = threading.Barrier(CLIENTS)

    def get(reference: str) -> bytes:
        barrier.wait()
        response = requests.get(f"{cache.url}/v2/cache/team/app/manifests/{reference}", timeout=60,
                                headers={"Accept": image.media_type})
        assert response.status_code == 200, response.text
        return response.content

    with ThreadPoolExecutor(CLIENTS) as pool:
        assert set(pool.map(lambda _: get("1"), range(CLIENTS))) == {image.manifest}
    assert proxy.get_count("/v2/team/app/manifests/1") == 1


def test_a_hanging_upstream_fails_the_fetch_and_a_client_leaving_does_not_cancel_it(
        upstream: DistributionProcess, proxies: list[Proxy],
        start_registry: Callable[..., RegistryProcess]) -> None:
    blob = os.urandom(4 * 1024 * 1024)
    digest = digest_of(blob)
    upload_blob(requests.Session(), upstream.url, "team/app", blob)
    hanging = Proxy(upstream.url, stall_after=1024 * 1024, stall_seconds=4)
    slow = Proxy(upstream.url, throttle=2 * 1024 * 1024)
    proxies.extend([hanging, slow])
    hanging.start()
    slow.start()
    cache = start_registry(pull_through_config([{"url": hanging.url, "read_timeout": 1}])
                           + pull_through_config([{"url": slow.url}], prefix="slow", open_globally=False))
    hexdigest = digest.split(":", 1)[1]

    # Upstream goes silent mid-body for longer than read_timeout: the client is cut off, nothing stored.
    started = time.monotonic()
    cut = pull(f"{cache.url}/v2/cache/team/app/blobs/{digest}")
    assert cut.error is not None and 0 < cut.size < len(blob)
    assert time.monotonic() - started < 4
    deadline = time.monotonic() + 5  # the leader tells readers first, then removes its spool
    while [f for f in stored_files(cache) if "_uploads/fetch-" in f] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [f for f in stored_files(cache) if hexdigest in f or "_uploads/fetch-" in f]
    assert "timed out" in cache.logs() or "TimeoutError" in cache.logs()
    # The stall was a one-off: the next pull succeeds.
    assert pull(f"{cache.url}/v2/cache/team/app/blobs/{digest}").sha256 == digest

    # A client that gives up after the first bytes does not stop the fetch others (and the cache) need.
    other = os.urandom(4 * 1024 * 1024)
    other_digest = digest_of(other)
    upload_blob(requests.Session(), upstream.url, "team/app", other)
    with requests.get(f"{cache.url}/v2/slow/team/app/blobs/{other_digest}", stream=True, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_content(64 * 1024))
    other_hex = other_digest.split(":", 1)[1]
    stored = f"docker/registry/v2/blobs/sha256/{other_hex[:2]}/{other_hex}/data"
    deadline = time.monotonic() + 20
    while cache.store.read(stored) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cache.store.read(stored) == other
    assert pull(f"{cache.url}/v2/slow/team/app/blobs/{other_digest}").sha256 == other_digest
    assert slow.get_count(f"/v2/team/app/blobs/{other_digest}") == 1
