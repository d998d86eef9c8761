"""podman pulls from (and pushes to) the real server, with all its state kept in the test's tmp folder."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.interop import copy
from tests.helpers.oci import OCI_MANIFEST, digest_of, layer_tar, make_image, write_oci_layout
from tests.helpers.server import RegistryProcess
from tests.helpers.tools import require_tool


class Podman:
    """`podman` with vfs storage, cgroupfs, file events and registries.conf all under one tmp folder."""

    def __init__(self, home: Path, runroot: Path, registry_host: str) -> None:
        self.binary = require_tool("podman")
        self.home = home
        self.runroot = runroot  # podman refuses a runroot longer than 50 characters
        for sub in ("root", "tmp", "xdg", "networks"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "registries.conf").write_text(
            'unqualified-search-registries = []\n\n'
            f'[[registry]]\nlocation = "{registry_host}"\ninsecure = true\n')
        (home / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{runroot}"\ngraphroot = "{home / "root"}"\n')
        (home / "containers.conf").write_text(
            '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{home / "events.log"}"\n\n'
            # netavark would create /run/containers/networks whatever --network-config-dir says
            '[network]\nnetwork_backend = "cni"\n')
        self.env = {**os.environ,
                    "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"),
                    "CONTAINERS_STORAGE_CONF": str(home / "storage.conf"),
                    "CONTAINERS_CONF": str(home / "containers.conf"),
                    "XDG_RUNTIME_DIR": str(home / "xdg"),
                    "TMPDIR": str(home / "tmp")}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [self.binary, "--storage-driver", "vfs", "--root", str(self.home / "root"),
                   "--runroot", str(self.runroot), "--tmpdir", str(self.home / "tmp"),
                   "--cgroup-manager=cgroupfs", "--events-backend=file",
                   "--network-config-dir", str(self.home / "networks"), *args]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120,
                                check=False)
        if check:
            assert result.returncode == 0, f"podman {' '.join(args)} failed:\n{result.stderr}"
        return result


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
