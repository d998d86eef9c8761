"""The server's garbage collector on its interval (app/services/garbage.py), through a real server:
retention rules are enforced on the GC interval, and what they remove is not served from the cache."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.helpers.oci import digest_of, make_image, push_image, random_layer
from tests.helpers.server import RegistryProcess

RETENTION_ON_THE_GC_INTERVAL = """
[global.gc]
interval = "1s"
grace_period = "2s"
delete_untagged = true

[global.retention_policy]
rules = ['image.tag == "keep"']
"""


def test_retention_rules_are_enforced_on_the_gc_interval(
        start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(RETENTION_ON_THE_GC_INTERVAL)
    kept, dropped = make_image([random_layer()]), make_image([random_layer()])
    for tag, image in (("keep", kept), ("drop", dropped)):
        assert push_image(server.session, server.url, "team/app", image, tag).status_code == 201
    accept = {"Accept": kept.media_type}
    assert server.get("/v2/team/app/manifests/drop", headers=accept).status_code == 200  # now cached
    deadline = time.monotonic() + 30
    while server.get("/v2/team/app/manifests/drop", headers=accept).status_code != 404:
        assert time.monotonic() < deadline, "the tag no rule keeps is still served"
        time.sleep(0.3)
    assert server.get("/v2/team/app/manifests/keep", headers=accept).content == kept.manifest
    assert server.get("/v2/team/app/tags/list").json()["tags"] == ["keep"]
    # Untagged now, its manifest and then its layer are collected (delete_untagged, grace 2 s).
    layer = digest_of(dropped.layers[0])
    while server.head(f"/v2/team/app/blobs/{layer}").status_code != 404:
        assert time.monotonic() < deadline + 30, "the untagged image's layer was never collected"
        time.sleep(0.3)
    assert server.head(f"/v2/team/app/blobs/{digest_of(kept.layers[0])}").status_code == 200
