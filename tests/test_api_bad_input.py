"""Black-box bad input (SPEC section 13): each gives a clear OCI error and loses nothing.

Path traversal attempts are sent over a raw socket so that no client library normalizes them.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import auth
from tests.helpers.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    digest_of,
    make_image,
    push_blob,
    push_image,
)
from tests.helpers.server import RegistryProcess

ZERO_DIGEST = "sha256:" + "0" * 64


def unique(prefix: str = "bad") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def assert_envelope(status: int, content_type: str, body: bytes, code: str | None = None) -> None:
    assert content_type.split(";")[0].strip() == "application/json", (status, content_type, body[:300])
    document = json.loads(body)
    assert isinstance(document["errors"], list) and document["errors"], document
    assert isinstance(document["errors"][0]["code"], str)
    assert isinstance(document["errors"][0]["message"], str) and document["errors"][0]["message"]
    if code is not None:
        assert document["errors"][0]["code"] == code, (status, document)


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert_envelope(status, response.headers.get("Content-Type", ""), response.content, code)
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def location_path(response: requests.Response) -> str:
    parts = urlsplit(response.headers["Location"])
    return parts.path + (f"?{parts.query}" if parts.query else "")


def start_session(registry: RegistryProcess, name: str) -> str:
    response = registry.post(f"/v2/{name}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return location_path(response)


def with_digest(path: str, digest: str) -> str:
    return path + ("&" if "?" in path else "?") + f"digest={digest}"


def upload_keys(registry: RegistryProcess, name: str) -> list[str]:
    """What the store holds of the repository's upload sessions."""
    return registry.store.keys(f"docker/registry/v2/repositories/{name}/_uploads")


# --- raw HTTP (no normalization of the request target) -------------------------------------------
class RawResponse:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            self.headers[key.strip().lower()] = value.strip()

    def assert_error(self, status: int | tuple[int, ...], code: str | tuple[str, ...] | None = None) -> None:
        statuses = (status,) if isinstance(status, int) else status
        assert self.status in statuses, (self.status, self.body[:300])
        assert_envelope(self.status, self.headers.get("content-type", ""), self.body)
        if code is not None:
            codes = (code,) if isinstance(code, str) else code
            assert json.loads(self.body)["errors"][0]["code"] in codes, self.body


def raw_request(registry: RegistryProcess, method: str, target: bytes | str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> RawResponse:
    target_bytes = target.encode("latin-1") if isinstance(target, str) else target
    lines = [method.encode() + b" " + target_bytes + b" HTTP/1.1", f"Host: {registry.host}".encode(),
             b"Connection: close", f"Content-Length: {len(body)}".encode()]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", registry.port), timeout=20) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return RawResponse(b"".join(chunks))


# --- malformed and oversized manifests ----------------------------------------------------------
def _valid_manifest(**changes: object) -> bytes:
    document = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": ZERO_DIGEST, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ZERO_DIGEST,
                    "size": 2}],
    }
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document).encode()


BAD_LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ZERO_DIGEST, "size": 2}
MALFORMED = {
    "not-json": b"this is not json",
    "truncated-json": b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"',
    "not-utf8": b"\xff\xfe\x00{}",
    "array": b"[]",
    "string": b'"manifest"',
    "empty-body": b"",
    "no-schema-version": _valid_manifest(schemaVersion=None),
    "schema-version-3": _valid_manifest(schemaVersion=3),
    "schema-version-string": _valid_manifest(schemaVersion="2"),
    "media-type-number": _valid_manifest(mediaType=7),
    "no-config": _valid_manifest(config=None),
    "config-not-object": _valid_manifest(config="sha256:abc"),
    "config-bad-digest": _valid_manifest(config={"mediaType": "x/y", "digest": "sha256:xyz", "size": 1}),
    "config-no-media-type": _valid_manifest(config={"digest": ZERO_DIGEST, "size": 1}),
    "layers-not-array": _valid_manifest(layers={"a": 1}),
    "no-layers": _valid_manifest(layers=None),
    "layer-negative-size": _valid_manifest(layers=[{**BAD_LAYER, "size": -1}]),
    "layer-size-bool": _valid_manifest(layers=[{**BAD_LAYER, "size": True}]),
    "layer-size-string": _valid_manifest(layers=[{**BAD_LAYER, "size": "2"}]),
    "layer-traversal-digest": _valid_manifest(layers=[{**BAD_LAYER, "digest": "sha256:../../../etc/passwd"}]),
    "layer-urls-not-list": _valid_manifest(layers=[{**BAD_LAYER, "urls": "http://x"}]),
    "annotations-not-strings": _valid_manifest(annotations={"a": 1}),
    "artifact-type-not-string": _valid_manifest(artifactType=["x"]),
    "subject-not-descriptor": _valid_manifest(subject={"digest": "nope"}),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_manifest_rejected(shared_registry: RegistryProcess, body: bytes) -> None:
    name = unique()
    response = shared_registry.put(f"/v2/{name}/manifests/v1", data=body,
                                   headers={"Content-Type": OCI_MANIFEST})
    assert_error(response, 400, "MANIFEST_INVALID")
    assert shared_registry.head(f"/v2/{name}/manifests/v1").status_code == 404
    assert shared_registry.head(f"/v2/{name}/manifests/{digest_of(body)}").status_code == 404


def test_malformed_index_rejected(shared_registry: RegistryProcess) -> None:
    name = unique()
    for body in (b'{"schemaVersion": 2, "mediaType": "' + OCI_INDEX.encode() + b'"}',
                 json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                             "manifests": [{"digest": 5}]}).encode()):
        response = shared_registry.put(f"/v2/{name}/manifests/idx", data=body,
                                       headers={"Content-Type": OCI_INDEX})
        assert_error(response, 400, "MANIFEST_INVALID")
    assert shared_registry.head(f"/v2/{name}/manifests/idx").status_code == 404


def _padded_image(size: int) -> bytes:
    """An image manifest of exactly `size` bytes (padding in an annotation)."""
    image = make_image(layers=[], annotations={"pad": ""})
    base = len(image.manifest)
    manifest = make_image(layers=[], config=image.config, annotations={"pad": "x" * (size - base)}).manifest
    assert len(manifest) == size
    return manifest


def test_oversized_manifest_413(start_registry: Callable[..., RegistryProcess]) -> None:
    registry = start_registry(extra_config="[global]\nmax_manifest_size = 2048\n")
    name = unique()
    at_limit = _padded_image(2048)
    config = json.loads(at_limit)["config"]
    image = make_image(layers=[])
    assert digest_of(image.config) == config["digest"]
    assert push_blob(registry.session, registry.url, name, image.config).status_code == 201
    ok = registry.put(f"/v2/{name}/manifests/fits", data=at_limit, headers={"Content-Type": OCI_MANIFEST})
    assert ok.status_code == 201, ok.text

    too_big = _padded_image(2049)
    response = registry.put(f"/v2/{name}/manifests/big", data=too_big, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 413
    assert_envelope(413, response.headers["Content-Type"], response.content)
    assert registry.head(f"/v2/{name}/manifests/big").status_code == 404
    assert registry.head(f"/v2/{name}/manifests/{digest_of(too_big)}").status_code == 404

    # Without Content-Length (chunked): the limit applies to the bytes as they arrive.
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(too_big), 500):
            yield too_big[i:i + 500]

    streamed = registry.put(f"/v2/{name}/manifests/big", data=chunks(),
                            headers={"Content-Type": OCI_MANIFEST})
    assert streamed.status_code == 413
    assert_envelope(413, streamed.headers["Content-Type"], streamed.content)
    assert registry.head(f"/v2/{name}/manifests/big").status_code == 404
    # The server is still fine and the manifest at the limit still served.
    assert registry.get(f"/v2/{name}/manifests/fits").content == at_limit


def test_default_manifest_limit_is_4mib(shared_registry: RegistryProcess) -> None:
    name = unique()
    body = b'{"schemaVersion":2,"pad":"' + b"x" * (4 * 1024 * 1024) + b'"}'
    response = shared_registry.put(f"/v2/{name}/manifests/big", data=body,
                                   headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 413
    assert_envelope(413, response.headers["Content-Type"], response.content)


# --- digest mismatch ----------------------------------------------------------------------------
def test_digest_mismatch_discards_session(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(5000)
    path = start_session(shared_registry, name)
    assert shared_registry.patch(path, data=data).status_code == 202
    wrong = digest_of(data + b"x")
    assert_error(shared_registry.put(with_digest(path, wrong)), 400, "DIGEST_INVALID")
    assert_error(shared_registry.get(path), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(shared_registry.put(with_digest(path, digest_of(data))), 404, "BLOB_UPLOAD_UNKNOWN")
    for digest in (wrong, digest_of(data)):
        assert shared_registry.head(f"/v2/{name}/blobs/{digest}").status_code == 404
        hexpart = digest.split(":", 1)[1]
        assert shared_registry.store.keys(f"docker/registry/v2/blobs/sha256/{hexpart[:2]}/{hexpart}") == []
    assert upload_keys(shared_registry, name) == []


def test_digest_mismatch_with_final_body(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(5000)
    path = start_session(shared_registry, name)
    assert_error(shared_registry.put(with_digest(path, ZERO_DIGEST), data=data), 400, "DIGEST_INVALID")
    assert_error(shared_registry.get(path), 404, "BLOB_UPLOAD_UNKNOWN")
    assert shared_registry.head(f"/v2/{name}/blobs/{digest_of(data)}").status_code == 404


def test_digest_mismatch_monolithic_post(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(5000)
    response = shared_registry.post(f"/v2/{name}/blobs/uploads/", params={"digest": ZERO_DIGEST}, data=data)
    assert_error(response, 400, "DIGEST_INVALID")
    assert shared_registry.head(f"/v2/{name}/blobs/{ZERO_DIGEST}").status_code == 404
    assert shared_registry.head(f"/v2/{name}/blobs/{digest_of(data)}").status_code == 404
    assert upload_keys(shared_registry, name) == []


def test_digest_mismatch_sha512(shared_registry: RegistryProcess) -> None:
    name = unique()
    path = start_session(shared_registry, name)
    assert shared_registry.patch(path, data=b"hello").status_code == 202
    assert_error(shared_registry.put(with_digest(path, "sha512:" + "a" * 128)), 400, "DIGEST_INVALID")
    assert_error(shared_registry.get(path), 404, "BLOB_UPLOAD_UNKNOWN")


# --- Content-Range ------------------------------------------------------------------------------
def test_content_range_length_mismatch_keeps_session(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(200)
    path = start_session(shared_registry, name)
    assert shared_registry.patch(path, data=data[:100], headers={"Content-Range": "0-99"}).status_code == 202
    for bad_range, body in (("100-299", data[100:]), ("100-149", data[100:]), ("100-199", b"")):
        response = shared_registry.patch(path, data=body, headers={"Content-Range": bad_range})
        assert response.status_code == 416, response.text
        assert response.headers["Range"] == "0-99"
        assert_envelope(416, response.headers["Content-Type"], response.content)
        assert shared_registry.get(path).headers["Range"] == "0-99"
    ok = shared_registry.patch(path, data=data[100:], headers={"Content-Range": "100-199"})
    assert ok.status_code == 202
    assert ok.headers["Range"] == "0-199"
    assert shared_registry.put(with_digest(path, digest_of(data))).status_code == 201
    assert shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data


def test_content_range_out_of_order(shared_registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(300)
    path = start_session(shared_registry, name)
    assert shared_registry.patch(path, data=data[:100], headers={"Content-Range": "0-99"}).status_code == 202
    for bad_range, body in (("200-299", data[200:]), ("50-149", data[50:150]), ("0-99", data[:100])):
        response = shared_registry.patch(path, data=body, headers={"Content-Range": bad_range})
        assert response.status_code == 416
        assert response.headers["Range"] == "0-99"
        assert_envelope(416, response.headers["Content-Type"], response.content, "BLOB_UPLOAD_INVALID")
    for start in (100, 200):
        chunk = data[start:start + 100]
        response = shared_registry.patch(path, data=chunk, headers={"Content-Range": f"{start}-{start + 99}"})
        assert response.status_code == 202
    assert shared_registry.put(with_digest(path, digest_of(data))).status_code == 201
    assert shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data


@pytest.mark.parametrize("header", ["abc", "10", "5-2", "-5", "bytes=0-4", "0-x"])
def test_content_range_unparsable(shared_registry: RegistryProcess, header: str) -> None:
    name = unique()
    path = start_session(shared_registry, name)
    response = shared_registry.patch(path, data=b"hello", headers={"Content-Range": header})
    assert response.status_code in (400, 416), response.text
    assert_envelope(response.status_code, response.headers["Content-Type"], response.content,
                    "BLOB_UPLOAD_INVALID")
    status = shared_registry.get(path)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-0"
    assert shared_registry.put(with_digest(path, digest_of(b"hello")), data=b"hello").status_code == 201


# --- unknown sessions ---------------------------------------------------------------------------
def test_unknown_upload_session(shared_registry: RegistryProcess) -> None:
    name = unique()
    for upload_id in (str(uuid.uuid4()), "not-a-session", "x" * 129):
        path = f"/v2/{name}/blobs/uploads/{upload_id}"
        assert_error(shared_registry.get(path), 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(shared_registry.patch(path, data=b"abc"), 404, "BLOB_UPLOAD_UNKNOWN")
        assert_error(shared_registry.put(with_digest(path, digest_of(b"abc")), data=b"abc"), 404,
                     "BLOB_UPLOAD_UNKNOWN")
        assert_error(shared_registry.delete(path), 404, "BLOB_UPLOAD_UNKNOWN")
    assert shared_registry.head(f"/v2/{name}/blobs/{digest_of(b'abc')}").status_code == 404


def test_session_of_another_namespace_is_unknown(shared_registry: RegistryProcess) -> None:
    name, other = unique(), unique()
    path = start_session(shared_registry, name)
    assert shared_registry.patch(path, data=b"abc").status_code == 202
    foreign = path.replace(f"/v2/{name}/", f"/v2/{other}/", 1)
    assert_error(shared_registry.get(foreign), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(shared_registry.patch(foreign, data=b"def"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(shared_registry.put(with_digest(foreign, digest_of(b"abc"))), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(shared_registry.delete(foreign), 404, "BLOB_UPLOAD_UNKNOWN")
    # The session is untouched in its own namespace.
    assert shared_registry.get(path).headers["Range"] == "0-2"
    assert shared_registry.put(with_digest(path, digest_of(b"abc"))).status_code == 201
    assert shared_registry.head(f"/v2/{other}/blobs/{digest_of(b'abc')}").status_code == 404


# --- invalid names, tags, digests, n/last -------------------------------------------------------
INVALID_NAMES = ["UPPER", "-lead", "trail-", "a..b", "a/", "_a", "a___b", "a/-b", "a.", "x" * 256,
                 "/".join(["abcdefghij"] * 24)]


@pytest.mark.parametrize("name", INVALID_NAMES, ids=lambda n: n[:20])
def test_invalid_name(shared_registry: RegistryProcess, name: str) -> None:
    assert_error(shared_registry.get(f"/v2/{name}/manifests/latest"), 400, "NAME_INVALID")
    assert_error(shared_registry.get(f"/v2/{name}/tags/list"), 400, "NAME_INVALID")
    assert_error(shared_registry.post(f"/v2/{name}/blobs/uploads/"), 400, "NAME_INVALID")
    assert_error(shared_registry.get(f"/v2/{name}/blobs/{ZERO_DIGEST}"), 400, "NAME_INVALID")


def test_name_length_limit(shared_registry: RegistryProcess) -> None:
    longest = "/".join(["a" * 50] * 4) + "/" + "b" * 51
    assert len(longest) == 255
    image = make_image()
    pushed = push_image(shared_registry.session, shared_registry.url, longest, image, tag="v1")
    assert pushed.status_code == 201, pushed.text
    assert shared_registry.get(f"/v2/{longest}/manifests/v1").content == image.manifest
    assert_error(shared_registry.post(f"/v2/{longest}b/blobs/uploads/"), 400, "NAME_INVALID")


@pytest.mark.parametrize("tag", ["-lead", ".dot", "a" * 129, "bad+tag", "sp%20ace", "ta%2Fg", "%C3%A9",
                                 "..", "a%00"])
def test_invalid_tag(shared_registry: RegistryProcess, tag: str) -> None:
    name = unique()
    image = make_image()
    for blob in image.blobs.values():
        assert push_blob(shared_registry.session, shared_registry.url, name, blob).status_code == 201
    response = raw_request(shared_registry, "PUT", f"/v2/{name}/manifests/{tag}".encode(), image.manifest,
                           {"Content-Type": OCI_MANIFEST})
    response.assert_error(400, "TAG_INVALID")
    by_param = shared_registry.put(f"/v2/{name}/manifests/{image.digest}", params={"tag": tag},
                                   data=image.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert_error(by_param, 400, "TAG_INVALID")
    assert shared_registry.head(f"/v2/{name}/manifests/{image.digest}").status_code == 404


@pytest.mark.parametrize("tag", [".INVALID_MANIFEST_NAME", "-lead", "a" * 129, "bad+tag", "%C3%A9"])
def test_reading_an_invalid_tag_finds_no_manifest(shared_registry: RegistryProcess, tag: str) -> None:
    """The OCI conformance suite's nonexistent manifest: GET/HEAD/DELETE answer 404 MANIFEST_UNKNOWN."""
    name = unique()
    push_image(shared_registry.session, shared_registry.url, name, make_image(), "present")
    for method in ("GET", "HEAD", "DELETE"):
        response = shared_registry.request(method, f"/v2/{name}/manifests/{tag}")
        if method == "HEAD":
            assert response.status_code == 404
        else:
            assert_error(response, 404, "MANIFEST_UNKNOWN")
    assert shared_registry.get(f"/v2/{name}/manifests/present").status_code == 200


def test_longest_tag_accepted(shared_registry: RegistryProcess) -> None:
    name = unique()
    tag = "_" + "a" * 127
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag=tag).status_code == 201
    assert shared_registry.get(f"/v2/{name}/tags/list").json()["tags"] == [tag]


INVALID_DIGESTS = ["sha256:abc", "sha256:" + "A" * 64, "sha256:" + "0" * 65, "sha512:" + "0" * 64,
                   "md5:" + "0" * 32, "sha256:" + "g" * 64, "sha256-" + "0" * 64]


@pytest.mark.parametrize("digest", INVALID_DIGESTS, ids=lambda d: d[:12])
def test_invalid_digest(shared_registry: RegistryProcess, digest: str) -> None:
    name = unique()
    assert_error(shared_registry.get(f"/v2/{name}/blobs/{digest}"), 400, "DIGEST_INVALID")
    assert_error(shared_registry.delete(f"/v2/{name}/blobs/{digest}"), 400, "DIGEST_INVALID")
    assert_error(shared_registry.get(f"/v2/{name}/referrers/{digest}"), 400, "DIGEST_INVALID")
    assert_error(shared_registry.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, data=b"x"),
                 400, "DIGEST_INVALID")
    assert_error(shared_registry.post(f"/v2/{name}/blobs/uploads/", params={"mount": digest}), 400,
                 "DIGEST_INVALID")
    if ":" in digest:
        assert_error(shared_registry.get(f"/v2/{name}/manifests/{digest}"), 400, "DIGEST_INVALID")
    path = start_session(shared_registry, name)
    assert_error(shared_registry.put(with_digest(path, digest), data=b"x"), 400, "DIGEST_INVALID")
    # A malformed digest does not consume the session.
    assert shared_registry.get(path).status_code == 204
    assert shared_registry.put(with_digest(path, digest_of(b"x")), data=b"x").status_code == 201


def test_invalid_mount_source(shared_registry: RegistryProcess) -> None:
    name = unique()
    response = shared_registry.post(f"/v2/{name}/blobs/uploads/",
                                    params={"mount": ZERO_DIGEST, "from": "../x"})
    assert_error(response, 400, "NAME_INVALID")


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "0x10", " 3"])
def test_invalid_n(shared_registry: RegistryProcess, n: str) -> None:
    name = unique()
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="v1").status_code == 201
    assert_error(shared_registry.get(f"/v2/{name}/tags/list", params={"n": n}), 400,
                 "PAGINATION_NUMBER_INVALID")
    assert_error(shared_registry.get("/v2/_catalog", params={"n": n}), 400, "PAGINATION_NUMBER_INVALID")


def test_huge_n_is_clamped(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="v1").status_code == 201
    response = shared_registry.get(f"/v2/{name}/tags/list", params={"n": "9" * 30})
    assert response.status_code == 200
    assert response.json()["tags"] == ["v1"]
    assert shared_registry.get("/v2/_catalog", params={"n": "9" * 30}).status_code == 200


def test_invalid_last(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image, tag="v1").status_code == 201
    for last in ("..", "-x", "a/b", "x" * 129):
        assert_error(shared_registry.get(f"/v2/{name}/tags/list", params={"last": last}), 400, "TAG_INVALID")
    for last in ("UP", "../etc", "a//b"):
        assert_error(shared_registry.get("/v2/_catalog", params={"last": last}), 400, "NAME_INVALID")


# --- path traversal (raw socket: sent exactly as written) ----------------------------------------
TRAVERSALS = [
    b"/v2/../../../etc/passwd/manifests/latest",
    b"/v2/a/../../b/manifests/latest",
    b"/v2/a/%2e%2e/%2e%2e/b/manifests/latest",
    b"/v2/%2e%2e/%2e%2e/etc/blobs/uploads/",
    b"/v2/a%2Fb/manifests/latest",
    b"/v2/a%2f..%2f..%2fescape/tags/list",
    b"/v2/a\\..\\..\\b/manifests/latest",
    b"/v2/a%5c..%5cb/manifests/latest",
    b"/v2/a%00b/manifests/latest",
    b"/v2//etc/passwd/manifests/latest",
    b"/v2/%2Fetc/manifests/latest",
    b"/v2/a/manifests/..",
    b"/v2/a/manifests/..%2F..%2Fescape",
    b"/v2/a/manifests/%2e%2e",
    b"/v2/a/manifests/sha256:..%2F..%2F" + b"0" * 58,
    b"/v2/a/blobs/sha256:../../../../etc/passwd",
    b"/v2/a/blobs/sha256%3a" + b"0" * 64,
    b"/v2/a/blobs/uploads/..",
    b"/v2/a/blobs/uploads/..%2F..%2F_layers",
    b"/v2/a/blobs/uploads/%2e%2e",
    b"/v2/a/referrers/..%2F" + b"0" * 64,
]


@pytest.mark.parametrize("target", TRAVERSALS, ids=lambda t: t.decode("latin-1")[3:40])
def test_path_traversal_rejected(shared_registry: RegistryProcess, target: bytes) -> None:
    for method in ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"):
        body = b'{"schemaVersion":2}' if method in ("PUT", "PATCH", "POST") else b""
        response = raw_request(shared_registry, method, target, body, {"Content-Type": OCI_MANIFEST})
        assert 400 <= response.status < 500, (method, target, response.status, response.body[:200])
        if method != "HEAD":
            response.assert_error(response.status)
    # Nothing was written outside the registry's own folders.
    workdir = shared_registry.workdir
    assert {p.name for p in workdir.iterdir()} <= {"config.toml", "data", "server.log"}
    assert not (workdir.parent / "escape").exists()
    assert not any(p.name in ("escape", "passwd") for p in workdir.rglob("*"))
    stored = shared_registry.store.keys("")
    assert not any("escape" in key or "passwd" in key or ".." in key for key in stored)


def test_traversal_does_not_reach_other_repository(shared_registry: RegistryProcess) -> None:
    secret = unique("secret")
    image = make_image()
    pushed = push_image(shared_registry.session, shared_registry.url, secret, image, tag="v1")
    assert pushed.status_code == 201, pushed.text
    layer = digest_of(image.layers[0])
    top, leaf = secret.split("/")
    for target in (f"/v2/other/../{top}/{leaf}/blobs/{layer}", f"/v2/other/%2e%2e/{top}/{leaf}/blobs/{layer}",
                   f"/v2/other%2F..%2F{top}%2F{leaf}/blobs/{layer}",
                   f"/v2/other/..%5c{top}/{leaf}/blobs/{layer}",
                   f"/v2/other/../{top}/{leaf}/manifests/v1"):
        response = raw_request(shared_registry, "GET", target)
        response.assert_error(400, "NAME_INVALID")
        assert image.layers[0] not in response.body


def test_raw_nul_and_control_bytes_rejected(shared_registry: RegistryProcess) -> None:
    for target in (b"/v2/a\x00b/manifests/latest", b"/v2/a/manifests/lat\x00est", b"/v2/a\x01/tags/list"):
        response = raw_request(shared_registry, "GET", target)
        assert 400 <= response.status < 500, (target, response.status)
    assert shared_registry.get("/v2/").status_code == 200


# --- 4xx answers always carry the envelope -------------------------------------------------------
def test_unknown_endpoint_and_method_carry_envelope(shared_registry: RegistryProcess) -> None:
    name = unique()
    response = shared_registry.get(f"/v2/{name}/nothing/here")
    assert response.status_code == 404
    assert_envelope(404, response.headers["Content-Type"], response.content)
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    for method, path in (("POST", f"/v2/{name}/manifests/v1"), ("PATCH", f"/v2/{name}/tags/list"),
                         ("PUT", f"/v2/{name}/blobs/{ZERO_DIGEST}"), ("DELETE", "/v2/_catalog"),
                         ("POST", "/v2/")):
        response = shared_registry.request(method, path, data=b"")
        assert response.status_code == 405, (method, path, response.status_code)
        assert_envelope(405, response.headers["Content-Type"], response.content, "UNSUPPORTED")


# --- client disconnects -------------------------------------------------------------------------
def error_lines(registry: RegistryProcess) -> list[str]:
    """Server log lines at level error (a client going away is expected, not an error)."""
    lines = []
    for line in registry.logs().splitlines():
        try:
            if json.loads(line).get("level") in ("error", "critical"):
                lines.append(line[:2000])
        except ValueError:
            continue
    return lines


def _wait_for_range(registry: RegistryProcess, path: str, expected: str) -> requests.Response:
    deadline = time.monotonic() + 10
    while True:
        status = registry.get(path)
        assert status.status_code == 204, status.text
        if status.headers["Range"] == expected or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


@pytest.mark.parametrize("sent", [1_000, 120_000, 3_000_000])
def test_disconnect_in_the_middle_of_patch_keeps_bytes(start_registry: Callable[..., RegistryProcess],
                                                       sent: int) -> None:
    """Headers announce the whole rest, part of it is sent, the client closes at once."""
    registry = start_registry()
    name = unique()
    data = os.urandom(sent + 200_000)
    path = start_session(registry, name)
    first = data[:50_000]
    assert registry.patch(path, data=first).status_code == 202
    with socket.create_connection(("127.0.0.1", registry.port), timeout=20) as sock:
        sock.sendall(f"PATCH {path} HTTP/1.1\r\nHost: {registry.host}\r\n{auth.header_lines(registry)}"
                     f"Content-Type: application/octet-stream\r\nContent-Length: {len(data) - len(first)}\r\n"
                     "\r\n".encode() + data[len(first):len(first) + sent])
    kept = len(first) + sent
    status = _wait_for_range(registry, path, f"0-{kept - 1}")
    assert status.headers["Range"] == f"0-{kept - 1}"
    rest = registry.patch(location_path(status), data=data[kept:],
                          headers={"Content-Range": f"{kept}-{len(data) - 1}"})
    assert rest.status_code == 202, rest.text
    assert rest.headers["Range"] == f"0-{len(data) - 1}"
    put = registry.put(with_digest(location_path(rest), digest_of(data)))
    assert put.status_code == 201, put.text
    assert registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data
    assert error_lines(registry) == []


def test_disconnect_in_the_middle_of_chunked_patch_keeps_bytes(registry: RegistryProcess) -> None:
    """Chunked transfer encoding, cut in the middle of the fifth chunk."""
    name = unique()
    data = os.urandom(64_000)
    path = start_session(registry, name)
    with socket.create_connection(("127.0.0.1", registry.port), timeout=20) as sock:
        sock.sendall(f"PATCH {path} HTTP/1.1\r\nHost: {registry.host}\r\n{auth.header_lines(registry)}"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        for i in range(0, 40_000, 10_000):
            sock.sendall(b"%x\r\n" % 10_000 + data[i:i + 10_000] + b"\r\n")
        sock.sendall(b"%x\r\n" % 10_000 + data[40_000:44_000])
    status = _wait_for_range(registry, path, "0-43999")
    assert status.headers["Range"] == "0-43999"
    put = registry.put(with_digest(location_path(status), digest_of(data)), data=data[44_000:])
    assert put.status_code == 201, put.text
    assert registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data
    assert error_lines(registry) == []


def test_disconnect_in_the_middle_of_get(registry: RegistryProcess) -> None:
    name = unique()
    data = os.urandom(8 * 1024 * 1024)
    digest = digest_of(data)
    assert push_blob(registry.session, registry.url, name, data).status_code == 201
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", registry.port), timeout=20) as sock:
            sock.sendall(f"GET /v2/{name}/blobs/{digest} HTTP/1.1\r\nHost: {registry.host}\r\n"
                         f"{auth.header_lines(registry)}\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    assert registry.get(f"/v2/{name}/blobs/{digest}").content == data
    assert registry.get("/v2/").status_code == 200
    assert error_lines(registry) == []


# --- headers ------------------------------------------------------------------------------------
def test_oversized_header_rejected_and_server_survives(shared_registry: RegistryProcess) -> None:
    response = raw_request(shared_registry, "GET", "/v2/", headers={"X-Big": "x" * 100_000})
    assert 400 <= response.status < 500
    many = {f"X-H{i}": "v" for i in range(500)}
    response = raw_request(shared_registry, "GET", "/v2/", headers=many)
    assert response.status < 500
    assert shared_registry.get("/v2/").status_code == 200
