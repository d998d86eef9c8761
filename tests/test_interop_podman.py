"""podman pulls from (and pushes to) the real server, with all its state kept in the test's tmp folder."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.interop import copy
from tests.helpers.oci import OCI_MANIFEST, digest_of, layer_tar, make_image, write_oci_layout
from tests.helpers.podman import Podman
from tests.helpers.server import RegistryProcess


@pytest.fixture
def podman(registry: RegistryProcess, tmp_path: Path) -> Iterator[Podman]:
    runroot = Path(tempfile.mkdtemp(prefix="podman-run-"))
    try:
        yield Podman(tmp_path / "podman", runroot, registry.host)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def test_podman_pulls_image_pushed_by_skopeo(registry: RegistryProcess, podman: Podman,
                                             tmp_path: Path) -> None:
    files = [{f"layer{i}/data.bin": os.urandom(200_000), f"layer{i}/hello.txt": f"hello {i}\n".encode()}
             for i in range(3)]
    image = make_image([layer_tar(content) for content in files])
    write_oci_layout(tmp_path / "src", {"v1": image})
    copy(f"oci:{tmp_path / 'src'}:v1", f"docker://{registry.host}/podman/img:v1")

    reference = f"{registry.host}/podman/img:v1"
    podman("pull", "--tls-verify=false", reference)

    listed = json.loads(podman("images", "--format", "json").stdout)
    assert len(listed) == 1, listed
    entry = listed[0]
    assert reference in entry["Names"]
    assert entry["Digest"] == image.digest
    assert entry["Id"] == digest_of(image.config).split(":", 1)[1]
    assert f"{registry.host}/podman/img@{image.digest}" in entry["RepoDigests"]

    inspected = json.loads(podman("image", "inspect", reference).stdout)[0]
    assert inspected["ManifestType"] == OCI_MANIFEST
    assert inspected["RootFS"]["Layers"] == json.loads(image.config)["rootfs"]["diff_ids"]
    assert inspected["Architecture"] == "amd64"

    # The unpacked root filesystem holds exactly the files of every layer.
    mountpoint = Path(podman("image", "mount", reference).stdout.strip())
    try:
        for content in files:
            for name, data in content.items():
                assert (mountpoint / name).read_bytes() == data, name
    finally:
        podman("image", "unmount", reference)

    # Pulling again by digest is a no-op that resolves to the same image.
    podman("pull", "--tls-verify=false", f"{registry.host}/podman/img@{image.digest}")
    assert len(json.loads(podman("images", "--format", "json").stdout)) == 1


def test_podman_push_then_pull_back(registry: RegistryProcess, podman: Podman, tmp_path: Path) -> None:
    """podman pushes what it pulled to another repository; the layers' uncompressed content is unchanged."""
    image = make_image([layer_tar({f"f{i}": os.urandom(100_000)}) for i in range(2)])
    write_oci_layout(tmp_path / "src", {"v": image})
    copy(f"oci:{tmp_path / 'src'}:v", f"docker://{registry.host}/podman/src:v")
    podman("pull", "--tls-verify=false", f"{registry.host}/podman/src:v")
    podman("push", "--tls-verify=false", f"{registry.host}/podman/src:v", f"{registry.host}/podman/dst:v")

    response = registry.get("/v2/podman/dst/manifests/v", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == digest_of(response.content)
    manifest = response.json()
    config = registry.get(f"/v2/podman/dst/blobs/{manifest['config']['digest']}")
    assert config.status_code == 200
    diff_ids = json.loads(image.config)["rootfs"]["diff_ids"]
    assert json.loads(config.content)["rootfs"]["diff_ids"] == diff_ids
    assert len(manifest["layers"]) == len(diff_ids)
    for descriptor, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        blob = registry.get(f"/v2/podman/dst/blobs/{descriptor['digest']}")
        assert blob.status_code == 200
        assert digest_of(blob.content) == descriptor["digest"]
        assert len(blob.content) == descriptor["size"]
        assert digest_of(gzip.decompress(blob.content)) == diff_id
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.content))) as tar:
            assert tar.getnames()

    tags = registry.get("/v2/podman/dst/tags/list").json()
    assert tags == {"name": "podman/dst", "tags": ["v"]}
