from __future__ import annotations

import json
from typing import Any

import pytest

from app import errors, manifest
from app.grammar import Digest

CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "c" * 64, "size": 2}
LAYER = {
    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
    "digest": "sha256:" + "d" * 64,
    "size": 9,
}


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def parse(doc: dict[str, Any], content_type: str | None = manifest.OCI_MANIFEST) -> manifest.Manifest:
    data = body(doc)
    return manifest.parse(data, content_type, Digest.of(data))


def test_image_manifest_references() -> None:
    parsed = parse(
        {"schemaVersion": 2, "mediaType": manifest.OCI_MANIFEST, "config": CONFIG, "layers": [LAYER]}
    )
    assert [str(d.digest) for d in parsed.blobs] == [CONFIG["digest"], LAYER["digest"]]
    assert parsed.children == [] and parsed.subject is None
    assert parsed.artifact_type == CONFIG["mediaType"]


def test_media_type_from_header_when_body_has_none() -> None:
    parsed = parse(
        {"schemaVersion": 2, "config": CONFIG, "layers": []},
        "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
    )
    assert parsed.media_type == manifest.OCI_MANIFEST


def test_index_with_subject_and_annotations() -> None:
    child = {"mediaType": manifest.OCI_MANIFEST, "digest": "sha256:" + "e" * 64, "size": 100}
    parsed = parse(
        {
            "schemaVersion": 2,
            "mediaType": manifest.OCI_INDEX,
            "manifests": [child],
            "subject": child,
            "artifactType": "application/x-sig",
            "annotations": {"a": "b"},
        },
        manifest.OCI_INDEX,
    )
    assert [str(d.digest) for d in parsed.children] == [child["digest"]]
    assert str(parsed.subject) == child["digest"]
    descriptor = parsed.referrer_descriptor()
    assert descriptor["artifactType"] == "application/x-sig" and descriptor["annotations"] == {"a": "b"}


def test_foreign_layers_are_not_required() -> None:
    foreign = {
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": "sha256:" + "f" * 64,
        "size": 5,
        "urls": ["https://example.invalid/layer"],
    }
    parsed = parse(
        {"schemaVersion": 2, "mediaType": manifest.DOCKER_MANIFEST, "config": CONFIG, "layers": [foreign]},
        manifest.DOCKER_MANIFEST,
    )
    assert [str(d.digest) for d in parsed.blobs] == [CONFIG["digest"]]


@pytest.mark.parametrize(
    ("doc", "content_type", "reason"),
    [
        (
            {"schemaVersion": 1, "name": "x"},
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "schema 1",
        ),
        ({"schemaVersion": 3, "config": CONFIG, "layers": []}, manifest.OCI_MANIFEST, "schemaVersion"),
        ({"schemaVersion": 2, "config": CONFIG, "layers": []}, None, "Content-Type"),
        (
            {"schemaVersion": 2, "mediaType": manifest.OCI_INDEX, "manifests": []},
            manifest.OCI_MANIFEST,
            "does not match",
        ),
        ({"schemaVersion": 2, "config": CONFIG, "layers": []}, "application/json", "unsupported"),
        ({"schemaVersion": 2, "layers": []}, manifest.OCI_MANIFEST, "no config"),
        ({"schemaVersion": 2, "config": CONFIG, "layers": {}}, manifest.OCI_MANIFEST, "layers"),
        (
            {"schemaVersion": 2, "config": {**CONFIG, "digest": "sha256:xyz"}, "layers": []},
            manifest.OCI_MANIFEST,
            "config",
        ),
        ({"schemaVersion": 2, "config": {**CONFIG, "size": -1}, "layers": []}, manifest.OCI_MANIFEST, "size"),
        (
            {"schemaVersion": 2, "config": CONFIG, "layers": [], "annotations": {"a": 1}},
            manifest.OCI_MANIFEST,
            "annotations",
        ),
    ],
)
def test_invalid_manifests(doc: dict[str, Any], content_type: str | None, reason: str) -> None:
    with pytest.raises(errors.ManifestInvalid) as caught:
        parse(doc, content_type)
    assert reason in caught.value.message


def test_not_json() -> None:
    with pytest.raises(errors.ManifestInvalid):
        manifest.parse(b"{not json", manifest.OCI_MANIFEST, Digest.of(b"x"))
    with pytest.raises(errors.ManifestInvalid):
        manifest.parse(b"[1, 2]", manifest.OCI_MANIFEST, Digest.of(b"x"))


def test_sniff_media_type() -> None:
    assert manifest.sniff_media_type(body({"mediaType": manifest.DOCKER_LIST})) == manifest.DOCKER_LIST
    assert manifest.sniff_media_type(body({"schemaVersion": 2, "manifests": []})) == manifest.OCI_INDEX
    assert manifest.sniff_media_type(body({"schemaVersion": 2, "config": CONFIG})) == manifest.OCI_MANIFEST
