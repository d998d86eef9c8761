"""Black-box content discovery: tag listing, catalog pagination and the referrers API."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers.oci import (
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    digest_of,
    make_image,
    make_index,
    push_blob,
    push_image,
)
from tests.helpers.server import RegistryProcess

EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
SIG_TYPE = "application/vnd.example.signature"
SBOM_TYPE = "application/vnd.example.sbom"


def unique(prefix: str = "disc") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    assert response.json()["errors"][0]["code"] == code, response.text


def link_path(response: requests.Response) -> str:
    """The target of `Link: <...>; rel="next"` as a path with query."""
    link = response.headers["Link"]
    assert link.endswith('rel="next"'), link
    target = link.split(";", 1)[0].strip()
    assert target.startswith("<") and target.endswith(">"), link
    parts = urlsplit(target[1:-1])
    return parts.path + "?" + parts.query


def push_tags(registry: RegistryProcess, name: str, tags: list[str]) -> Image:
    image = make_image()
    assert push_image(registry.session, registry.url, name, image).status_code == 201
    for tag in tags:
        put = registry.put(f"/v2/{name}/manifests/{tag}", data=image.manifest,
                           headers={"Content-Type": OCI_MANIFEST})
        assert put.status_code == 201, put.text
    return image


# --- tags ---------------------------------------------------------------------------------------
TAGS = ["v10", "v2", "A", "latest", "_x", "v1.0", "v1-rc", "1"]


@pytest.fixture(scope="module")
def tagged(shared_registry: RegistryProcess) -> str:
    name = unique()
    push_tags(shared_registry, name, TAGS)
    return name


def test_tags_list_lexical(shared_registry: RegistryProcess, tagged: str) -> None:
    response = shared_registry.get(f"/v2/{tagged}/tags/list")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"name": tagged, "tags": sorted(TAGS)}
    assert "Link" not in response.headers


def test_tags_list_n_limits(shared_registry: RegistryProcess, tagged: str) -> None:
    response = shared_registry.get(f"/v2/{tagged}/tags/list", params={"n": 3})
    assert response.status_code == 200
    assert response.json()["tags"] == sorted(TAGS)[:3]
    assert "Link" in response.headers


def test_tags_list_last_starts_after(shared_registry: RegistryProcess, tagged: str) -> None:
    ordered = sorted(TAGS)
    response = shared_registry.get(f"/v2/{tagged}/tags/list", params={"last": ordered[2]})
    assert response.status_code == 200
    assert response.json()["tags"] == ordered[3:]
    both = shared_registry.get(f"/v2/{tagged}/tags/list", params={"n": 2, "last": ordered[2]})
    assert both.json()["tags"] == ordered[3:5]
    # `last` need not be an existing tag: listing resumes after where it would sort.
    between = shared_registry.get(f"/v2/{tagged}/tags/list", params={"last": "v1"})
    assert between.json()["tags"] == [t for t in ordered if t > "v1"]
    end = shared_registry.get(f"/v2/{tagged}/tags/list", params={"last": ordered[-1]})
    assert end.json()["tags"] == []


def test_tags_list_link_pagination(shared_registry: RegistryProcess, tagged: str) -> None:
    collected: list[str] = []
    path = f"/v2/{tagged}/tags/list?n=3"
    pages = 0
    while True:
        response = shared_registry.get(path)
        assert response.status_code == 200
        page = response.json()["tags"]
        assert len(page) <= 3
        collected += page
        pages += 1
        if "Link" not in response.headers:
            break
        path = link_path(response)
        assert path.startswith(f"/v2/{tagged}/tags/list?")
        assert pages < 10
    assert collected == sorted(TAGS)
    assert pages == 3


def test_tags_list_exact_page_has_no_link(shared_registry: RegistryProcess, tagged: str) -> None:
    response = shared_registry.get(f"/v2/{tagged}/tags/list", params={"n": len(TAGS)})
    assert response.json()["tags"] == sorted(TAGS)
    assert "Link" not in response.headers


def test_tags_list_unknown_name_404(shared_registry: RegistryProcess) -> None:
    assert_error(shared_registry.get(f"/v2/{unique()}/tags/list"), 404, "NAME_UNKNOWN")


def test_tags_list_after_new_tag(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = push_tags(shared_registry, name, ["b"])
    assert shared_registry.get(f"/v2/{name}/tags/list").json()["tags"] == ["b"]
    put = shared_registry.put(f"/v2/{name}/manifests/a", data=image.manifest,
                              headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 201
    assert shared_registry.get(f"/v2/{name}/tags/list").json()["tags"] == ["a", "b"]


# --- catalog ------------------------------------------------------------------------------------
def test_catalog_lists_and_paginates(registry: RegistryProcess) -> None:
    names = ["zeta", "alpha/one", "alpha", "beta/deep/name", "alpha-two", "m.n"]
    for name in names:
        push_tags(registry, name, ["t"])
    response = registry.get("/v2/_catalog")
    assert response.status_code == 200
    assert response.json() == {"repositories": sorted(names)}
    assert "Link" not in response.headers

    collected: list[str] = []
    path = "/v2/_catalog?n=4"
    pages = 0
    while path:
        page = registry.get(path)
        assert page.status_code == 200
        repositories = page.json()["repositories"]
        assert len(repositories) <= 4
        collected += repositories
        pages += 1
        path = link_path(page) if "Link" in page.headers else ""
        assert pages < 10
    assert collected == sorted(names)
    assert pages == 2

    after = registry.get("/v2/_catalog", params={"last": "alpha-two", "n": 2})
    assert after.json()["repositories"] == ["alpha/one", "beta/deep/name"]


def test_catalog_default_page_is_100(registry: RegistryProcess) -> None:
    image = make_image(layers=[], config=EMPTY_JSON, config_media_type=EMPTY_TYPE)
    names = [f"many/r{i:03d}" for i in range(101)]
    for name in names:
        assert push_image(registry.session, registry.url, name, image, tag="t").status_code == 201
    first = registry.get("/v2/_catalog")
    assert first.status_code == 200
    assert first.json()["repositories"] == names[:100]
    rest = registry.get(link_path(first))
    assert rest.json()["repositories"] == names[100:]
    assert "Link" not in rest.headers


def test_catalog_includes_repository_after_push(shared_registry: RegistryProcess) -> None:
    name = unique()
    before = shared_registry.get("/v2/_catalog", params={"n": 1000}).json()["repositories"]
    assert name not in before
    push_tags(shared_registry, name, ["t"])
    after = shared_registry.get("/v2/_catalog", params={"n": 1000}).json()["repositories"]
    assert name in after
    assert after == sorted(after)


# --- referrers ----------------------------------------------------------------------------------
@dataclass
class ReferrersSetup:
    name: str
    subject: Image
    artifacts: list[bytes]
    index: bytes
    orphan_subject: str
    orphan: bytes


def _descriptor(body: bytes, media_type: str) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(body), "size": len(body)}


def _artifact(subject: dict[str, Any], artifact_type: str | None, config_type: str, n: int) -> Image:
    config = EMPTY_JSON if config_type == EMPTY_TYPE else json.dumps({"n": n}).encode()
    layer = f"layer {n}".encode()
    return make_image(layers=[layer], config=config, config_media_type=config_type,
                      artifact_type=artifact_type, subject=subject,
                      annotations={"org.example.n": str(n), "org.opencontainers.image.created": "2024"})


@pytest.fixture(scope="module")
def referrers(shared_registry: RegistryProcess) -> ReferrersSetup:
    """What the conformance suite pushes: an image, 4 artifacts and an index pointing at it, and an
    artifact whose subject is never pushed."""
    registry = shared_registry
    name = unique("referrers")
    subject = make_image()
    assert push_image(registry.session, registry.url, name, subject, tag="subject").status_code == 201
    assert push_blob(registry.session, registry.url, name, EMPTY_JSON).status_code == 201
    subject_ref = _descriptor(subject.manifest, OCI_MANIFEST)
    images = [
        _artifact(subject_ref, SIG_TYPE, EMPTY_TYPE, 1),
        _artifact(subject_ref, SIG_TYPE, EMPTY_TYPE, 2),
        _artifact(subject_ref, SBOM_TYPE, EMPTY_TYPE, 3),
        _artifact(subject_ref, None, "application/vnd.example.config+json", 4),
    ]
    artifacts = []
    for image in images:
        put = push_image(registry.session, registry.url, name, image)
        assert put.status_code == 201, put.text
        assert put.headers["OCI-Subject"] == subject.digest
        artifacts.append(image.manifest)
    index = make_index([images[0]], subject=subject_ref, annotations={"org.example.kind": "index"},
                       artifact_type="application/vnd.example.index")
    put = registry.put(f"/v2/{name}/manifests/{digest_of(index)}", data=index,
                       headers={"Content-Type": OCI_INDEX})
    assert put.status_code == 201, put.text
    assert put.headers["OCI-Subject"] == subject.digest

    ghost = b'{"schemaVersion":2,"never":"pushed"}'
    orphan = _artifact(_descriptor(ghost, OCI_MANIFEST), SIG_TYPE, EMPTY_TYPE, 5)
    put = push_image(registry.session, registry.url, name, orphan)
    assert put.status_code == 201, put.text
    assert put.headers["OCI-Subject"] == digest_of(ghost)
    return ReferrersSetup(name, subject, artifacts, index, digest_of(ghost), orphan.manifest)


def _expected(body: bytes, media_type: str) -> dict[str, Any]:
    document = json.loads(body)
    expected = {"mediaType": media_type, "digest": digest_of(body), "size": len(body)}
    artifact_type = document.get("artifactType") or document.get("config", {}).get("mediaType")
    if artifact_type:
        expected["artifactType"] = artifact_type
    if document.get("annotations"):
        expected["annotations"] = document["annotations"]
    return expected


def test_referrers_none(shared_registry: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, image).status_code == 201
    response = shared_registry.get(f"/v2/{name}/referrers/{image.digest}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    assert response.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    # Also for a namespace that does not exist at all.
    empty = shared_registry.get(f"/v2/{unique()}/referrers/{image.digest}")
    assert empty.status_code == 200
    assert empty.json()["manifests"] == []


def test_referrers_list_every_referrer(shared_registry: RegistryProcess, referrers: ReferrersSetup) -> None:
    response = shared_registry.get(f"/v2/{referrers.name}/referrers/{referrers.subject.digest}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    assert "OCI-Filters-Applied" not in response.headers
    index = response.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    manifests = index["manifests"]
    assert len(manifests) == 5
    expected = [_expected(body, OCI_MANIFEST) for body in referrers.artifacts]
    expected.append(_expected(referrers.index, OCI_INDEX))
    by_digest = {d["digest"]: d for d in manifests}
    for descriptor in expected:
        assert by_digest[descriptor["digest"]] == descriptor


def test_referrers_artifact_type_falls_back_to_config(shared_registry: RegistryProcess,
                                                     referrers: ReferrersSetup) -> None:
    response = shared_registry.get(f"/v2/{referrers.name}/referrers/{referrers.subject.digest}")
    by_digest = {d["digest"]: d for d in response.json()["manifests"]}
    fallback = by_digest[digest_of(referrers.artifacts[3])]
    assert fallback["artifactType"] == "application/vnd.example.config+json"
    assert fallback["annotations"]["org.example.n"] == "4"
    index = by_digest[digest_of(referrers.index)]
    assert index["artifactType"] == "application/vnd.example.index"
    assert index["annotations"] == {"org.example.kind": "index"}


def test_referrers_filter_by_artifact_type(shared_registry: RegistryProcess,
                                           referrers: ReferrersSetup) -> None:
    response = shared_registry.get(f"/v2/{referrers.name}/referrers/{referrers.subject.digest}",
                                   params={"artifactType": SIG_TYPE})
    assert response.status_code == 200
    assert response.headers["OCI-Filters-Applied"] == "artifactType"
    manifests = response.json()["manifests"]
    assert len(manifests) == 2
    assert {d["digest"] for d in manifests} == {digest_of(b) for b in referrers.artifacts[:2]}
    assert all(d["artifactType"] == SIG_TYPE for d in manifests)
    nothing = shared_registry.get(f"/v2/{referrers.name}/referrers/{referrers.subject.digest}",
                                  params={"artifactType": "application/vnd.none"})
    assert nothing.status_code == 200
    assert nothing.headers["OCI-Filters-Applied"] == "artifactType"
    assert nothing.json()["manifests"] == []


def test_referrers_of_subject_never_pushed(shared_registry: RegistryProcess,
                                           referrers: ReferrersSetup) -> None:
    subject = shared_registry.head(f"/v2/{referrers.name}/manifests/{referrers.orphan_subject}")
    assert subject.status_code == 404
    response = shared_registry.get(f"/v2/{referrers.name}/referrers/{referrers.orphan_subject}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    assert response.json()["manifests"] == [_expected(referrers.orphan, OCI_MANIFEST)]


def test_referrers_scoped_to_namespace(shared_registry: RegistryProcess, referrers: ReferrersSetup) -> None:
    response = shared_registry.get(f"/v2/{unique()}/referrers/{referrers.subject.digest}")
    assert response.status_code == 200
    assert response.json()["manifests"] == []


def test_referrers_invalid_digest_400(shared_registry: RegistryProcess) -> None:
    name = unique()
    for digest in ("sha256:abc", "latest", "sha256:" + "A" * 64, "md5:" + "0" * 32):
        assert_error(shared_registry.get(f"/v2/{name}/referrers/{digest}"), 400, "DIGEST_INVALID")


def test_referrers_updated_by_new_push(shared_registry: RegistryProcess) -> None:
    name = unique()
    subject = make_image()
    assert push_image(shared_registry.session, shared_registry.url, name, subject).status_code == 201
    url = f"/v2/{name}/referrers/{subject.digest}"
    assert shared_registry.get(url).json()["manifests"] == []  # now cached as empty
    artifact = make_image(layers=[], config=EMPTY_JSON, config_media_type=EMPTY_TYPE, artifact_type=SIG_TYPE,
                          subject=_descriptor(subject.manifest, OCI_MANIFEST))
    assert EMPTY_JSON_DIGEST in artifact.blobs
    put = push_image(shared_registry.session, shared_registry.url, name, artifact)
    assert put.status_code == 201
    assert shared_registry.get(url).json()["manifests"] == [_expected(artifact.manifest, OCI_MANIFEST)]


def test_referrers_survive_restart(registry: RegistryProcess) -> None:
    name = unique()
    subject = make_image(config_media_type=OCI_CONFIG)
    assert push_image(registry.session, registry.url, name, subject).status_code == 201
    artifact = make_image(layers=[], config=EMPTY_JSON, config_media_type=EMPTY_TYPE, artifact_type=SBOM_TYPE,
                          subject=_descriptor(subject.manifest, OCI_MANIFEST), annotations={"k": "v"})
    assert push_image(registry.session, registry.url, name, artifact).status_code == 201
    registry.restart()
    response = registry.get(f"/v2/{name}/referrers/{subject.digest}")
    assert response.status_code == 200
    assert response.json()["manifests"] == [_expected(artifact.manifest, OCI_MANIFEST)]


def test_unknown_namespace_tags_stay_404(shared_registry: RegistryProcess) -> None:
    """Regression: the first 404 must not leave an empty listing cached as if the namespace existed."""
    for _ in range(3):
        response = shared_registry.get("/v2/never/pushed/here/tags/list")
        assert response.status_code == 404
        assert response.json()["errors"][0]["code"] == "NAME_UNKNOWN"
