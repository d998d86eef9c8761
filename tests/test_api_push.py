"""Black-box push API: streamed, monolithic and chunked uploads, mounts, manifest PUT rules."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import requests

from tests.helpers.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    OCI_INDEX,
    OCI_MANIFEST,
    digest_of,
    make_image,
    make_index,
    push_blob,
    push_image,
)
from tests.helpers.server import RegistryProcess

EMPTY_BLOB_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def unique(prefix: str = "push") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    body = response.json()
    assert body["errors"][0]["code"] == code, body
    assert body["errors"][0]["message"]


def location_path(response: requests.Response) -> str:
    """The path (and query) of a Location header, absolute or relative."""
    parts = urlsplit(response.headers["Location"])
    return parts.path + (f"?{parts.query}" if parts.query else "")


def start_session(registry: RegistryProcess, name: str) -> str:
    response = registry.post(f"/v2/{name}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return location_path(response)


def with_query(path: str, **params: str) -> str:
    joiner = "&" if "?" in path else "?"
    return path + joiner + "&".join(f"{k}={v}" for k, v in params.items())


def put_manifest(registry: RegistryProcess, name: str, reference: str, body: bytes,
                 media_type: str | None) -> requests.Response:
    headers = {"Content-Type": media_type} if media_type else {}
    return registry.put(f"/v2/{name}/manifests/{reference}", data=body, headers=headers)


def push_blobs(registry: RegistryProcess, name: str, *blobs: bytes) -> None:
    for blob in blobs:
        response = push_blob(registry.session, registry.url, name, blob)
        assert response.status_code == 201, response.text


# --- uploads ------------------------------------------------------------------------------------
def test_post_starts_session(shared_registry: RegistryProcess) -> None:
    name = unique()
    response = shared_registry.post(f"/v2/{name}/blobs/uploads/")
    assert response.status_code == 202
    assert response.headers["Range"] == "0-0"
    upload_id = response.headers["Docker-Upload-UUID"]
    assert upload_id
    path = location_path(response)
    assert path.startswith(f"/v2/{name}/blobs/uploads/")
    assert upload_id in path
    status = shared_registry.get(path)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-0"


def test_streamed_upload_patch_then_bodyless_put(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(70_000)
    path = start_session(shared_registry, name)
    patch = shared_registry.patch(path, data=data, headers={"Content-Type": "application/octet-stream"})
    assert patch.status_code == 202, patch.text
    assert patch.headers["Range"] == f"0-{len(data) - 1}"
    assert patch.headers["Docker-Upload-UUID"]
    path = location_path(patch)
    put = shared_registry.put(with_query(path, digest=digest_of(data)))
    assert put.status_code == 201, put.text
    assert put.headers["Docker-Content-Digest"] == digest_of(data)
    assert location_path(put) == f"/v2/{name}/blobs/{digest_of(data)}"
    assert shared_registry.get(location_path(put)).content == data


def test_monolithic_post_with_digest(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(10_000)
    response = push_blob(shared_registry.session, shared_registry.url, name, data)
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest_of(data)
    assert location_path(response) == f"/v2/{name}/blobs/{digest_of(data)}"
    get = shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}")
    assert get.status_code == 200
    assert get.content == data


def test_monolithic_post_then_put_with_body(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(12_345)
    path = start_session(shared_registry, name)
    put = shared_registry.put(with_query(path, digest=digest_of(data)), data=data,
                              headers={"Content-Type": "application/octet-stream"})
    assert put.status_code == 201, put.text
    assert put.headers["Docker-Content-Digest"] == digest_of(data)
    assert shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data


def test_patch_then_put_with_final_chunk(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(9000)
    path = start_session(shared_registry, name)
    patch = shared_registry.patch(path, data=data[:4000])
    assert patch.status_code == 202
    put = shared_registry.put(with_query(location_path(patch), digest=digest_of(data)), data=data[4000:])
    assert put.status_code == 201, put.text
    assert shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data


def test_chunked_upload_with_content_range(shared_registry: RegistryProcess) -> None:
    """The conformance suite's chunked workflow, step by step."""
    name = unique()
    data = os.urandom(2048)
    first, second = data[:1024], data[1024:]
    path = start_session(shared_registry, name)
    bad_start = shared_registry.patch(path, data=first, headers={
        "Content-Range": "1-1024", "Content-Type": "application/octet-stream"})
    assert bad_start.status_code == 416
    assert bad_start.headers["Range"] == "0-0"
    one = shared_registry.patch(path, data=first, headers={
        "Content-Range": "0-1023", "Content-Type": "application/octet-stream"})
    assert one.status_code == 202, one.text
    assert one.headers["Range"] == "0-1023"
    path = location_path(one)
    again = shared_registry.patch(path, data=first, headers={
        "Content-Range": "0-1023", "Content-Type": "application/octet-stream"})
    assert again.status_code == 416
    assert again.headers["Range"] == "0-1023"
    status = shared_registry.get(path)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-1023"
    assert location_path(status).startswith(f"/v2/{name}/blobs/uploads/")
    two = shared_registry.patch(location_path(status), data=second, headers={
        "Content-Range": "1024-2047", "Content-Type": "application/octet-stream"})
    assert two.status_code == 202, two.text
    assert two.headers["Range"] == "0-2047"
    put = shared_registry.put(with_query(location_path(two), digest=digest_of(data)))
    assert put.status_code == 201, put.text
    assert shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data


def test_content_range_with_bytes_prefix_and_total(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(100)
    path = start_session(shared_registry, name)
    patch = shared_registry.patch(path, data=data, headers={"Content-Range": "bytes 0-99/100"})
    assert patch.status_code == 202, patch.text
    assert patch.headers["Range"] == "0-99"
    put = shared_registry.put(with_query(location_path(patch), digest=digest_of(data)))
    assert put.status_code == 201


def test_empty_patch_is_legal(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(500)
    path = start_session(shared_registry, name)
    empty = shared_registry.patch(path, data=b"")
    assert empty.status_code == 202, empty.text
    assert empty.headers["Range"] == "0-0"
    path = location_path(shared_registry.patch(path, data=data))
    empty = shared_registry.patch(path, data=b"")
    assert empty.status_code == 202
    assert empty.headers["Range"] == "0-499"
    put = shared_registry.put(with_query(location_path(empty), digest=digest_of(data)))
    assert put.status_code == 201
    assert shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data


def test_chunked_transfer_encoding_patch_without_content_length(shared_registry: RegistryProcess) -> None:
    name = unique()
    parts = [os.urandom(100_000) for _ in range(5)]
    data = b"".join(parts)

    def body() -> Iterator[bytes]:
        yield from parts

    path = start_session(shared_registry, name)
    request = shared_registry.session.prepare_request(requests.Request(
        "PATCH", shared_registry.url + path, data=body(),
        headers={"Content-Type": "application/octet-stream"}))
    assert request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in request.headers
    patch = shared_registry.session.send(request, timeout=60)
    assert patch.status_code == 202, patch.text
    assert patch.headers["Range"] == f"0-{len(data) - 1}"
    put = shared_registry.put(with_query(location_path(patch), digest=digest_of(data)))
    assert put.status_code == 201
    assert shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data


def test_empty_blob_bodyless_put(shared_registry: RegistryProcess) -> None:
    name = unique()
    path = start_session(shared_registry, name)
    put = shared_registry.put(with_query(path, digest=EMPTY_BLOB_DIGEST))
    assert put.status_code == 201, put.text
    get = shared_registry.get(f"/v2/{name}/blobs/{EMPTY_BLOB_DIGEST}")
    assert get.status_code == 200
    assert get.headers["Content-Length"] == "0"
    assert get.content == b""


def test_put_without_digest_is_rejected(shared_registry: RegistryProcess) -> None:
    name = unique()
    path = start_session(shared_registry, name)
    assert_error(shared_registry.put(path, data=b"abc"), 400, "DIGEST_INVALID")


def test_sha512_streamed_upload(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(40_000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    path = start_session(shared_registry, name)
    patch = shared_registry.patch(path, data=data)
    assert patch.status_code == 202
    put = shared_registry.put(with_query(location_path(patch), digest=digest))
    assert put.status_code == 201, put.text
    assert put.headers["Docker-Content-Digest"] == digest
    assert shared_registry.get(f"/v2/{name}/blobs/{digest}").content == data


def test_delete_upload_session(shared_registry: RegistryProcess) -> None:
    name = unique()
    path = start_session(shared_registry, name)
    assert shared_registry.patch(path, data=b"some bytes").status_code == 202
    cancel = shared_registry.delete(path)
    assert cancel.status_code == 204
    assert_error(shared_registry.get(path), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(shared_registry.delete(path), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(shared_registry.patch(path, data=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")


def test_delete_unknown_upload_404(shared_registry: RegistryProcess) -> None:
    name = unique()
    assert_error(shared_registry.delete(f"/v2/{name}/blobs/uploads/{uuid.uuid4()}"), 404,
                 "BLOB_UPLOAD_UNKNOWN")


def test_repush_same_blob_is_idempotent(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(1000)
    for _ in range(2):
        response = push_blob(shared_registry.session, shared_registry.url, name, data)
        assert response.status_code == 201
        assert response.headers["Docker-Content-Digest"] == digest_of(data)
    assert shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data


# --- cross-repository mount ---------------------------------------------------------------------
def test_mount_with_from(shared_registry: RegistryProcess) -> None:
    source, target = unique(), unique()
    data = os.urandom(3000)
    digest = digest_of(data)
    push_blobs(shared_registry, source, data)
    assert shared_registry.head(f"/v2/{target}/blobs/{digest}").status_code == 404
    mount = shared_registry.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert mount.status_code == 201, mount.text
    assert mount.headers["Docker-Content-Digest"] == digest
    assert location_path(mount) == f"/v2/{target}/blobs/{digest}"
    get = shared_registry.get(f"/v2/{target}/blobs/{digest}")
    assert get.status_code == 200
    assert get.content == data


def test_mount_from_namespace_without_the_blob_gives_session(shared_registry: RegistryProcess) -> None:
    holder, source, target = unique(), unique(), unique()
    data = os.urandom(3000)
    digest = digest_of(data)
    push_blobs(shared_registry, holder, data)
    # The blob exists, but not in `source`: no mount, a usable session instead.
    mount = shared_registry.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert mount.status_code == 202, mount.text
    assert mount.headers["Docker-Upload-UUID"]
    assert shared_registry.head(f"/v2/{target}/blobs/{digest}").status_code == 404
    put = shared_registry.put(with_query(location_path(mount), digest=digest), data=data)
    assert put.status_code == 201
    assert shared_registry.get(f"/v2/{target}/blobs/{digest}").content == data


def test_mount_without_from_existing_blob_201(shared_registry: RegistryProcess) -> None:
    source, target = unique(), unique()
    data = os.urandom(2000)
    digest = digest_of(data)
    push_blobs(shared_registry, source, data)
    mount = shared_registry.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest})
    assert mount.status_code == 201, mount.text
    assert mount.headers["Docker-Content-Digest"] == digest
    assert shared_registry.get(f"/v2/{target}/blobs/{digest}").content == data


def test_mount_without_from_missing_blob_202(shared_registry: RegistryProcess) -> None:
    target = unique()
    data = os.urandom(2000)
    mount = shared_registry.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest_of(data)})
    assert mount.status_code == 202, mount.text
    assert mount.headers["Range"] == "0-0"
    assert mount.headers["Docker-Upload-UUID"]
    put = shared_registry.put(with_query(location_path(mount), digest=digest_of(data)), data=data)
    assert put.status_code == 201
    assert shared_registry.get(f"/v2/{target}/blobs/{digest_of(data)}").content == data


def test_mount_of_missing_blob_with_from_202(shared_registry: RegistryProcess) -> None:
    source, target = unique(), unique()
    mount = shared_registry.post(f"/v2/{target}/blobs/uploads/",
                                 params={"mount": "sha256:" + "1" * 64, "from": source})
    assert mount.status_code == 202
    assert shared_registry.get(location_path(mount)).status_code == 204


# --- manifests ----------------------------------------------------------------------------------
def test_manifest_put_by_tag(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    put = push_image(shared_registry.session, shared_registry.url, name, image, tag="v1")
    assert put.status_code == 201, put.text
    assert put.headers["Docker-Content-Digest"] == image.digest
    assert location_path(put) == f"/v2/{name}/manifests/{image.digest}"
    assert "OCI-Subject" not in put.headers
    assert shared_registry.get(f"/v2/{name}/manifests/v1").content == image.manifest


def test_manifest_with_empty_layers(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image(layers=[], config=EMPTY_JSON, config_media_type="application/vnd.oci.empty.v1+json")
    assert image.blobs == {EMPTY_JSON_DIGEST: EMPTY_JSON}
    put = push_image(shared_registry.session, shared_registry.url, name, image)
    assert put.status_code == 201, put.text
    get = shared_registry.get(f"/v2/{name}/manifests/{image.digest}")
    assert get.status_code == 200
    assert get.content == image.manifest
    assert json.loads(get.content)["layers"] == []


def test_manifest_put_by_digest_with_tag_params(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    push_blobs(shared_registry, name, *image.blobs.values())
    put = shared_registry.put(f"/v2/{name}/manifests/{image.digest}?tag=a&tag=b", data=image.manifest,
                              headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 201, put.text
    assert put.headers["Docker-Content-Digest"] == image.digest
    for tag in ("a", "b"):
        get = shared_registry.get(f"/v2/{name}/manifests/{tag}")
        assert get.status_code == 200
        assert get.headers["Docker-Content-Digest"] == image.digest
    assert shared_registry.get(f"/v2/{name}/tags/list").json()["tags"] == ["a", "b"]


def test_manifest_put_by_digest_mismatch(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    push_blobs(shared_registry, name, *image.blobs.values())
    wrong = digest_of(image.manifest + b" ")
    assert_error(put_manifest(shared_registry, name, wrong, image.manifest, OCI_MANIFEST), 400,
                 "DIGEST_INVALID")
    assert shared_registry.head(f"/v2/{name}/manifests/{image.digest}").status_code == 404
    assert shared_registry.head(f"/v2/{name}/manifests/{wrong}").status_code == 404


def test_manifest_put_by_sha512_digest(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    push_blobs(shared_registry, name, *image.blobs.values())
    digest = "sha512:" + hashlib.sha512(image.manifest).hexdigest()
    put = put_manifest(shared_registry, name, digest, image.manifest, OCI_MANIFEST)
    assert put.status_code == 201, put.text
    assert put.headers["Docker-Content-Digest"] == digest
    get = shared_registry.get(f"/v2/{name}/manifests/{digest}")
    assert get.status_code == 200
    assert get.content == image.manifest
    assert get.headers["Docker-Content-Digest"] == digest


def test_manifest_repush_is_idempotent(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    for _ in range(2):
        put = push_image(shared_registry.session, shared_registry.url, name, image, tag="v1")
        assert put.status_code == 201, put.text
        assert put.headers["Docker-Content-Digest"] == image.digest
    assert shared_registry.get(f"/v2/{name}/tags/list").json()["tags"] == ["v1"]
    assert shared_registry.get(f"/v2/{name}/manifests/v1").content == image.manifest


def test_tag_moves_to_new_manifest(shared_registry: RegistryProcess) -> None:
    name = unique()
    first, second = make_image(), make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, first, tag="v1").status_code == 201
    assert push_image(shared_registry.session, shared_registry.url, name, second, tag="v1").status_code == 201
    assert shared_registry.get(f"/v2/{name}/manifests/v1").content == second.manifest
    assert shared_registry.get(f"/v2/{name}/manifests/{first.digest}").content == first.manifest


def test_docker_schema2_manifest_and_manifest_list(shared_registry: RegistryProcess) -> None:
    name = unique()
    amd, arm = make_image(docker=True), make_image(docker=True, architecture="arm64")
    for image in (amd, arm):
        put = push_image(shared_registry.session, shared_registry.url, name, image)
        assert put.status_code == 201, put.text
    index = make_index([amd, arm], docker=True, platforms=[
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}])
    put = put_manifest(shared_registry, name, "multi", index, DOCKER_LIST)
    assert put.status_code == 201, put.text
    get = shared_registry.get(f"/v2/{name}/manifests/multi", headers={"Accept": DOCKER_LIST})
    assert get.headers["Content-Type"] == DOCKER_LIST
    assert get.content == index
    child = shared_registry.get(f"/v2/{name}/manifests/{arm.digest}", headers={"Accept": DOCKER_MANIFEST})
    assert child.headers["Content-Type"] == DOCKER_MANIFEST
    assert child.content == arm.manifest


def test_oci_index(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image).status_code == 201
    index = make_index([image])
    put = put_manifest(shared_registry, name, "idx", index, OCI_INDEX)
    assert put.status_code == 201, put.text
    get = shared_registry.get(f"/v2/{name}/manifests/idx")
    assert get.headers["Content-Type"] == OCI_INDEX
    assert get.headers["Docker-Content-Digest"] == digest_of(index)
    assert get.content == index


def test_index_with_unknown_child_rejected(shared_registry: RegistryProcess) -> None:
    name, other = unique(), unique()
    image = make_image()  # never pushed here
    assert_error(put_manifest(shared_registry, name, "idx", make_index([image]), OCI_INDEX), 400,
                 "MANIFEST_BLOB_UNKNOWN")
    # A child pushed in another namespace is not enough either.
    assert push_image(shared_registry.session, shared_registry.url, other, image).status_code == 201
    assert_error(put_manifest(shared_registry, name, "idx", make_index([image]), OCI_INDEX), 400,
                 "MANIFEST_BLOB_UNKNOWN")
    assert shared_registry.head(f"/v2/{name}/manifests/idx").status_code == 404


def test_manifest_with_unknown_blob_rejected(shared_registry: RegistryProcess) -> None:
    name, other = unique(), unique()
    image = make_image()
    config, layer = image.config, image.layers[0]
    # The layer is missing everywhere.
    push_blobs(shared_registry, name, config)
    response = put_manifest(shared_registry, name, "v1", image.manifest, OCI_MANIFEST)
    assert_error(response, 400, "MANIFEST_BLOB_UNKNOWN")
    assert response.json()["errors"][0]["detail"]["digest"] == digest_of(layer)
    # Present in another namespace is not enough.
    push_blobs(shared_registry, other, layer)
    assert_error(put_manifest(shared_registry, name, "v1", image.manifest, OCI_MANIFEST), 400,
                 "MANIFEST_BLOB_UNKNOWN")
    assert shared_registry.head(f"/v2/{name}/manifests/v1").status_code == 404


def test_schema1_refused(shared_registry: RegistryProcess) -> None:
    name = unique()
    body = json.dumps({"schemaVersion": 1, "name": name, "tag": "v1", "architecture": "amd64",
                       "fsLayers": [], "history": []}).encode()
    for media_type in ("application/vnd.docker.distribution.manifest.v1+prettyjws",
                       "application/vnd.docker.distribution.manifest.v1+json", "application/json"):
        assert_error(put_manifest(shared_registry, name, "v1", body, media_type), 400, "MANIFEST_INVALID")
    assert shared_registry.head(f"/v2/{name}/manifests/v1").status_code == 404


def test_content_type_required(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    push_blobs(shared_registry, name, *image.blobs.values())
    document = json.loads(image.manifest)
    del document["mediaType"]
    body = json.dumps(document).encode()
    request = shared_registry.session.prepare_request(
        requests.Request("PUT", f"{shared_registry.url}/v2/{name}/manifests/v1", data=body))
    assert "Content-Type" not in request.headers
    assert_error(shared_registry.session.send(request, timeout=60), 400, "MANIFEST_INVALID")
    assert_error(shared_registry.put(f"/v2/{name}/manifests/v1", data=body, headers={"Content-Type": ""}),
                 400, "MANIFEST_INVALID")
    assert shared_registry.head(f"/v2/{name}/manifests/v1").status_code == 404


def test_content_type_must_match_media_type(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    push_blobs(shared_registry, name, *image.blobs.values())
    assert_error(put_manifest(shared_registry, name, "v1", image.manifest, DOCKER_MANIFEST), 400,
                 "MANIFEST_INVALID")
    assert_error(put_manifest(shared_registry, name, "v1", image.manifest, "application/octet-stream"), 400,
                 "MANIFEST_INVALID")


def test_content_type_parameters_stripped(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    push_blobs(shared_registry, name, *image.blobs.values())
    put = put_manifest(shared_registry, name, "v1", image.manifest, f"{OCI_MANIFEST}; charset=utf-8")
    assert put.status_code == 201, put.text
    get = shared_registry.get(f"/v2/{name}/manifests/v1")
    assert get.headers["Content-Type"] == OCI_MANIFEST


def test_unsupported_media_type_refused(shared_registry: RegistryProcess) -> None:
    name = unique()
    body = json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode()
    assert_error(put_manifest(shared_registry, name, "v1", body, "application/vnd.example+json"), 400,
                 "MANIFEST_INVALID")


def test_oci_subject_header_on_put(shared_registry: RegistryProcess) -> None:
    name = unique()
    subject_body = b'{"not":"pushed"}'
    subject = {"mediaType": OCI_MANIFEST, "digest": digest_of(subject_body), "size": len(subject_body)}
    artifact = make_image(layers=[], config=EMPTY_JSON, config_media_type="application/vnd.oci.empty.v1+json",
                          artifact_type="application/vnd.example.sig", subject=subject)
    put = push_image(shared_registry.session, shared_registry.url, name, artifact)
    assert put.status_code == 201, put.text
    assert put.headers["OCI-Subject"] == digest_of(subject_body)


def test_api_version_header_on_success_answers(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(100)
    start = shared_registry.post(f"/v2/{name}/blobs/uploads/")
    patch = shared_registry.patch(location_path(start), data=data)
    put = shared_registry.put(with_query(location_path(patch), digest=digest_of(data)))
    for response in (start, patch, put, shared_registry.get(location_path(put))):
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


# --- storage model (SPEC section 4) ---------------------------------------------------------------
def test_storage_layout_is_distributions(registry: RegistryProcess) -> None:
    name = "library/layout"
    image = make_image()
    assert push_image(registry.session, registry.url, name, image, tag="v1").status_code == 201
    store = registry.store
    v2 = "docker/registry/v2"
    for digest, blob in [*image.blobs.items(), (image.digest, image.manifest)]:
        hexpart = digest.split(":", 1)[1]
        assert store.read(f"{v2}/blobs/sha256/{hexpart[:2]}/{hexpart}/data") == blob
    repo = f"{v2}/repositories/library/layout"
    for digest in image.blobs:
        assert store.read(f"{repo}/_layers/sha256/{digest.split(':', 1)[1]}/link") == digest.encode()
    manifest_hex = image.digest.split(":", 1)[1]
    assert store.read(f"{repo}/_manifests/revisions/sha256/{manifest_hex}/link") == image.digest.encode()
    tag_dir = f"{repo}/_manifests/tags/v1"
    assert store.read(f"{tag_dir}/current/link") == image.digest.encode()
    assert store.read(f"{tag_dir}/index/sha256/{manifest_hex}/link") == image.digest.encode()
    # An upload in progress lives under _uploads/<id>/ with its `startedat`; its bytes are the driver's
    # own (a file `data` on fs, a multipart upload and its state beside the key on S3).
    start = registry.post(f"/v2/{name}/blobs/uploads/")
    upload_id = start.headers["Docker-Upload-UUID"]
    assert registry.patch(location_path(start), data=b"partial").status_code == 202
    session = f"{repo}/_uploads/{upload_id}"
    assert store.read(f"{session}/startedat") is not None
    if store.spec.kind == "fs":
        assert store.read(f"{session}/data") == b"partial"


def test_registry2_data_directory_served_in_place(start_registry: Callable[..., RegistryProcess]) -> None:
    """Objects written in distribution's layout (no media-type sidecar) are served by a fresh server."""
    registry = start_registry()
    image = make_image()
    v2 = "docker/registry/v2"
    for digest, blob in [*image.blobs.items(), (image.digest, image.manifest)]:
        hexpart = digest.split(":", 1)[1]
        registry.store.write(f"{v2}/blobs/sha256/{hexpart[:2]}/{hexpart}/data", blob)
    repo = f"{v2}/repositories/legacy/app"
    links = {f"{repo}/_layers/sha256/{d.split(':', 1)[1]}/link": d for d in image.blobs}
    manifest_hex = image.digest.split(":", 1)[1]
    links[f"{repo}/_manifests/revisions/sha256/{manifest_hex}/link"] = image.digest
    links[f"{repo}/_manifests/tags/v1/current/link"] = image.digest
    links[f"{repo}/_manifests/tags/v1/index/sha256/{manifest_hex}/link"] = image.digest
    for key, digest in links.items():
        registry.store.write(key, digest.encode())
    get = registry.get("/v2/legacy/app/manifests/v1")
    assert get.status_code == 200
    assert get.headers["Content-Type"] == OCI_MANIFEST
    assert get.content == image.manifest
    for digest, blob in image.blobs.items():
        assert registry.get(f"/v2/legacy/app/blobs/{digest}").content == blob
    assert registry.get("/v2/legacy/app/tags/list").json() == {"name": "legacy/app", "tags": ["v1"]}
    assert "legacy/app" in registry.get("/v2/_catalog").json()["repositories"]


def test_upload_session_survives_restart(registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(300_000)
    path = start_session(registry, name)
    assert registry.patch(path, data=data[:100_000]).status_code == 202
    registry.restart()
    status = registry.get(path)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-99999"
    patch = registry.patch(path, data=data[100_000:200_000], headers={"Content-Range": "100000-199999"})
    assert patch.status_code == 202, patch.text
    registry.restart()
    put = registry.put(with_query(path, digest=digest_of(data)), data=data[200_000:])
    assert put.status_code == 201, put.text
    assert registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data


def test_foreign_layers_need_not_be_pushed(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    push_blobs(shared_registry, name, *image.blobs.values())
    document = json.loads(image.manifest)
    foreign = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
               "digest": "sha256:" + "f" * 64, "size": 1000,
               "urls": ["https://mcr.microsoft.com/v2/windows/base/blobs/sha256:" + "f" * 64]}
    document["mediaType"] = DOCKER_MANIFEST
    document["layers"].insert(0, foreign)
    body = json.dumps(document).encode()
    put = put_manifest(shared_registry, name, "win", body, DOCKER_MANIFEST)
    assert put.status_code == 201, put.text
    assert shared_registry.get(f"/v2/{name}/manifests/win").content == body
    # Without `urls` it is an ordinary layer, which must exist.
    del document["layers"][0]["urls"]
    assert_error(put_manifest(shared_registry, name, "win2", json.dumps(document).encode(), DOCKER_MANIFEST),
                 400, "MANIFEST_BLOB_UNKNOWN")


def test_manifest_put_by_tag_with_extra_tag_params(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    push_blobs(shared_registry, name, *image.blobs.values())
    put = shared_registry.put(f"/v2/{name}/manifests/main?tag=other&tag=main", data=image.manifest,
                              headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 201, put.text
    assert shared_registry.get(f"/v2/{name}/tags/list").json()["tags"] == ["main", "other"]
    assert shared_registry.get(f"/v2/{name}/manifests/other").content == image.manifest
