"""The same data folder served by this product and by CNCF distribution 2.8 (Debian's docker-registry)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

from tests.helpers.distribution import DistributionProcess
from tests.helpers.interop import (
    assert_oci_layout_has_image,
    assert_registry_has_image,
    copy,
    dir_blob,
    oci_blob,
    oci_ref,
    read_dir_manifest,
    skopeo,
    write_dir_layout,
)
from tests.helpers.oci import (
    EMPTY_JSON,
    OCI_INDEX,
    Image,
    digest_of,
    make_image,
    make_index,
    push_image,
    random_layer,
    write_oci_layout,
)
from tests.helpers.server import RegistryProcess

EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


def images() -> dict[str, Image]:
    shared = random_layer(150_000, "shared.bin")
    return {
        "oci": make_image([shared, *(random_layer(200_000, f"o{i}") for i in range(2))]),
        "arm": make_image([shared, random_layer(100_000, "arm")], architecture="arm64"),
        "docker": make_image([shared, random_layer(120_000, "d")], docker=True),
    }


def push_fixture_set(host: str, tmp_path: Path) -> tuple[dict[str, Image], bytes]:
    """Push an OCI image (two tags), a Docker schema2 image and a multi-arch index with skopeo."""
    imgs = images()
    index = make_index([imgs["oci"], imgs["arm"]], platforms=[{"architecture": "amd64", "os": "linux"},
                                                              {"architecture": "arm64", "os": "linux"}])
    src = tmp_path / "src"
    write_oci_layout(src, {"oci": imgs["oci"], "arm": imgs["arm"]}, index_refs={"multi": index})
    write_dir_layout(tmp_path / "docker-src", imgs["docker"])
    copy(f"oci:{src}:oci", f"docker://{host}/interop/app:1.0")
    copy(f"oci:{src}:oci", f"docker://{host}/interop/app:latest")
    copy(f"dir:{tmp_path / 'docker-src'}", f"docker://{host}/interop/app:docker")
    copy(f"oci:{src}:multi", f"docker://{host}/interop/multi:v1", "--all")
    return imgs, index


def pull_and_compare(host: str, tmp_path: Path, imgs: dict[str, Image], index: bytes) -> None:
    """Pull everything `push_fixture_set` pushed back through `host` with skopeo: byte-identical."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "pulled"
    for tag in ("1.0", "latest"):
        copy(f"docker://{host}/interop/app:{tag}", f"oci:{out}:{tag}")
        assert_oci_layout_has_image(out, tag, imgs["oci"])

    docker_out = tmp_path / "pulled-docker"
    copy(f"docker://{host}/interop/app:docker", f"dir:{docker_out}")
    assert read_dir_manifest(docker_out) == imgs["docker"].manifest
    for digest, blob in imgs["docker"].blobs.items():
        assert dir_blob(docker_out, digest) == blob

    multi_out = tmp_path / "pulled-multi"
    copy(f"docker://{host}/interop/multi:v1", f"oci:{multi_out}:v1", "--all")
    assert oci_ref(multi_out, "v1")["digest"] == digest_of(index)
    assert oci_blob(multi_out, digest_of(index)) == index
    for image in (imgs["oci"], imgs["arm"]):
        assert oci_blob(multi_out, image.digest) == image.manifest
        for digest, blob in image.blobs.items():
            assert oci_blob(multi_out, digest) == blob

    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{host}/interop/app").stdout)
    assert sorted(tags["Tags"]) == ["1.0", "docker", "latest"]
    multi_tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{host}/interop/multi").stdout)
    assert multi_tags["Tags"] == ["v1"]


def check_over_http(url: str, imgs: dict[str, Image], index: bytes, ordered: bool = True) -> None:
    """Plain HTTP pulls; `ordered=False` for distribution 2.8, which lists tags in directory order."""
    with requests.Session() as session:
        for tag in ("1.0", "latest"):
            assert_registry_has_image(session, url, "interop/app", tag, imgs["oci"])
        assert_registry_has_image(session, url, "interop/app", "docker", imgs["docker"])
        for image in (imgs["oci"], imgs["arm"]):
            assert_registry_has_image(session, url, "interop/multi", image.digest, image)
        got = session.get(f"{url}/v2/interop/multi/manifests/v1", headers={"Accept": OCI_INDEX}, timeout=30)
        assert got.status_code == 200
        assert got.content == index
        assert got.headers["Docker-Content-Digest"] == digest_of(index)
        assert got.headers["Content-Type"].split(";")[0] == OCI_INDEX

        tags = session.get(f"{url}/v2/interop/app/tags/list", timeout=30)
        assert tags.status_code == 200
        listed = tags.json()
        assert listed["name"] == "interop/app"
        assert (listed["tags"] if ordered else sorted(listed["tags"])) == ["1.0", "docker", "latest"]
        catalog = session.get(f"{url}/v2/_catalog", timeout=30)
        assert catalog.status_code == 200
        assert catalog.json() == {"repositories": ["interop/app", "interop/multi"]}


def push_and_delete(host: str, tmp_path: Path, delete_tag: bool) -> Image:
    """Push an image under two tags and delete it by digest; optionally also add and delete a tag on 1.0."""
    doomed = make_image([random_layer(30_000)])
    write_oci_layout(tmp_path / "doomed", {"d": doomed})
    for tag in ("doomed", "doomed2"):
        copy(f"oci:{tmp_path / 'doomed'}:d", f"docker://{host}/interop/app:{tag}")
    with requests.Session() as session:
        deleted = session.delete(f"http://{host}/v2/interop/app/manifests/{doomed.digest}", timeout=30)
        assert deleted.status_code == 202, deleted.text
        if delete_tag:
            copy(f"docker://{host}/interop/app:1.0", f"docker://{host}/interop/app:tmp")
            untagged = session.delete(f"http://{host}/v2/interop/app/manifests/tmp", timeout=30)
            assert untagged.status_code == 202, untagged.text
    return doomed


def assert_deleted(url: str, doomed: Image) -> None:
    with requests.Session() as session:
        for reference in ("doomed", "doomed2", "tmp", doomed.digest):
            response = session.get(f"{url}/v2/interop/app/manifests/{reference}", timeout=30,
                                    headers={"Accept": doomed.media_type})
            assert response.status_code == 404, (reference, response.status_code, response.text)


def push_referrer(url: str, subject: Image) -> Image:
    """An artifact whose `subject` is `subject`, pushed by digest (this product keeps a referrers index)."""
    artifact = make_image([b"signature bytes"], config=EMPTY_JSON, config_media_type=EMPTY_CONFIG,
                          artifact_type="application/vnd.example.signature",
                          subject={"mediaType": subject.media_type, "digest": subject.digest,
                                   "size": len(subject.manifest)})
    with requests.Session() as session:
        pushed = push_image(session, url, "interop/app", artifact)
        assert pushed.status_code == 201, pushed.text
        assert pushed.headers["OCI-Subject"] == subject.digest
        referrers = session.get(f"{url}/v2/interop/app/referrers/{subject.digest}", timeout=30)
        assert referrers.status_code == 200
        assert [d["digest"] for d in referrers.json()["manifests"]] == [artifact.digest]
    return artifact


def assert_distribution_serves(distribution: DistributionProcess, tmp_path: Path, imgs: dict[str, Image],
                               index: bytes, doomed: Image, artifact: Image) -> None:
    """What we wrote, through a started distribution (stopped here): the fixture set byte for byte,
    the deletes, the referrer, and no error in its log but the expected manifest-unknown ones."""
    try:
        pull_and_compare(distribution.host, tmp_path / "pull", imgs, index)
        check_over_http(distribution.url, imgs, index, ordered=False)
        assert_deleted(distribution.url, doomed)
        with requests.Session() as session:
            assert_registry_has_image(session, distribution.url, "interop/app", artifact.digest, artifact)
    finally:
        distribution.stop()
    unexpected = [line for line in distribution.logs().splitlines()
                  if "level=error" in line and 'err.code="manifest unknown"' not in line]
    assert not unexpected, unexpected


def test_distribution_serves_our_data_folder(tmp_path: Path) -> None:
    workdir = tmp_path / "ours-work"
    workdir.mkdir()
    ours = RegistryProcess(workdir).start()
    try:
        imgs, index = push_fixture_set(ours.host, tmp_path / "push")
        doomed = push_and_delete(ours.host, tmp_path, delete_tag=True)
        artifact = push_referrer(ours.url, imgs["oci"])
        check_over_http(ours.url, imgs, index)
        assert_deleted(ours.url, doomed)
    finally:
        assert ours.stop() == 0, ours.logs()

    distribution = DistributionProcess(tmp_path / "distribution", ours.root).start()
    assert_distribution_serves(distribution, tmp_path, imgs, index, doomed, artifact)


def test_we_serve_distribution_data_folder(tmp_path: Path) -> None:
    workdir = tmp_path / "ours-work"
    workdir.mkdir()
    ours = RegistryProcess(workdir)
    ours.root.mkdir()
    distribution = DistributionProcess(tmp_path / "distribution", ours.root).start()
    try:
        imgs, index = push_fixture_set(distribution.host, tmp_path / "push")
        doomed = push_and_delete(distribution.host, tmp_path, delete_tag=False)  # 2.8 cannot delete a tag
        check_over_http(distribution.url, imgs, index, ordered=False)
        assert_deleted(distribution.url, doomed)
    finally:
        distribution.stop()

    ours.start()
    try:
        pull_and_compare(ours.host, tmp_path / "pull", imgs, index)
        check_over_http(ours.url, imgs, index)
        assert_deleted(ours.url, doomed)
        # What distribution wrote stays writable through us: a new tag on an existing manifest, a new push.
        copy(f"docker://{ours.host}/interop/app:1.0", f"docker://{ours.host}/interop/app:2.0")
        extra = make_image([random_layer(50_000)])
        write_oci_layout(tmp_path / "extra", {"e": extra})
        copy(f"oci:{tmp_path / 'extra'}:e", f"docker://{ours.host}/interop/app:extra")
        assert ours.get("/v2/interop/app/tags/list").json()["tags"] == ["1.0", "2.0", "docker", "extra",
                                                                      "latest"]
    finally:
        assert ours.stop() == 0, ours.logs()

    # ...and distribution reads it back after we wrote to its folder.
    distribution = DistributionProcess(tmp_path / "distribution-again", ours.root).start()
    try:
        with requests.Session() as session:
            assert_registry_has_image(session, distribution.url, "interop/app", "2.0", imgs["oci"])
            assert_registry_has_image(session, distribution.url, "interop/app", "extra", extra)
    finally:
        distribution.stop()


def test_upload_started_in_distribution_finishes_here(tmp_path: Path) -> None:
    """An upload session left in `_uploads/<id>` by distribution is resumed by this product after a switch."""
    workdir = tmp_path / "ours-work"
    workdir.mkdir()
    ours = RegistryProcess(workdir)
    ours.root.mkdir()
    blob = random_layer(1_500_000)
    half = len(blob) // 2
    distribution = DistributionProcess(tmp_path / "distribution", ours.root).start()
    try:
        with requests.Session() as session:
            started = session.post(f"{distribution.url}/v2/interop/upload/blobs/uploads/", timeout=30)
            assert started.status_code == 202
            uuid = started.headers["Docker-Upload-UUID"]
            location = started.headers["Location"]
            patched = session.patch(location if location.startswith("http") else distribution.url + location,
                                    data=blob[:half], timeout=30,
                                    headers={"Content-Type": "application/octet-stream"})
            assert patched.status_code == 202, patched.text
            assert patched.headers["Range"] == f"0-{half - 1}"
    finally:
        distribution.stop()
    assert (ours.root / "docker/registry/v2/repositories/interop/upload/_uploads" / uuid / "data").exists()

    ours.start()
    try:
        path = f"/v2/interop/upload/blobs/uploads/{uuid}"
        status = ours.get(path)
        assert status.status_code == 204, (status.status_code, status.text, ours.logs()[-2000:])
        assert status.headers["Range"] == f"0-{half - 1}"
        rest = ours.patch(path, data=blob[half:], headers={"Content-Type": "application/octet-stream",
                                                             "Content-Range": f"{half}-{len(blob) - 1}"})
        assert rest.status_code == 202, rest.text
        done = ours.put(path, params={"digest": digest_of(blob)})
        assert done.status_code == 201, done.text
        got = ours.get(f"/v2/interop/upload/blobs/{digest_of(blob)}")
        assert got.status_code == 200
        assert got.content == blob
    finally:
        ours.stop()


GC_EVERY_SECOND = """
[global.gc]
interval = "1s"
grace_period = "3s"
delete_untagged = true
"""


def test_distribution_serves_what_our_gc_kept(tmp_path: Path) -> None:
    """Our online GC (every second, untagged manifests too) collects a deleted image's blobs while the
    fixture set is pushed; afterwards distribution 2.8 serves everything that was kept from the same
    folder, byte for byte: index children and the referrer of a tagged subject survived."""
    workdir = tmp_path / "ours-work"
    workdir.mkdir()
    ours = RegistryProcess(workdir, GC_EVERY_SECOND).start()
    try:
        imgs, index = push_fixture_set(ours.host, tmp_path / "push")
        doomed = push_and_delete(ours.host, tmp_path, delete_tag=True)
        artifact = push_referrer(ours.url, imgs["oci"])
        layer = digest_of(doomed.layers[0])
        deadline = time.monotonic() + 60
        while ours.head(f"/v2/interop/app/blobs/{layer}").status_code != 404:
            assert time.monotonic() < deadline, "the deleted image's layer was never collected"
            time.sleep(0.5)
        metrics = ours.get("/metrics").text
        assert 'registry_gc_runs_total{result="ok"}' in metrics
        assert "registry_gc_blobs_deleted_total" in metrics
        check_over_http(ours.url, imgs, index)
        assert_deleted(ours.url, doomed)
    finally:
        assert ours.stop() == 0, ours.logs()

    distribution = DistributionProcess(tmp_path / "distribution", ours.root).start()
    assert_distribution_serves(distribution, tmp_path, imgs, index, doomed, artifact)
