"""Black-box content management: deleting manifests (by tag and digest) and blobs."""

from __future__ import annotations

import os
import uuid

import requests

from tests.helpers.oci import (
    EMPTY_JSON,
    OCI_MANIFEST,
    digest_of,
    make_image,
    push_blob,
    push_image,
)
from tests.helpers.server import RegistryProcess

EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


def unique(prefix: str = "mgmt") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    assert response.json()["errors"][0]["code"] == code, response.text


def tag(registry: RegistryProcess, name: str, tag_name: str, manifest: bytes) -> None:
    put = registry.put(f"/v2/{name}/manifests/{tag_name}", data=manifest,
                       headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 201, put.text


def tags_of(registry: RegistryProcess, name: str) -> list[str]:
    response = registry.get(f"/v2/{name}/tags/list")
    assert response.status_code == 200, response.text
    return list(response.json()["tags"])


def test_delete_manifest_by_tag(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    pushed = push_image(shared_registry.session, shared_registry.url, name, image, tag="keep")
    assert pushed.status_code == 201, pushed.text
    tag(shared_registry, name, "gone", image.manifest)
    assert tags_of(shared_registry, name) == ["gone", "keep"]
    response = shared_registry.delete(f"/v2/{name}/manifests/gone")
    assert response.status_code == 202
    assert_error(shared_registry.get(f"/v2/{name}/manifests/gone"), 404, "MANIFEST_UNKNOWN")
    assert shared_registry.head(f"/v2/{name}/manifests/gone").status_code == 404
    assert tags_of(shared_registry, name) == ["keep"]
    # Only the tag went: the manifest and its other tag are still served.
    assert shared_registry.get(f"/v2/{name}/manifests/{image.digest}").content == image.manifest
    assert shared_registry.get(f"/v2/{name}/manifests/keep").status_code == 200


def test_delete_manifest_by_digest(shared_registry: RegistryProcess) -> None:
    name = unique()
    image, other = make_image(), make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="a").status_code == 201
    tag(shared_registry, name, "b", image.manifest)
    assert push_image(shared_registry.session, shared_registry.url, name, other, tag="c").status_code == 201
    response = shared_registry.delete(f"/v2/{name}/manifests/{image.digest}")
    assert response.status_code == 202
    assert_error(shared_registry.get(f"/v2/{name}/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")
    assert shared_registry.head(f"/v2/{name}/manifests/{image.digest}").status_code == 404
    # Every tag pointing at it went with it; other manifests stay.
    for gone in ("a", "b"):
        assert_error(shared_registry.get(f"/v2/{name}/manifests/{gone}"), 404, "MANIFEST_UNKNOWN")
    assert tags_of(shared_registry, name) == ["c"]
    assert shared_registry.get(f"/v2/{name}/manifests/c").content == other.manifest


def test_delete_manifest_then_repush(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="v1").status_code == 201
    assert shared_registry.delete(f"/v2/{name}/manifests/{image.digest}").status_code == 202
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="v1").status_code == 201
    assert shared_registry.get(f"/v2/{name}/manifests/v1").content == image.manifest


def test_delete_unknown_manifest_404(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="v1").status_code == 201
    assert_error(shared_registry.delete(f"/v2/{name}/manifests/nope"), 404, "MANIFEST_UNKNOWN")
    assert_error(shared_registry.delete(f"/v2/{name}/manifests/sha256:{'2' * 64}"), 404, "MANIFEST_UNKNOWN")
    assert_error(shared_registry.delete(f"/v2/{unique()}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    # Deleting twice: the second one no longer finds it.
    assert shared_registry.delete(f"/v2/{name}/manifests/v1").status_code == 202
    assert_error(shared_registry.delete(f"/v2/{name}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_delete_manifest_removes_referrer_entry(shared_registry: RegistryProcess) -> None:
    name = unique()
    subject = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, subject).status_code == 201
    descriptor = {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.manifest)}
    artifacts = [make_image(layers=[], config=EMPTY_JSON, config_media_type=EMPTY_TYPE,
                            artifact_type="application/vnd.example.sig", subject=descriptor,
                            annotations={"n": str(i)}) for i in range(2)]
    for artifact in artifacts:
        assert push_image(shared_registry.session, shared_registry.url, name, artifact).status_code == 201
    url = f"/v2/{name}/referrers/{subject.digest}"
    assert len(shared_registry.get(url).json()["manifests"]) == 2
    assert shared_registry.delete(f"/v2/{name}/manifests/{artifacts[0].digest}").status_code == 202
    remaining = shared_registry.get(url).json()["manifests"]
    assert [d["digest"] for d in remaining] == [artifacts[1].digest]


def test_delete_blob(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(2048)
    digest = digest_of(data)
    assert push_blob(shared_registry.session, shared_registry.url, name, data).status_code == 201
    response = shared_registry.delete(f"/v2/{name}/blobs/{digest}")
    assert response.status_code == 202
    assert_error(shared_registry.get(f"/v2/{name}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert shared_registry.head(f"/v2/{name}/blobs/{digest}").status_code == 404
    assert_error(shared_registry.delete(f"/v2/{name}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_delete_blob_only_unlinks_this_namespace(shared_registry: RegistryProcess) -> None:
    first, second = unique(), unique()
    data = os.urandom(2048)
    digest = digest_of(data)
    for name in (first, second):
        assert push_blob(shared_registry.session, shared_registry.url, name, data).status_code == 201
    assert shared_registry.delete(f"/v2/{first}/blobs/{digest}").status_code == 202
    assert shared_registry.head(f"/v2/{first}/blobs/{digest}").status_code == 404
    assert shared_registry.get(f"/v2/{second}/blobs/{digest}").content == data


def test_delete_unknown_blob_404(shared_registry: RegistryProcess) -> None:
    assert_error(shared_registry.delete(f"/v2/{unique()}/blobs/sha256:{'3' * 64}"), 404, "BLOB_UNKNOWN")


def test_deleted_blob_can_be_pushed_again(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(4096)
    digest = digest_of(data)
    assert push_blob(shared_registry.session, shared_registry.url, name, data).status_code == 201
    assert shared_registry.delete(f"/v2/{name}/blobs/{digest}").status_code == 202
    assert push_blob(shared_registry.session, shared_registry.url, name, data).status_code == 201
    assert shared_registry.get(f"/v2/{name}/blobs/{digest}").content == data


def test_manifest_delete_survives_restart(registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    assert push_image(registry.session, registry.url, name, image, tag="a").status_code == 201
    tag(registry, name, "b", image.manifest)
    assert registry.delete(f"/v2/{name}/manifests/a").status_code == 202
    registry.restart()
    assert tags_of(registry, name) == ["b"]
    assert registry.head(f"/v2/{name}/manifests/a").status_code == 404
    assert registry.delete(f"/v2/{name}/manifests/{image.digest}").status_code == 202
    registry.restart()
    assert registry.head(f"/v2/{name}/manifests/{image.digest}").status_code == 404
    assert registry.head(f"/v2/{name}/manifests/b").status_code == 404
    assert tags_of(registry, name) == []
