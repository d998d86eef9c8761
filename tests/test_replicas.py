"""Replicas: three `registry server` processes on one store (one folder, or one S3 bucket) and one real
`redis-server` behave as one registry. What one writes, the others serve on the very next request
(issue 12; app/coherence.py).

Every replica keeps tags, tag lists, referrers and the catalog in memory, so without the shared
versions in Redis these tests see stale answers: B keeps answering the digest it cached before A moved
the tag.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers.moto import MotoServer
from tests.helpers.oci import Image, make_image, push_blob, push_image, random_layer
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import RegistryProcess, toml_value
from tests.helpers.stores import new_s3_store, s3_section

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(params=["fs", "s3"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path,
             redis_server: RedisServer) -> Iterator[list[RegistryProcess]]:
    if request.param == "fs":
        store = f"[blob_store.fs]\nroot_dir = {toml_value(tmp_path / 'shared')}\n"
    else:
        moto: MotoServer = request.getfixturevalue("moto_server")
        store = s3_section(new_s3_store(moto.endpoint))
    # Locks in Redis too (a bare metadata-store redis section: the blob store with Redis locks).
    section = (f"{store}\n[metadata_store.{request.param}.redis]\nurl = {toml_value(redis_server.url)}\n"
               f"ttl = 3\n\n[cache.redis]\nurl = {toml_value(redis_server.url)}\nkey_prefix = \"test:\"\n")
    started = []
    for name in ("a", "b", "c"):
        workdir = tmp_path / name
        workdir.mkdir()
        started.append(RegistryProcess(workdir, section).start())
    yield started
    for server in started:
        server.kill()


def _digest(server: RegistryProcess, name: str, reference: str) -> str | int:
    response = server.get(f"/v2/{name}/manifests/{reference}", headers=ACCEPT)
    if response.status_code != 200:
        return response.status_code
    return str(response.headers["Docker-Content-Digest"])


def _push(server: RegistryProcess, name: str, tag: str | None = None, image: Image | None = None) -> Image:
    image = image or make_image()
    response = push_image(server.session, server.url, name, image, tag)
    assert response.status_code == 201, response.text
    return image


def test_a_tag_moved_on_one_replica_is_answered_by_the_others_at_once(
        replicas: list[RegistryProcess]) -> None:
    a = replicas[0]
    images = [_push(a, "team/app") for _ in range(4)]  # blobs and revisions; the tag moves among them
    stale = 0
    for move in range(100):
        writer = replicas[move % 3]
        image = images[move % len(images)]
        response = writer.session.put(f"{writer.url}/v2/team/app/manifests/latest", data=image.manifest,
                                      headers={"Content-Type": image.media_type}, timeout=60)
        assert response.status_code == 201, response.text
        for reader in replicas:  # every replica, including ones that had the old digest cached
            if _digest(reader, "team/app", "latest") != image.digest:
                stale += 1
    assert stale == 0, f"{stale} stale answers in 300 reads"


def test_writes_on_one_replica_show_on_the_others(replicas: list[RegistryProcess]) -> None:
    a, b, c = replicas
    first = _push(a, "team/app", "v1")
    for server in (b, c):  # cached there now
        assert _digest(server, "team/app", "v1") == first.digest
        assert server.get("/v2/team/app/tags/list").json()["tags"] == ["v1"]
        assert server.get("/v2/_catalog").json()["repositories"] == ["team/app"]
    # A new tag, a new repository and a referrer, pushed on A: listed by B and C on the next request.
    _push(a, "team/app", "v2")
    _push(a, "team/other", "v1")
    subject = {"mediaType": first.media_type, "digest": first.digest, "size": len(first.manifest)}
    referrer = _push(a, "team/app", image=make_image(subject=subject, artifact_type="application/vnd.test"))
    for server in (b, c):
        assert server.get("/v2/team/app/tags/list").json()["tags"] == ["v1", "v2"]
        assert server.get("/v2/_catalog").json()["repositories"] == ["team/app", "team/other"]
        listed = server.get(f"/v2/team/app/referrers/{first.digest}").json()["manifests"]
        assert [d["digest"] for d in listed] == [referrer.digest]
    # Deletes on B: gone on A and C at once.
    assert b.delete(f"/v2/team/app/manifests/{referrer.digest}").status_code == 202
    assert b.delete("/v2/team/app/manifests/v2").status_code == 202
    for server in (a, c):
        assert server.get(f"/v2/team/app/referrers/{first.digest}").json()["manifests"] == []
        assert _digest(server, "team/app", "v2") == 404
        assert _digest(server, "team/app", referrer.digest) == 404
        assert server.get("/v2/team/app/tags/list").json()["tags"] == ["v1"]


def test_redis_away_gives_503s_and_service_resumes_when_it_returns(
        replicas: list[RegistryProcess], redis_server: RedisServer) -> None:
    a, b, _ = replicas
    image = _push(a, "team/app", "v1")
    assert _digest(b, "team/app", "v1") == image.digest
    redis_server.stop()
    started = time.monotonic()
    refused = b.get("/v2/team/app/manifests/v1", headers=ACCEPT)
    assert refused.status_code == 503, refused.text
    assert refused.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert time.monotonic() - started < 10  # a clear error, not a hang
    assert b.get("/readyz").status_code == 503
    assert b.get("/healthz").status_code == 200  # alive: nothing to restart
    # Writes need their locks: an upload is refused before anything is stored.
    blob = push_blob(a.session, a.url, "team/app", next(iter(make_image().blobs.values())))
    assert blob.status_code == 503, blob.text
    redis_server.start()  # empty, as after a Redis restart without persistence
    deadline = time.monotonic() + 20
    while b.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the replica did not reconnect to Redis"
        time.sleep(0.2)
    for server in replicas:  # an empty Redis: every version counts as moved, storage is read again
        assert _digest(server, "team/app", "v1") == image.digest
    again = _push(b, "team/app", "v1")
    for server in replicas:
        assert _digest(server, "team/app", "v1") == again.digest


def test_one_replica_without_redis_refuses_to_pretend(tmp_path: Path) -> None:
    """A replica whose Redis is unreachable from the start answers 503 for what needs shared state."""
    dead = f"redis://127.0.0.1:{_closed_port()}/0"
    workdir = tmp_path / "lonely"
    workdir.mkdir()
    server = RegistryProcess(workdir, f"[cache.redis]\nurl = {toml_value(dead)}\n").start()
    try:
        assert server.get("/v2/team/app/tags/list").status_code == 503
        assert server.get("/readyz").status_code == 503
    finally:
        server.kill()


def _closed_port() -> int:
    from tests.helpers.server import free_port

    return free_port()


class RoundRobin:
    """Each request to the next live replica (what a load balancer does); a replica that refuses
    connections is taken out, as a health check would."""

    def __init__(self, replicas: list[RegistryProcess]) -> None:
        self.replicas = replicas
        self.dead: set[int] = set()
        self.hung: list[str] = []  # requests a live replica did not answer within the timeout
        self._next = 0
        self._lock = threading.Lock()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 20)
        for _ in range(2 * len(self.replicas)):
            with self._lock:
                live = [i for i in range(len(self.replicas)) if i not in self.dead]
                index = live[self._next % len(live)]
                self._next += 1
            try:
                return self.replicas[index].request(method, path, **kwargs)
            except requests.ReadTimeout:
                self.hung.append(f"{method} {path} on {self.replicas[index].url}")
                raise
            except requests.ConnectionError:
                with self._lock:
                    self.dead.add(index)
        raise AssertionError("no replica answers")


def _push_through(balancer: RoundRobin, name: str, tag: str, image: Image) -> bool:
    """POST, PUT and the manifest PUT each on the next replica; False when a request failed (503 while
    Redis is away, a replica killed under it): the caller retries the whole image."""
    for data in image.blobs.values():
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if balancer.request("HEAD", f"/v2/{name}/blobs/{digest}").status_code == 200:
            continue
        started = balancer.request("POST", f"/v2/{name}/blobs/uploads/")
        if started.status_code != 202:
            return False
        path = started.headers["Location"]
        done = balancer.request("PUT", f"{path}{'&' if '?' in path else '?'}digest={digest}", data=data,
                                headers={"Content-Type": "application/octet-stream"})
        if done.status_code != 201:
            return False
    put = balancer.request("PUT", f"/v2/{name}/manifests/{tag}", data=image.manifest,
                           headers={"Content-Type": image.media_type})
    return put.status_code == 201


def test_twenty_clients_through_three_replicas_survive_a_kill_and_a_redis_outage(
        replicas: list[RegistryProcess], redis_server: RedisServer) -> None:
    balancer = RoundRobin(replicas)
    shared_layers = [random_layer(64 * 1024) for _ in range(3)]
    acknowledged: dict[tuple[str, str], Image] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        for round_ in range(3):
            name, tag = f"load/app{number % 5}", f"c{number}-r{round_}"
            image = make_image(layers=[shared_layers[(number + round_) % 3], random_layer(32 * 1024)])
            deadline = time.monotonic() + 60
            while True:
                try:
                    if _push_through(balancer, name, tag, image):
                        with lock:
                            acknowledged[name, tag] = image
                        break
                except (requests.RequestException, AssertionError) as exc:
                    failures.append(repr(exc))
                if time.monotonic() > deadline:
                    failures.append(f"{name}:{tag} never pushed")
                    break
                time.sleep(0.3)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    replicas[2].kill()  # kill -9 in the middle of the load
    time.sleep(1.0)
    redis_server.stop()  # and Redis away for 5 s
    time.sleep(5.0)
    redis_server.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert len(acknowledged) == 60, failures[-5:]
    assert balancer.hung == []  # 503s while Redis is away, never a request left hanging
    # Every acknowledged image pulls back byte-identical from every surviving replica.
    for server in replicas[:2]:
        for (name, tag), image in acknowledged.items():
            manifest = server.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": image.media_type})
            assert manifest.status_code == 200 and manifest.content == image.manifest, (server.url, tag)
            for digest, data in image.blobs.items():
                assert server.get(f"/v2/{name}/blobs/{digest}").content == data, (server.url, digest)


def test_skopeo_pushes_through_one_replica_and_pulls_through_another(
        replicas: list[RegistryProcess], tmp_path: Path) -> None:
    from tests.helpers.interop import assert_oci_layout_has_image, copy
    from tests.helpers.oci import write_oci_layout

    a, b, c = replicas
    first = make_image(layers=[random_layer(300_000), random_layer(200_000)])
    write_oci_layout(tmp_path / "src", {"v1": first})
    copy(f"oci:{tmp_path / 'src'}:v1", f"docker://{a.host}/skopeo/app:v1")
    copy(f"docker://{b.host}/skopeo/app:v1", f"oci:{tmp_path / 'out'}:v1")
    assert_oci_layout_has_image(tmp_path / "out", "v1", first)
    # The tag moved through C (B had it cached): B pulls the new image.
    second = make_image(layers=[random_layer(100_000)])
    write_oci_layout(tmp_path / "src2", {"v1": second})
    copy(f"oci:{tmp_path / 'src2'}:v1", f"docker://{c.host}/skopeo/app:v1")
    copy(f"docker://{b.host}/skopeo/app:v1", f"oci:{tmp_path / 'out2'}:v1")
    assert_oci_layout_has_image(tmp_path / "out2", "v1", second)


def test_immutable_tags_hold_across_replicas(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two replicas race to push different manifests to one immutable tag: the tag lock is in Redis, so
    exactly one wins and the other gets 409, and both replicas then answer the winner."""
    section = (f"[blob_store.fs]\nroot_dir = {toml_value(tmp_path / 'shared')}\n"
               f"[metadata_store.fs.redis]\nurl = {toml_value(redis_server.url)}\n"
               f"[cache.redis]\nurl = {toml_value(redis_server.url)}\n[global]\nimmutable_tags = true\n")
    servers = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        servers.append(RegistryProcess(workdir, section).start())
    try:
        images = [make_image(), make_image()]
        for server, image in zip(servers, images, strict=True):  # blobs first, by digest
            assert push_image(server.session, server.url, "team/app", image).status_code == 201
        results: list[int] = []

        def put(server: RegistryProcess, image: Image) -> None:
            results.append(server.session.put(f"{server.url}/v2/team/app/manifests/1.0", data=image.manifest,
                                              headers={"Content-Type": image.media_type},
                                              timeout=60).status_code)

        threads = [threading.Thread(target=put, args=pair) for pair in zip(servers, images, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(results) == [201, 409], results
        answers = {_digest(server, "team/app", "1.0") for server in servers}
        assert len(answers) == 1 and answers <= {image.digest for image in images}, answers
    finally:
        for server in servers:
            server.kill()


@pytest.mark.parametrize("store", ["fs", "s3"])
def test_cold_pulls_of_one_blob_through_three_replicas_make_one_upstream_get(
        store: str, request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer) -> None:
    """20 clients pull one uncached blob, spread over three pull-through replicas at once: one replica
    fetches it (under the digest's fetch lock in Redis), the others serve it from the store once it is
    committed. Exactly one upstream GET, every client gets the right bytes."""
    from tests.helpers.distribution import DistributionProcess
    from tests.helpers.upstreams import Proxy, pull_through_config, upload_blob

    upstream = DistributionProcess(tmp_path / "upstream", tmp_path / "upstream-data").start()
    proxy = Proxy(upstream.url, throttle=8 * 1024 * 1024)  # ~1 s for the blob: the pulls overlap
    proxy.start()
    servers: list[RegistryProcess] = []
    try:
        blob = random_layer(8 * 1024 * 1024)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        upload_blob(requests.Session(), upstream.url, "team/app", blob)
        if store == "fs":
            section = f"[blob_store.fs]\nroot_dir = {toml_value(tmp_path / 'shared')}\n"
        else:
            moto: MotoServer = request.getfixturevalue("moto_server")
            section = s3_section(new_s3_store(moto.endpoint))
        section += (f"[metadata_store.{store}.redis]\nurl = {toml_value(redis_server.url)}\n"
                    f"[cache.redis]\nurl = {toml_value(redis_server.url)}\n")
        config = pull_through_config([{"url": proxy.url}]) + section
        for name in ("a", "b", "c"):
            workdir = tmp_path / name
            workdir.mkdir()
            servers.append(RegistryProcess(workdir, config).start())
        barrier = threading.Barrier(20)
        answers: list[tuple[int, bytes]] = []

        def pull(number: int) -> None:
            server = servers[number % 3]
            barrier.wait(30)
            response = requests.get(f"{server.url}/v2/cache/team/app/blobs/{digest}", timeout=120)
            answers.append((response.status_code, response.content))

        threads = [threading.Thread(target=pull, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        assert len(answers) == 20 and all(status == 200 and body == blob for status, body in answers), \
            [status for status, _ in answers]
        assert proxy.get_count(f"/v2/team/app/blobs/{digest}") == 1, proxy.counts
    finally:
        for server in servers:
            server.kill()
        proxy.stop()
        upstream.stop()
