"""Black-box pull API: blobs and manifests by HEAD/GET, Range requests, visibility, error envelopes."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pytest
import requests

from tests.helpers.oci import (
    OCI_CONFIG,
    OCI_MANIFEST,
    digest_of,
    make_image,
    push_blob,
    push_image,
)
from tests.helpers.server import RegistryProcess

MISSING_DIGEST = "sha256:" + "0" * 64


def unique(prefix: str = "pull") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def assert_error(response: requests.Response, status: int, code: str) -> None:
    """The OCI error envelope: `{"errors":[{"code","message",...}]}` as application/json."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    body = response.json()
    assert isinstance(body["errors"], list) and body["errors"]
    assert body["errors"][0]["code"] == code, body
    assert isinstance(body["errors"][0]["message"], str) and body["errors"][0]["message"]
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.fixture
def blob_repo(shared_registry: RegistryProcess) -> tuple[str, bytes, str]:
    """A namespace holding one 1000-byte blob of known content."""
    name = unique()
    data = bytes(range(256)) * 3 + os.urandom(232)
    assert len(data) == 1000
    response = push_blob(shared_registry.session, shared_registry.url, name, data)
    assert response.status_code == 201, response.text
    return name, data, digest_of(data)


# --- API version --------------------------------------------------------------------------------
def test_api_version_get_and_head(shared_registry: RegistryProcess) -> None:
    response = shared_registry.get("/v2/")
    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    head = shared_registry.head("/v2/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert shared_registry.get("/v2").status_code == 200


# --- blobs --------------------------------------------------------------------------------------
def test_missing_blob_head_and_get_404(shared_registry: RegistryProcess) -> None:
    name = unique()
    head = shared_registry.head(f"/v2/{name}/blobs/{MISSING_DIGEST}")
    assert head.status_code == 404
    assert head.content == b""
    assert_error(shared_registry.get(f"/v2/{name}/blobs/{MISSING_DIGEST}"), 404, "BLOB_UNKNOWN")


def test_present_blob_head_and_get_200(shared_registry: RegistryProcess,
                                       blob_repo: tuple[str, bytes, str]) -> None:
    name, data, digest = blob_repo
    head = shared_registry.head(f"/v2/{name}/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.content == b""
    get = shared_registry.get(f"/v2/{name}/blobs/{digest}")
    assert get.status_code == 200
    assert get.headers["Content-Length"] == str(len(data))
    assert get.headers["Docker-Content-Digest"] == digest
    assert get.headers["Accept-Ranges"] == "bytes"
    assert get.content == data


def test_large_blob_reads_back_byte_identical(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(5 * 1024 * 1024 + 17)
    assert push_blob(shared_registry.session, shared_registry.url, name, data).status_code == 201
    get = shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}")
    assert get.status_code == 200
    assert hashlib.sha256(get.content).hexdigest() == hashlib.sha256(data).hexdigest()


def test_blob_visible_only_in_namespaces_that_reference_it(
        shared_registry: RegistryProcess, blob_repo: tuple[str, bytes, str]) -> None:
    name, data, digest = blob_repo
    other = unique()
    assert_error(shared_registry.get(f"/v2/{other}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert shared_registry.head(f"/v2/{other}/blobs/{digest}").status_code == 404
    # A sibling and a child namespace do not see it either.
    assert shared_registry.head(f"/v2/{name}x/blobs/{digest}").status_code == 404
    assert shared_registry.head(f"/v2/{name}/sub/blobs/{digest}").status_code == 404
    # Uploading the same content to the other namespace makes it visible there too.
    assert push_blob(shared_registry.session, shared_registry.url, other, data).status_code == 201
    assert shared_registry.get(f"/v2/{other}/blobs/{digest}").content == data


# --- Range --------------------------------------------------------------------------------------
def test_range_single(shared_registry: RegistryProcess, blob_repo: tuple[str, bytes, str]) -> None:
    name, data, digest = blob_repo
    response = shared_registry.get(f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == "bytes 10-19/1000"
    assert response.headers["Content-Length"] == "10"
    assert response.content == data[10:20]


def test_range_end_beyond_size_is_clamped(shared_registry: RegistryProcess,
                                          blob_repo: tuple[str, bytes, str]) -> None:
    name, data, digest = blob_repo
    response = shared_registry.get(f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=990-5000"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == "bytes 990-999/1000"
    assert response.content == data[990:]


def test_range_open_ended(shared_registry: RegistryProcess, blob_repo: tuple[str, bytes, str]) -> None:
    name, data, digest = blob_repo
    response = shared_registry.get(f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=900-"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == "bytes 900-999/1000"
    assert response.headers["Content-Length"] == "100"
    assert response.content == data[900:]


def test_range_suffix(shared_registry: RegistryProcess, blob_repo: tuple[str, bytes, str]) -> None:
    name, data, digest = blob_repo
    response = shared_registry.get(f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=-25"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == "bytes 975-999/1000"
    assert response.content == data[-25:]
    whole = shared_registry.get(f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=-5000"})
    assert whole.status_code == 206
    assert whole.headers["Content-Range"] == "bytes 0-999/1000"
    assert whole.content == data


def test_range_on_head(shared_registry: RegistryProcess, blob_repo: tuple[str, bytes, str]) -> None:
    name, _, digest = blob_repo
    response = shared_registry.head(f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=0-99"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == "bytes 0-99/1000"
    assert response.headers["Content-Length"] == "100"
    assert response.content == b""


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_range_unsatisfiable_416(shared_registry: RegistryProcess, blob_repo: tuple[str, bytes, str],
                                 header: str) -> None:
    name, _, digest = blob_repo
    response = shared_registry.get(f"/v2/{name}/blobs/{digest}", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */1000"
    assert response.json()["errors"][0]["code"]


@pytest.mark.parametrize("header", ["bytes=abc", "items=0-10", "bytes=20-10", "bytes=", "0-10",
                                    "bytes=0-1,5-9"])
def test_range_unparsable_is_ignored(shared_registry: RegistryProcess, blob_repo: tuple[str, bytes, str],
                                     header: str) -> None:
    name, data, digest = blob_repo
    response = shared_registry.get(f"/v2/{name}/blobs/{digest}", headers={"Range": header})
    assert response.status_code == 200
    assert "Content-Range" not in response.headers
    assert response.content == data


def test_sha512_blob(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(3000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    response = shared_registry.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, data=data,
                                    headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest
    head = shared_registry.head(f"/v2/{name}/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.headers["Content-Length"] == "3000"
    assert shared_registry.get(f"/v2/{name}/blobs/{digest}").content == data
    # Not reachable under the sha256 of the same bytes (it was never uploaded as such).
    assert shared_registry.head(f"/v2/{name}/blobs/{digest_of(data)}").status_code == 404


# --- manifests ----------------------------------------------------------------------------------
def test_missing_manifest_head_and_get_404(shared_registry: RegistryProcess) -> None:
    name = unique()
    for reference in ("latest", MISSING_DIGEST):
        head = shared_registry.head(f"/v2/{name}/manifests/{reference}")
        assert head.status_code == 404
        assert head.content == b""
        assert_error(shared_registry.get(f"/v2/{name}/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")


def test_manifest_by_tag_and_digest_200(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="v1").status_code == 201
    for reference in ("v1", image.digest):
        get = shared_registry.get(f"/v2/{name}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert get.status_code == 200
        assert get.content == image.manifest
        assert get.headers["Content-Type"] == OCI_MANIFEST
        assert get.headers["Docker-Content-Digest"] == image.digest
        assert get.headers["Content-Length"] == str(len(image.manifest))
        head = shared_registry.head(f"/v2/{name}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["Content-Type"] == OCI_MANIFEST
        assert head.headers["Docker-Content-Digest"] == image.digest
        assert head.headers["Content-Length"] == str(len(image.manifest))


def test_manifest_served_as_stored_whatever_the_accept(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="v1").status_code == 201
    for accept in ("application/vnd.docker.distribution.manifest.v2+json", "text/plain", "*/*", ""):
        response = shared_registry.get(f"/v2/{name}/manifests/v1", headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert response.content == image.manifest


def test_manifest_without_media_type_keeps_put_content_type(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    document = json.loads(image.manifest)
    del document["mediaType"]
    body = json.dumps(document).encode()
    for digest, blob in image.blobs.items():
        assert push_blob(shared_registry.session, shared_registry.url, name, blob).status_code == 201, digest
    put = shared_registry.put(f"/v2/{name}/manifests/plain", data=body,
                              headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 201, put.text
    get = shared_registry.get(f"/v2/{name}/manifests/plain")
    assert get.headers["Content-Type"] == OCI_MANIFEST
    assert get.content == body
    assert get.headers["Docker-Content-Digest"] == digest_of(body)


def test_manifest_not_visible_in_other_namespace(shared_registry: RegistryProcess) -> None:
    name, other = unique(), unique()
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="v1").status_code == 201
    assert_error(shared_registry.get(f"/v2/{other}/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")
    assert_error(shared_registry.get(f"/v2/{other}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


def test_config_blob_of_pushed_image_is_pullable(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image(config_media_type=OCI_CONFIG)
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="v1").status_code == 201
    manifest = shared_registry.get(f"/v2/{name}/manifests/v1").json()
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = shared_registry.get(f"/v2/{name}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200
        assert digest_of(blob.content) == descriptor["digest"]
        assert len(blob.content) == descriptor["size"]


def test_400_carries_oci_error_body(shared_registry: RegistryProcess) -> None:
    name = unique()
    assert_error(shared_registry.get(f"/v2/{name}/blobs/sha256:1234"), 400, "DIGEST_INVALID")
    assert_error(shared_registry.get(f"/v2/{name}/manifests/sha256:zz"), 400, "DIGEST_INVALID")
    assert_error(shared_registry.get("/v2/UPPER/manifests/latest"), 400, "NAME_INVALID")
