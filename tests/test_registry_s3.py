"""The registry server on S3 (moto in server mode), end to end: one bucket shared with distribution 2.8
in both directions, a server killed in the middle of a multipart upload, S3 going away in the middle
of pushes and pulls and coming back, and S3 50 ms away.

The API suite and the skopeo/podman interop on S3 are tests/test_conformance_storage.py; the driver
itself is tests/test_storage_contract.py and tests/test_storage_s3.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import stores
from tests.helpers.distribution import DistributionProcess
from tests.helpers.drivers import DriverSpec
from tests.helpers.interop import assert_registry_has_image, copy
from tests.helpers.moto import ACCESS_KEY_ID, REGION, SECRET_KEY, MotoServer
from tests.helpers.oci import digest_of, make_image, push_image, random_layer, write_oci_layout
from tests.helpers.server import RegistryProcess
from tests.helpers.tcp_proxy import TcpProxy
from tests.test_interop_distribution import (
    assert_deleted,
    assert_distribution_serves,
    check_over_http,
    pull_and_compare,
    push_and_delete,
    push_fixture_set,
    push_referrer,
)

MIB = 1024 * 1024
PART = 5 * MIB


@pytest.fixture
def bucket(moto_server: MotoServer) -> Iterator[DriverSpec]:
    spec = stores.new_s3_store(moto_server.endpoint)
    yield spec
    moto_server.remove_bucket(spec.bucket)


def on_s3(start_registry: Callable[..., RegistryProcess], spec: DriverSpec, endpoint: str | None = None,
          **settings: object) -> RegistryProcess:
    """A server whose blobs and metadata are in `spec`'s bucket (reached at `endpoint`, e.g. a proxy)."""
    reached = DriverSpec("s3", endpoint=endpoint or spec.endpoint, bucket=spec.bucket,
                         key_prefix=spec.key_prefix)
    server = start_registry(stores.s3_section(reached, multipart_part_size=PART, **settings))
    server.store = stores.StoreView(spec)
    return server


def distribution_on(spec: DriverSpec, workdir: Path) -> DistributionProcess:
    """distribution 2.8's s3 driver on the same bucket and root (`rootdirectory` = our key_prefix)."""
    return DistributionProcess(workdir, workdir / "unused", storage={"s3": {
        "accesskey": ACCESS_KEY_ID, "secretkey": SECRET_KEY, "region": REGION,
        "regionendpoint": spec.endpoint, "bucket": spec.bucket, "rootdirectory": f"/{spec.key_prefix}",
        "secure": False, "v4auth": True, "chunksize": PART}})


def multipart_uploads(moto: MotoServer, spec: DriverSpec) -> list[str]:
    listed = moto.client().list_multipart_uploads(Bucket=spec.bucket)
    return [upload["Key"] for upload in listed.get("Uploads", ())]


def parts_of(moto: MotoServer, spec: DriverSpec, key: str) -> int:
    client = moto.client()
    uploads = client.list_multipart_uploads(Bucket=spec.bucket).get("Uploads", ())
    return sum(len(client.list_parts(Bucket=spec.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                   .get("Parts", ())) for upload in uploads if upload["Key"] == key)


def blob_keys(server: RegistryProcess) -> list[str]:
    return server.store.keys("docker/registry/v2/blobs")


def location(response: requests.Response) -> str:
    """The session's path (and query) from a Location header, absolute or not."""
    found = urlsplit(response.headers["Location"])
    return found.path + (f"?{found.query}" if found.query else "")


def with_digest(path: str, digest: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}digest={digest}"


# --- one bucket, two registries ---------------------------------------------------------------------
def test_distribution_serves_what_we_wrote_to_the_bucket(start_registry: Callable[..., RegistryProcess],
                                                         bucket: DriverSpec, tmp_path: Path) -> None:
    ours = on_s3(start_registry, bucket)
    imgs, index = push_fixture_set(ours.host, tmp_path / "push")
    doomed = push_and_delete(ours.host, tmp_path, delete_tag=True)
    artifact = push_referrer(ours.url, imgs["oci"])
    check_over_http(ours.url, imgs, index)
    ours.stop()

    distribution = distribution_on(bucket, tmp_path / "distribution").start()
    assert_distribution_serves(distribution, tmp_path, imgs, index, doomed, artifact)


def test_we_serve_what_distribution_wrote_to_the_bucket(start_registry: Callable[..., RegistryProcess],
                                                        bucket: DriverSpec, tmp_path: Path) -> None:
    distribution = distribution_on(bucket, tmp_path / "distribution").start()
    try:
        imgs, index = push_fixture_set(distribution.host, tmp_path / "push")
        doomed = push_and_delete(distribution.host, tmp_path, delete_tag=False)  # 2.8 cannot delete a tag
    finally:
        distribution.stop()
    ours = on_s3(start_registry, bucket)
    pull_and_compare(ours.host, tmp_path / "pull", imgs, index)
    check_over_http(ours.url, imgs, index)
    assert_deleted(ours.url, doomed)
    ours.stop()

    # A layer over several parts: distribution's own multipart upload is what we read back.
    big = make_image([random_layer(12 * MIB, "big.bin")])
    write_oci_layout(tmp_path / "big", {"b": big})
    distribution = distribution_on(bucket, tmp_path / "distribution-big").start()
    try:
        copy(f"oci:{tmp_path / 'big'}:b", f"docker://{distribution.host}/interop/big:v1")
    finally:
        distribution.stop()
    ours.start()
    with requests.Session() as session:
        assert_registry_has_image(session, ours.url, "interop/big", "v1", big)
    # What distribution wrote stays writable through us, and distribution reads back what we added.
    copy(f"docker://{ours.host}/interop/app:1.0", f"docker://{ours.host}/interop/app:2.0")
    extra = make_image([random_layer(7 * MIB, "extra.bin")])
    write_oci_layout(tmp_path / "extra", {"e": extra})
    copy(f"oci:{tmp_path / 'extra'}:e", f"docker://{ours.host}/interop/app:extra")
    ours.stop()
    again = distribution_on(bucket, tmp_path / "distribution-again").start()
    try:
        with requests.Session() as session:
            assert_registry_has_image(session, again.url, "interop/app", "2.0", imgs["oci"])
            assert_registry_has_image(session, again.url, "interop/app", "extra", extra)
    finally:
        again.stop()


# --- a server killed mid-upload ---------------------------------------------------------------------
def test_sigkill_in_the_middle_of_a_multipart_upload(start_registry: Callable[..., RegistryProcess],
                                                     bucket: DriverSpec, moto_server: MotoServer) -> None:
    server = on_s3(start_registry, bucket)
    data = os.urandom(30 * MIB)
    digest = digest_of(data)
    closed = 6 * MIB  # one part and a tail, closed by a finished PATCH
    started = server.post("/v2/kill/app/blobs/uploads/")
    assert started.status_code == 202
    upload_id = started.headers["Docker-Upload-UUID"]
    path = f"/v2/kill/app/blobs/uploads/{upload_id}"
    first = server.patch(path, data=data[:closed], headers={"Content-Range": f"0-{closed - 1}"})
    assert first.status_code == 202, first.text
    session_key = f"{bucket.key_prefix}/docker/registry/v2/repositories/kill/app/_uploads/{upload_id}/data"
    assert parts_of(moto_server, bucket, session_key) == 1

    # The next PATCH streams 24 MiB; once S3 holds parts of it beyond what was closed, SIGKILL.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"PATCH {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/octet-stream"
                     f"\r\nContent-Length: {len(data) - closed}\r\n\r\n".encode())
        sock.sendall(data[closed:closed + 18 * MIB])
        deadline = time.monotonic() + 60
        while parts_of(moto_server, bucket, session_key) < 3:
            assert time.monotonic() < deadline, "the server never uploaded a part of the streaming PATCH"
            time.sleep(0.05)
        server.kill()

    # Nothing partial is visible: no blob, and the orphan multipart upload is listed (for scrub).
    assert blob_keys(server) == []
    assert multipart_uploads(moto_server, bucket) == [session_key]
    server.start()
    assert server.head(f"/v2/kill/app/blobs/{digest}").status_code == 404
    # The session resumes from what it had closed: parts uploaded after it are not counted.
    status = server.get(path)
    assert status.status_code == 204, status.text
    assert status.headers["Range"] == f"0-{closed - 1}"
    rest = server.patch(path, data=data[closed:], headers={"Content-Range": f"{closed}-{len(data) - 1}"})
    assert rest.status_code == 202, rest.text
    done = server.put(path, params={"digest": digest})
    assert done.status_code == 201, done.text
    got = server.get(f"/v2/kill/app/blobs/{digest}")
    assert got.status_code == 200 and got.content == data
    # The session's multipart upload became the blob: nothing is left for scrub.
    assert multipart_uploads(moto_server, bucket) == []


# --- S3 going away ----------------------------------------------------------------------------------
@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[TcpProxy]:
    started = TcpProxy(moto_server.port).start()
    yield started
    started.stop()


def assert_unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:300])
    if response.request.method != "HEAD":
        assert response.json()["errors"][0]["code"] == "UNAVAILABLE", response.text
        # What the client learns is that storage is unavailable, not where the bucket is.
        assert "127.0.0.1" not in response.text and "bucket" not in response.text, response.text


def test_s3_down_in_the_middle_of_pushes_and_pulls(start_registry: Callable[..., RegistryProcess],
                                                   bucket: DriverSpec, proxy: TcpProxy) -> None:
    server = on_s3(start_registry, bucket, endpoint=proxy.endpoint, connect_timeout=1, read_timeout=5,
                   max_attempts=2)
    image = make_image([random_layer(8 * MIB, "layer.bin")])
    assert push_image(server.session, server.url, "outage/app", image, "v1").status_code == 201
    layer = image.layers[0]
    data = os.urandom(12 * MIB)
    started = server.post("/v2/outage/app/blobs/uploads/")
    path = location(started)
    first = server.patch(path, data=data[:6 * MIB], headers={"Content-Range": f"0-{6 * MIB - 1}"})
    assert first.status_code == 202, first.text

    # A pull in progress when S3 goes: the client gets a cut body or the whole blob, never other bytes.
    pull = server.session.get(f"{server.url}/v2/outage/app/blobs/{digest_of(layer)}", stream=True, timeout=30)
    assert pull.status_code == 200
    received = pull.raw.read(MIB)
    proxy.go_down()
    with contextlib.suppress(Exception):  # a cut connection is one of the two right outcomes
        received += pull.raw.read()
    assert layer.startswith(received)
    pull.close()

    # While S3 is away: clear 503s in the OCI envelope, soon.
    began = time.monotonic()
    assert_unavailable(server.get(f"/v2/outage/app/blobs/{digest_of(layer)}"))
    assert_unavailable(server.head(f"/v2/outage/app/blobs/{digest_of(data)}"))
    assert_unavailable(server.post("/v2/outage/app/blobs/uploads/"))
    assert_unavailable(server.patch(path, data=data[6 * MIB:],
                                    headers={"Content-Range": f"{6 * MIB}-{len(data) - 1}"}))
    assert_unavailable(server.put(with_digest(path, digest_of(data[:6 * MIB]))))
    other = make_image()
    assert_unavailable(server.put("/v2/outage/app/manifests/v2", data=other.manifest,
                                  headers={"Content-Type": other.media_type}))
    assert time.monotonic() - began < 60
    # What readers are answered from memory is still right (the tag was pushed before the outage).
    listed = server.get("/v2/outage/app/tags/list")
    assert listed.status_code == 503 or listed.json()["tags"] == ["v1"], listed.text

    # S3 is back: the same server serves and accepts again, and nothing was half-written.
    proxy.go_up()
    assert server.head(f"/v2/outage/app/blobs/{digest_of(data)}").status_code == 404
    assert server.get("/v2/outage/app/manifests/v2").status_code == 404
    status = server.get(path)
    assert status.status_code == 204, status.text
    assert status.headers["Range"] == f"0-{6 * MIB - 1}"
    rest = server.patch(path, data=data[6 * MIB:], headers={"Content-Range": f"{6 * MIB}-{len(data) - 1}"})
    assert rest.status_code == 202, rest.text
    assert server.put(with_digest(path, digest_of(data))).status_code == 201
    assert server.get(f"/v2/outage/app/blobs/{digest_of(data)}").content == data
    assert server.get(f"/v2/outage/app/blobs/{digest_of(layer)}").content == layer
    assert push_image(server.session, server.url, "outage/app", other, "v2").status_code == 201
    assert server.get("/v2/outage/app/tags/list").json()["tags"] == ["v1", "v2"]


def test_push_and_pull_with_s3_50_ms_away(start_registry: Callable[..., RegistryProcess], bucket: DriverSpec,
                                          moto_server: MotoServer, tmp_path: Path) -> None:
    slow = TcpProxy(moto_server.port, latency=0.05).start()
    try:
        server = on_s3(start_registry, bucket, endpoint=slow.endpoint)
        # Monolithic pushes, a chunked one of several parts, a manifest; skopeo in and out.
        image = make_image([random_layer(200_000, "a"), random_layer(7 * MIB, "b")])
        assert push_image(server.session, server.url, "slow/app", image, "v1").status_code == 201
        data = os.urandom(13 * MIB)
        path = location(server.post("/v2/slow/app/blobs/uploads/"))
        for offset in range(0, len(data), 4 * MIB):
            part = data[offset:offset + 4 * MIB]
            patched = server.patch(path, data=part, headers={
                "Content-Range": f"{offset}-{offset + len(part) - 1}"})
            assert patched.status_code == 202, patched.text
            path = location(patched)
        assert server.put(with_digest(path, digest_of(data))).status_code == 201
        assert server.get(f"/v2/slow/app/blobs/{digest_of(data)}").content == data
        with requests.Session() as session:
            assert_registry_has_image(session, server.url, "slow/app", "v1", image)
        write_oci_layout(tmp_path / "src", {"s": image})
        copy(f"oci:{tmp_path / 'src'}:s", f"docker://{server.host}/slow/copied:v1")
        copy(f"docker://{server.host}/slow/copied:v1", f"oci:{tmp_path / 'out'}:v1")
        with requests.Session() as session:
            assert_registry_has_image(session, server.url, "slow/copied", "v1", image)
        assert slow.connections > 0  # it really went through the slow path
    finally:
        slow.stop()
