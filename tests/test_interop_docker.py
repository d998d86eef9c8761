"""Real dockerd 20.10 and containerd 1.6 push to and pull from the real server (zero config, plain HTTP).

The daemons are private to the test session (tests/helpers/daemons.py); dockerd treats 127.0.0.0/8 as an
insecure registry by default, so `127.0.0.1:<port>` works over HTTP without any daemon option.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from tests.helpers import auth
from tests.helpers.daemons import Ctr, DockerClient, ImageArchive, write_docker_archive
from tests.helpers.oci import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST, DOCKER_MANIFEST, digest_of
from tests.helpers.server import RegistryProcess

DOCKER_LAYER_UNCOMPRESSED = "application/vnd.docker.image.rootfs.diff.tar"


def _log_in(docker: DockerClient, registry: RegistryProcess) -> None:
    """Under REGISTRY_TEST_AUTH the server wants the session's credentials; docker must send them."""
    found = auth.credentials(registry)
    if found is not None:
        docker.login(registry.host, *found)


def _ctr_user(registry: RegistryProcess) -> str | None:
    found = auth.credentials(registry)
    return ":".join(found) if found is not None else None


def _pushed_digest(output: str) -> str:
    """The manifest digest that `docker push` / `docker manifest push` reports."""
    match = re.search(r"(sha256:[0-9a-f]{64})", output.strip().splitlines()[-1])
    assert match, f"no digest in the push output:\n{output}"
    return match.group(1)


def _assert_registry_has_docker_image(registry: RegistryProcess, name: str, reference: str,
                                      archive: ImageArchive, digest: str) -> None:
    """The server holds `name:reference` as a Docker schema2 manifest of `archive`'s config and layers."""
    response = registry.get(f"/v2/{name}/manifests/{reference}", headers={"Accept": DOCKER_MANIFEST})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].split(";")[0] == DOCKER_MANIFEST
    assert response.headers["Docker-Content-Digest"] == digest == digest_of(response.content)
    manifest = response.json()
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert manifest["config"]["digest"] == archive.image_id
    config = registry.get(f"/v2/{name}/blobs/{archive.image_id}")
    assert config.status_code == 200
    assert config.content == archive.config
    assert len(manifest["layers"]) == len(archive.diff_ids)
    for descriptor, diff_id, tar in zip(manifest["layers"], archive.diff_ids, archive.layers, strict=True):
        assert descriptor["mediaType"] == DOCKER_LAYER
        blob = registry.get(f"/v2/{name}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200, (descriptor, blob.status_code)
        assert digest_of(blob.content) == descriptor["digest"]
        assert len(blob.content) == descriptor["size"]
        assert gzip.decompress(blob.content) == tar
        assert digest_of(tar) == diff_id


def test_docker_push_then_pull_back(registry: RegistryProcess, docker_client: DockerClient,
                                    tmp_path: Path) -> None:
    archive = write_docker_archive(tmp_path / "app.tar", "local/app:1", layers=3)
    docker_client.load(archive.path)
    assert docker_client.image_id("local/app:1") == archive.image_id
    _log_in(docker_client, registry)

    reference = f"{registry.host}/team/app:1"
    docker_client.tag("local/app:1", reference)
    digest = _pushed_digest(docker_client.push(reference).stdout)
    _assert_registry_has_docker_image(registry, "team/app", "1", archive, digest)
    assert registry.get("/v2/team/app/tags/list").json() == {"name": "team/app", "tags": ["1"]}

    # Gone locally (image and layers), so the pull has to fetch every layer from the server.
    docker_client.rmi(reference, "local/app:1")
    assert not docker_client.has_image(archive.image_id)
    pulled = docker_client.pull(reference).stdout
    assert f"Digest: {digest}" in pulled
    assert pulled.count("Pull complete") == len(archive.diff_ids), pulled

    inspected = docker_client.inspect(reference)
    assert inspected["Id"] == archive.image_id
    assert inspected["RootFS"]["Layers"] == archive.diff_ids
    assert inspected["RepoDigests"] == [f"{registry.host}/team/app@{digest}"]
    assert inspected["Architecture"] == "amd64"

    # And by digest: the same image.
    docker_client.rmi(reference)
    docker_client.pull(f"{registry.host}/team/app@{digest}")
    assert docker_client.image_id(f"{registry.host}/team/app@{digest}") == archive.image_id


def test_ctr_push_then_pull_back(registry: RegistryProcess, ctr: Ctr, tmp_path: Path) -> None:
    archive = write_docker_archive(tmp_path / "ctr.tar", "local/ctr:1", layers=2)
    ctr.import_archive(archive.path)
    source = ctr.image("docker.io/local/ctr:1")
    assert source.media_type == DOCKER_MANIFEST

    reference = f"{registry.host}/ctr/app:1"
    ctr.tag(source.ref, reference)
    ctr.push(reference, user=_ctr_user(registry))

    # The server holds byte for byte the manifest containerd built on import, and every blob it names.
    response = registry.get("/v2/ctr/app/manifests/1", headers={"Accept": DOCKER_MANIFEST})
    assert response.status_code == 200, response.text
    assert response.headers["Docker-Content-Digest"] == source.digest == digest_of(response.content)
    assert response.content == ctr.content_bytes(source.digest)
    manifest = response.json()
    assert manifest["config"]["digest"] == archive.image_id
    assert registry.get(f"/v2/ctr/app/blobs/{archive.image_id}").content == archive.config
    layer_digests = [descriptor["digest"] for descriptor in manifest["layers"]]
    assert len(layer_digests) == len(archive.layers)
    # containerd 1.6 imports a docker-archive's layers as they are: uncompressed, digest = diff_id.
    assert layer_digests == archive.diff_ids
    for descriptor, tar in zip(manifest["layers"], archive.layers, strict=True):
        assert descriptor["mediaType"] == DOCKER_LAYER_UNCOMPRESSED
        blob = registry.get(f"/v2/ctr/app/blobs/{descriptor['digest']}")
        assert blob.status_code == 200
        assert blob.content == tar
        assert len(blob.content) == descriptor["size"]

    # Removed with its content, then pulled back (and unpacked, which checks each layer's diff_id).
    ctr.remove(reference, source.ref)
    assert ctr.images() == []
    assert not {source.digest, archive.image_id, *layer_digests} & ctr.content()
    ctr.pull(reference, user=_ctr_user(registry))
    assert ctr.image(reference).digest == source.digest
    assert {source.digest, archive.image_id, *layer_digests} <= ctr.content()
    assert ctr.content_bytes(archive.image_id) == archive.config
    for digest, tar in zip(layer_digests, archive.layers, strict=True):
        assert ctr.content_bytes(digest) == tar


def test_docker_manifest_list_of_two_architectures(registry: RegistryProcess, docker_client: DockerClient,
                                                    tmp_path: Path) -> None:
    _log_in(docker_client, registry)
    repository = f"{registry.host}/multi/app"
    archives: dict[str, ImageArchive] = {}
    digests: dict[str, str] = {}
    for arch in ("amd64", "arm64"):
        archive = write_docker_archive(tmp_path / f"{arch}.tar", f"local/multi:{arch}", layers=2,
                                       architecture=arch)
        docker_client.load(archive.path)
        docker_client.tag(archive.repo_tag, f"{repository}:{arch}")
        digests[arch] = _pushed_digest(docker_client.push(f"{repository}:{arch}").stdout)
        _assert_registry_has_docker_image(registry, "multi/app", arch, archive, digests[arch])
        archives[arch] = archive
    assert digests["amd64"] != digests["arm64"]

    docker_client.run("manifest", "create", "--insecure", f"{repository}:list",
                      f"{repository}:amd64", f"{repository}:arm64")
    docker_client.run("manifest", "annotate", "--os", "linux", "--arch", "arm64", "--variant", "v8",
                      f"{repository}:list", f"{repository}:arm64")
    pushed = docker_client.run("manifest", "push", "--insecure", f"{repository}:list").stdout
    list_digest = _pushed_digest(pushed)

    response = registry.get("/v2/multi/app/manifests/list", headers={"Accept": DOCKER_LIST})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].split(";")[0] == DOCKER_LIST
    assert response.headers["Docker-Content-Digest"] == list_digest == digest_of(response.content)
    listed = response.json()
    assert listed["mediaType"] == DOCKER_LIST
    assert listed["schemaVersion"] == 2
    platforms = {entry["digest"]: entry["platform"] for entry in listed["manifests"]}
    assert platforms == {digests["amd64"]: {"architecture": "amd64", "os": "linux"},
                         digests["arm64"]: {"architecture": "arm64", "os": "linux", "variant": "v8"}}
    assert all(entry["mediaType"] == DOCKER_MANIFEST for entry in listed["manifests"])
    for entry in listed["manifests"]:
        child = registry.get(f"/v2/multi/app/manifests/{entry['digest']}",
                             headers={"Accept": DOCKER_MANIFEST})
        assert child.status_code == 200
        assert len(child.content) == entry["size"]
        assert digest_of(child.content) == entry["digest"]

    # dockerd on amd64 pulls the list and resolves it to the amd64 image.
    docker_client.remove_all_images()
    pulled = docker_client.pull(f"{repository}:list").stdout
    assert f"Digest: {list_digest}" in pulled
    inspected = docker_client.inspect(f"{repository}:list")
    assert inspected["Id"] == archives["amd64"].image_id
    assert inspected["RootFS"]["Layers"] == archives["amd64"].diff_ids
    assert inspected["RepoDigests"] == [f"{repository}@{list_digest}"]
