"""Many clients pushing images that share layers at the same time; everything reads back byte-identical."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.helpers.interop import assert_registry_has_image
from tests.helpers.oci import Image, digest_of, make_image, random_layer, write_oci_layout
from tests.helpers.server import RegistryProcess
from tests.helpers.tools import require_tool

CLIENTS = 20
CHUNK = 64 * 1024


def absolute(url: str, location: str) -> str:
    return location if location.startswith("http") else url + location


def upload_monolithic(session: requests.Session, url: str, name: str, blob: bytes) -> None:
    response = session.post(f"{url}/v2/{name}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob,
                            headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert response.status_code == 201, response.text


def start_session(session: requests.Session, url: str, name: str) -> str:
    response = session.post(f"{url}/v2/{name}/blobs/uploads/", timeout=60)
    assert response.status_code == 202, response.text
    return absolute(url, response.headers["Location"])


def finish(session: requests.Session, url: str, location: str, blob: bytes, body: bytes = b"") -> None:
    response = session.put(location, params={"digest": digest_of(blob)}, data=body,
                           headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest_of(blob)


def upload_post_put(session: requests.Session, url: str, name: str, blob: bytes) -> None:
    finish(session, url, start_session(session, url, name), blob, blob)


def upload_chunked(session: requests.Session, url: str, name: str, blob: bytes) -> None:
    """POST, then PATCH chunks with Content-Range, then an empty PUT."""
    location = start_session(session, url, name)
    for start in range(0, len(blob), CHUNK):
        chunk = blob[start:start + CHUNK]
        response = session.patch(location, data=chunk, timeout=60, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(chunk) - 1}"})
        assert response.status_code == 202, response.text
        assert response.headers["Range"] == f"0-{start + len(chunk) - 1}"
        location = absolute(url, response.headers["Location"])
    finish(session, url, location, blob)


def upload_streamed(session: requests.Session, url: str, name: str, blob: bytes) -> None:
    """One PATCH with chunked transfer encoding and no Content-Length (what the Docker CLI does)."""
    location = start_session(session, url, name)

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(blob), CHUNK):
            yield blob[start:start + CHUNK]

    response = session.patch(location, data=pieces(), timeout=60,
                             headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == f"0-{len(blob) - 1}"
    finish(session, url, absolute(url, response.headers["Location"]), blob)


def upload_mount_or_push(session: requests.Session, url: str, name: str, blob: bytes) -> None:
    """Try a cross-repository mount from the shared repository; fall back to the session it opens."""
    response = session.post(f"{url}/v2/{name}/blobs/uploads/", timeout=60,
                            params={"mount": digest_of(blob), "from": "conc/shared"})
    if response.status_code == 201:
        assert response.headers["Docker-Content-Digest"] == digest_of(blob)
        return
    assert response.status_code == 202, response.text
    finish(session, url, absolute(url, response.headers["Location"]), blob, blob)


UPLOADERS: list[Callable[[requests.Session, str, str, bytes], None]] = [
    upload_monolithic, upload_post_put, upload_chunked, upload_streamed, upload_mount_or_push]


def push(session: requests.Session, url: str, name: str, image: Image, tags: list[str], mode: int) -> None:
    uploader = UPLOADERS[mode % len(UPLOADERS)]
    for blob in image.blobs.values():
        head = session.head(f"{url}/v2/{name}/blobs/{digest_of(blob)}", timeout=60)
        assert head.status_code in (200, 404), head.status_code
        uploader(session, url, name, blob)
    for tag in tags:
        response = session.put(f"{url}/v2/{name}/manifests/{tag}", data=image.manifest, timeout=60,
                               headers={"Content-Type": image.media_type})
        assert response.status_code == 201, response.text
        assert response.headers["Docker-Content-Digest"] == image.digest


def plan() -> list[tuple[str, list[str], Image]]:
    """Clients 0-7 share one repository, 8-13 each have their own, 14-19 also race for one tag."""
    shared_layers = [random_layer(200_000, f"base{i}") for i in range(3)]
    jobs = []
    for i in range(CLIENTS):
        layers = [*shared_layers[: 1 + i % 3], random_layer(100_000 + 1000 * i, f"own{i}")]
        image = make_image(layers, docker=i % 4 == 3)
        if i < 8:
            jobs.append(("conc/shared", [f"t{i}"], image))
        elif i < 14:
            jobs.append((f"conc/r{i}", ["v1"], image))
        else:
            jobs.append(("conc/race", [f"c{i}", "latest"], image))
    return jobs


def test_twenty_clients_push_shared_layers_at_once(registry: RegistryProcess) -> None:
    jobs = plan()
    barrier = threading.Barrier(CLIENTS)

    def client(index: int) -> None:
        name, tags, image = jobs[index]
        with requests.Session() as session:
            barrier.wait(timeout=30)
            push(session, registry.url, name, image, tags, index)

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, i) for i in range(CLIENTS)]
        errors = [f.exception() for f in futures]
    assert errors == [None] * CLIENTS, (errors, registry.logs()[-3000:])

    with requests.Session() as session:
        for name, tags, image in jobs:
            for tag in tags:
                if tag != "latest":
                    assert_registry_has_image(session, registry.url, name, tag, image)
            assert_registry_has_image(session, registry.url, name, image.digest, image)

        race = session.get(f"{registry.url}/v2/conc/race/manifests/latest", timeout=60)
        assert race.status_code == 200
        assert race.content in {image.manifest for name, _, image in jobs if name == "conc/race"}
        assert race.headers["Docker-Content-Digest"] == digest_of(race.content)

        assert session.get(f"{registry.url}/v2/conc/shared/tags/list", timeout=60).json()["tags"] == [
            f"t{i}" for i in range(8)]
        assert session.get(f"{registry.url}/v2/conc/race/tags/list", timeout=60).json()["tags"] == sorted(
            [f"c{i}" for i in range(14, 20)] + ["latest"])
        catalog = session.get(f"{registry.url}/v2/_catalog", timeout=60).json()["repositories"]
        assert catalog == sorted({name for name, _, _ in jobs})


def test_same_blob_uploaded_by_twenty_sessions_at_once(registry: RegistryProcess) -> None:
    """Twenty sessions commit the same digest into one repository at once, with different upload methods."""
    blob = random_layer(1_000_000)
    barrier = threading.Barrier(CLIENTS)

    def client(index: int) -> None:
        with requests.Session() as session:
            barrier.wait(timeout=30)
            UPLOADERS[index % 4](session, registry.url, "conc/sameblob", blob)

    with ThreadPoolExecutor(CLIENTS) as pool:
        errors = [f.exception() for f in [pool.submit(client, i) for i in range(CLIENTS)]]
    assert errors == [None] * CLIENTS, (errors, registry.logs()[-3000:])
    got = registry.get(f"/v2/conc/sameblob/blobs/{digest_of(blob)}")
    assert got.status_code == 200
    assert got.content == blob
    blobs_dir = registry.root / "docker/registry/v2/blobs/sha256"
    assert (blobs_dir / digest_of(blob)[7:9] / digest_of(blob)[7:] / "data").read_bytes() == blob


def test_twenty_skopeo_processes_push_and_pull_at_once(registry: RegistryProcess, tmp_path: Path) -> None:
    binary = require_tool("skopeo")
    shared = [random_layer(150_000, f"s{i}") for i in range(2)]
    images = {f"img{i}": make_image([*shared, random_layer(50_000, f"u{i}")]) for i in range(CLIENTS)}
    src = tmp_path / "src"
    write_oci_layout(src, images)

    def run(args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen([binary, "--insecure-policy", "copy", "--src-tls-verify=false",
                                 "--dest-tls-verify=false", *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_all(processes: list[subprocess.Popen[bytes]]) -> None:
        failures = []
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            if process.returncode != 0:
                failures.append(stderr.decode(errors="replace"))
        assert not failures, failures

    # Half into one repository, half into their own.
    def dest(i: int) -> str:
        return f"docker://{registry.host}/sk/shared:{i}" if i % 2 else f"docker://{registry.host}/sk/own{i}:v"

    wait_all([run([f"oci:{src}:img{i}", dest(i)]) for i in range(CLIENTS)])
    out = tmp_path / "out"
    out.mkdir()
    wait_all([run([dest(i), f"oci:{out / str(i)}:v"]) for i in range(CLIENTS)])

    for i in range(CLIENTS):
        image = images[f"img{i}"]
        layout = out / str(i)
        for digest, blob in {image.digest: image.manifest, **image.blobs}.items():
            assert (layout / "blobs/sha256" / digest[7:]).read_bytes() == blob, (i, digest)
