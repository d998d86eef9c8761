"""Immutable tags against the real server: 409 DENIED naming the tag, idempotent re-push, exclusions
(the repository's list, else the global one), nested namespaces, deletes governed by policy only."""

from __future__ import annotations

from collections.abc import Callable

import requests

from tests.helpers.oci import Image, digest_of, make_image, push_image
from tests.helpers.server import RegistryProcess

CONFIG = """
[global]
immutable_tags = true
immutable_tags_exclusions = ["^latest$", "^dev-"]

[global.access_policy]
default_allow = true

[repository."mutable"]
access_policy = { default_allow = true }
immutable_tags = false

[repository."strict"]
access_policy = { default_allow = true }
immutable_tags_exclusions = ["^nightly$"]

[repository."only-here"]
access_policy = { default_allow = true }
immutable_tags = true
"""


def put_manifest(server: RegistryProcess, name: str, image: Image, reference: str,
                 params: dict[str, str] | None = None) -> requests.Response:
    return server.put(f"/v2/{name}/manifests/{reference}", data=image.manifest, params=params,
                      headers={"Content-Type": image.media_type})


def assert_immutable(response: requests.Response, tag: str) -> None:
    assert response.status_code == 409, (response.status_code, response.text)
    error = response.json()["errors"][0]
    assert error["code"] == "DENIED" and repr(tag) in error["message"]


def test_immutable_tags(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(CONFIG)
    first, second = make_image(), make_image()
    assert push_image(server.session, server.url, "app", first, "v1").status_code == 201
    for blob in second.blobs.values():
        server.post("/v2/app/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob)
    assert_immutable(put_manifest(server, "app", second, "v1"), "v1")
    assert server.get("/v2/app/manifests/v1").content == first.manifest  # unchanged
    # The same digest again is fine (idempotent re-push), by tag and by digest with ?tag=.
    assert put_manifest(server, "app", first, "v1").status_code == 201
    assert put_manifest(server, "app", first, first.digest, {"tag": "v1"}).status_code == 201
    assert_immutable(put_manifest(server, "app", second, second.digest, {"tag": "v1"}), "v1")
    # A rejected push writes nothing: the second manifest is not there by digest either.
    assert server.get(f"/v2/app/manifests/{second.digest}").status_code == 404
    # Global exclusions: latest and dev-* move freely.
    for tag in ("latest", "dev-123"):
        assert put_manifest(server, "app", first, tag).status_code == 201
        assert put_manifest(server, "app", second, tag).status_code == 201
        assert server.get(f"/v2/app/manifests/{tag}").content == second.manifest
    # "latest-1" is not excluded by ^latest$.
    assert put_manifest(server, "app", first, "latest-1").status_code == 201
    assert_immutable(put_manifest(server, "app", second, "latest-1"), "latest-1")
    # Deleting a tag is a matter of policy, not immutability; afterwards the tag can be pushed anew.
    assert server.delete("/v2/app/manifests/v1").status_code == 202
    assert put_manifest(server, "app", second, "v1").status_code == 201


def test_repository_settings_and_nested_namespaces(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(CONFIG)
    first, second = make_image(), make_image()
    for name in ("mutable/a/b", "strict/a/b", "only-here/x"):
        assert push_image(server.session, server.url, name, first, "v1").status_code == 201
        assert push_image(server.session, server.url, name, first, "latest").status_code == 201
        assert push_image(server.session, server.url, name, first, "nightly").status_code == 201
        for blob in second.blobs.values():
            server.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob)
    # immutable_tags = false in the repository overrides the global true (nested namespace too).
    assert put_manifest(server, "mutable/a/b", second, "v1").status_code == 201
    # The repository's own exclusion list replaces the global one.
    assert put_manifest(server, "strict/a/b", second, "nightly").status_code == 201
    assert_immutable(put_manifest(server, "strict/a/b", second, "latest"), "latest")
    assert_immutable(put_manifest(server, "strict/a/b", second, "v1"), "v1")
    # Enabled in the repository only: the global exclusions still apply when it has none.
    assert put_manifest(server, "only-here/x", second, "latest").status_code == 201
    assert_immutable(put_manifest(server, "only-here/x", second, "nightly"), "nightly")


def test_without_immutability_tags_move(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry()
    first, second = make_image(), make_image()
    assert push_image(server.session, server.url, "app", first, "v1").status_code == 201
    assert push_image(server.session, server.url, "app", second, "v1").status_code == 201
    assert server.get("/v2/app/manifests/v1").content == second.manifest
