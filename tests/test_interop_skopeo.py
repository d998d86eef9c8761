"""skopeo against the real server: push, pull back byte-identical, inspect, multi-arch, list-tags, delete."""

from __future__ import annotations

import json
from pathlib import Path

import requests

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
    write_dir_list_layout,
)
from tests.helpers.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    Image,
    digest_of,
    make_image,
    make_index,
    random_layer,
    write_oci_layout,
)
from tests.helpers.server import RegistryProcess


def multi_layer_image(count: int = 4, size: int = 300_000, architecture: str = "amd64") -> Image:
    return make_image([random_layer(size, f"layer{i}.bin") for i in range(count)], architecture=architecture)


def test_oci_image_round_trip_is_byte_identical(shared_registry: RegistryProcess, tmp_path: Path) -> None:
    image = multi_layer_image()
    src, out = tmp_path / "src", tmp_path / "out"
    write_oci_layout(src, {"v1": image})

    copy(f"oci:{src}:v1", f"docker://{shared_registry.host}/skopeo/oci:v1")
    assert_registry_has_image(shared_registry.session, shared_registry.url, "skopeo/oci", "v1", image)
    assert_registry_has_image(shared_registry.session, shared_registry.url, "skopeo/oci", image.digest, image)

    copy(f"docker://{shared_registry.host}/skopeo/oci:v1", f"oci:{out}:v1")
    assert_oci_layout_has_image(out, "v1", image)


def test_inspect_shows_tag_digest_and_layers(shared_registry: RegistryProcess, tmp_path: Path) -> None:
    image = multi_layer_image(count=3, size=200_000)
    write_oci_layout(tmp_path / "src", {"t": image})
    for tag in ("1.0", "latest"):
        copy(f"oci:{tmp_path / 'src'}:t", f"docker://{shared_registry.host}/skopeo/inspect:{tag}")

    ref = f"docker://{shared_registry.host}/skopeo/inspect:1.0"
    info = json.loads(skopeo("inspect", "--tls-verify=false", ref).stdout)
    assert info["Digest"] == image.digest
    assert sorted(info["RepoTags"]) == ["1.0", "latest"]
    assert info["Layers"] == [digest_of(layer) for layer in image.layers]
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"

    raw = skopeo("inspect", "--tls-verify=false", "--raw", ref).stdout
    assert raw.encode() == image.manifest
    config = skopeo("inspect", "--tls-verify=false", "--config", "--raw", ref).stdout
    assert config.encode() == image.config


def test_docker_schema2_image_round_trip(shared_registry: RegistryProcess, tmp_path: Path) -> None:
    image = make_image([random_layer(250_000, f"d{i}") for i in range(3)], docker=True)
    assert image.media_type == DOCKER_MANIFEST
    src, out = tmp_path / "src", tmp_path / "out"
    write_dir_layout(src, image)

    copy(f"dir:{src}", f"docker://{shared_registry.host}/skopeo/docker:s2")
    assert_registry_has_image(shared_registry.session, shared_registry.url, "skopeo/docker", "s2", image)

    copy(f"docker://{shared_registry.host}/skopeo/docker:s2", f"dir:{out}")
    assert read_dir_manifest(out) == image.manifest
    for digest, blob in image.blobs.items():
        assert dir_blob(out, digest) == blob


def test_format_v2s2_conversion_keeps_layers(shared_registry: RegistryProcess, tmp_path: Path) -> None:
    """An OCI image pushed with `--format v2s2` is stored as Docker schema2 and pulled back unchanged."""
    image = multi_layer_image(count=3, size=200_000)
    src, out = tmp_path / "src", tmp_path / "out"
    write_oci_layout(src, {"v": image})
    copy(f"oci:{src}:v", f"docker://{shared_registry.host}/skopeo/v2s2:conv", "--format", "v2s2")

    response = shared_registry.get("/v2/skopeo/v2s2/manifests/conv", headers={"Accept": DOCKER_MANIFEST})
    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] == DOCKER_MANIFEST
    stored = response.content
    assert response.headers["Docker-Content-Digest"] == digest_of(stored)
    manifest = json.loads(stored)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert [layer["digest"] for layer in manifest["layers"]] == [digest_of(layer) for layer in image.layers]
    assert {layer["mediaType"] for layer in manifest["layers"]} == {DOCKER_LAYER}

    copy(f"docker://{shared_registry.host}/skopeo/v2s2:conv", f"dir:{out}")
    assert read_dir_manifest(out) == stored
    for layer in image.layers:
        assert dir_blob(out, digest_of(layer)) == layer
    assert dir_blob(out, manifest["config"]["digest"]) == shared_registry.get(
        f"/v2/skopeo/v2s2/blobs/{manifest['config']['digest']}").content


def test_multi_arch_index_copy_all(shared_registry: RegistryProcess, tmp_path: Path) -> None:
    amd64 = multi_layer_image(count=2, size=150_000, architecture="amd64")
    arm64 = multi_layer_image(count=2, size=150_000, architecture="arm64")
    index = make_index([amd64, arm64], platforms=[{"architecture": "amd64", "os": "linux"},
                                                  {"architecture": "arm64", "os": "linux"}])
    index_digest = digest_of(index)
    src, out = tmp_path / "src", tmp_path / "out"
    write_oci_layout(src, {"amd64": amd64, "arm64": arm64}, index_refs={"multi": index})

    copy(f"oci:{src}:multi", f"docker://{shared_registry.host}/skopeo/multi:latest", "--all")

    head = shared_registry.head("/v2/skopeo/multi/manifests/latest", headers={"Accept": OCI_INDEX})
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == index_digest
    assert head.headers["Content-Type"].split(";")[0] == OCI_INDEX
    got = shared_registry.get("/v2/skopeo/multi/manifests/latest", headers={"Accept": OCI_INDEX})
    assert got.content == index
    for image in (amd64, arm64):
        assert_registry_has_image(shared_registry.session, shared_registry.url, "skopeo/multi", image.digest,
                                  image)

    copy(f"docker://{shared_registry.host}/skopeo/multi:latest", f"oci:{out}:multi", "--all")
    assert oci_ref(out, "multi")["digest"] == index_digest
    assert oci_blob(out, index_digest) == index
    for image in (amd64, arm64):
        assert oci_blob(out, image.digest) == image.manifest
        for digest, blob in image.blobs.items():
            assert oci_blob(out, digest) == blob

    # Without --all, skopeo resolves the index to the platform it asks for.
    single = tmp_path / "single"
    copy(f"docker://{shared_registry.host}/skopeo/multi:latest", f"oci:{single}:one",
         "--override-arch", "arm64", "--override-os", "linux")
    assert_oci_layout_has_image(single, "one", arm64)


def test_docker_manifest_list_copy_all(shared_registry: RegistryProcess, tmp_path: Path) -> None:
    amd64 = make_image([random_layer(100_000, "a")], docker=True)
    arm64 = make_image([random_layer(100_000, "b")], docker=True, architecture="arm64")
    manifest_list = make_index([amd64, arm64], docker=True, platforms=[
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}])
    src, out = tmp_path / "src", tmp_path / "out"
    write_dir_list_layout(src, manifest_list, [amd64, arm64])

    copy(f"dir:{src}", f"docker://{shared_registry.host}/skopeo/list:v1", "--all")
    got = shared_registry.get("/v2/skopeo/list/manifests/v1", headers={"Accept": DOCKER_LIST})
    assert got.status_code == 200
    assert got.content == manifest_list
    assert got.headers["Content-Type"].split(";")[0] == DOCKER_LIST
    assert got.headers["Docker-Content-Digest"] == digest_of(manifest_list)
    for image in (amd64, arm64):
        assert_registry_has_image(shared_registry.session, shared_registry.url, "skopeo/list", image.digest,
                                  image)

    copy(f"docker://{shared_registry.host}/skopeo/list:v1", f"dir:{out}", "--all")
    assert read_dir_manifest(out) == manifest_list
    for image in (amd64, arm64):
        assert (out / f"{image.digest.split(':', 1)[1]}.manifest.json").read_bytes() == image.manifest
        for digest, blob in image.blobs.items():
            assert dir_blob(out, digest) == blob


def test_list_tags(shared_registry: RegistryProcess, tmp_path: Path) -> None:
    image = make_image([random_layer(10_000)])
    write_oci_layout(tmp_path / "src", {"x": image})
    tags = ["v1", "1.0.0", "latest", "a_b", "Z-9"]
    for tag in tags:
        copy(f"oci:{tmp_path / 'src'}:x", f"docker://{shared_registry.host}/skopeo/tags:{tag}")

    listed = json.loads(skopeo("list-tags", "--tls-verify=false",
                               f"docker://{shared_registry.host}/skopeo/tags").stdout)
    assert listed["Repository"] == f"{shared_registry.host}/skopeo/tags"
    assert sorted(listed["Tags"]) == sorted(tags)

    missing = skopeo("list-tags", "--tls-verify=false", f"docker://{shared_registry.host}/skopeo/absent",
                     check=False)
    assert missing.returncode != 0


def test_delete_removes_manifest_and_its_tags(shared_registry: RegistryProcess, tmp_path: Path) -> None:
    doomed, kept = make_image([random_layer(50_000)]), make_image([random_layer(50_000)])
    write_oci_layout(tmp_path / "src", {"doomed": doomed, "kept": kept})
    host = shared_registry.host
    copy(f"oci:{tmp_path / 'src'}:doomed", f"docker://{host}/skopeo/delete:a")
    copy(f"oci:{tmp_path / 'src'}:doomed", f"docker://{host}/skopeo/delete:b")
    copy(f"oci:{tmp_path / 'src'}:kept", f"docker://{host}/skopeo/delete:keep")

    # skopeo resolves the tag and deletes the manifest by digest: every tag on it goes.
    skopeo("delete", "--tls-verify=false", f"docker://{host}/skopeo/delete:a")

    for reference in ("a", "b", doomed.digest):
        response = shared_registry.get(f"/v2/skopeo/delete/manifests/{reference}")
        assert response.status_code == 404, (reference, response.status_code)
        assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert skopeo("inspect", "--tls-verify=false", f"docker://{host}/skopeo/delete:a",
                  check=False).returncode != 0
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{host}/skopeo/delete").stdout)
    assert listed["Tags"] == ["keep"]
    assert_registry_has_image(shared_registry.session, shared_registry.url, "skopeo/delete", "keep", kept)

    again = skopeo("delete", "--tls-verify=false", f"docker://{host}/skopeo/delete@{doomed.digest}",
                   check=False)
    assert again.returncode != 0


def test_copy_between_repositories_mounts_blobs(shared_registry: RegistryProcess, tmp_path: Path) -> None:
    """registry → registry copy (skopeo tries cross-repository mounts); both copies read back the same."""
    image = multi_layer_image(count=2, size=100_000)
    write_oci_layout(tmp_path / "src", {"v": image})
    host = shared_registry.host
    copy(f"oci:{tmp_path / 'src'}:v", f"docker://{host}/skopeo/from:v")
    copy(f"docker://{host}/skopeo/from:v", f"docker://{host}/skopeo/to:v")
    with requests.Session() as session:
        for name in ("skopeo/from", "skopeo/to"):
            assert_registry_has_image(session, shared_registry.url, name, "v", image)
