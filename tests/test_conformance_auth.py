"""The OCI API behaviours with credentials under a deny-by-default policy.

1. The whole black-box API suite (pull, push, discovery, management, bad input) runs again with every
   server knowing one identity and denying everyone else: once with every request carrying Basic
   credentials, once with every request carrying a bearer token fetched from the token service for
   the scope it needs (as docker and containerd do).
2. A representative push/pull/chunked/mount/referrers/delete sequence checks what only exists with
   authorization: anonymous refusals on every endpoint, and mounts that need read access to the source.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import requests
from argon2 import PasswordHasher

from tests.helpers import auth
from tests.helpers.oci import (
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    OCI_MANIFEST,
    digest_of,
    make_image,
    push_blob,
    push_image,
)
from tests.helpers.server import REPO_ROOT, RegistryProcess

API_SUITES = ["tests/test_api_pull.py", "tests/test_api_push.py", "tests/test_api_discovery.py",
              "tests/test_api_management.py", "tests/test_api_bad_input.py"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", auth.MODES)
def test_api_suites_pass_with_credentials_under_deny_by_default(mode: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *API_SUITES],
        cwd=REPO_ROOT, env={**os.environ, auth.ENVIRONMENT_VARIABLE: mode},
        capture_output=True, text=True, timeout=1100, check=False)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary


FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
SEQUENCE_CONFIG = f"""
[auth.identity.dev]
username = "dev"
password = "{FAST.hash('dev-pw')}"

[auth.identity.reader]
username = "reader"
password = "{FAST.hash('reader-pw')}"

[global.access_policy]
default_allow = false
rules = ['identity.username == "dev" || (identity.username == "reader" && request.action.startsWith("get-"))']

[repository."team"]
access_policy = {{ default_allow = false, rules = ['identity.username != null'] }}

[repository."vault"]
access_policy = {{ default_allow = false, rules = [
  'identity.username == "dev" && !(request.action in ["get-blob", "get-manifest"])'] }}
"""


def anonymous(server: RegistryProcess, method: str, path: str) -> requests.Response:
    return requests.request(method, server.url + path, timeout=30, allow_redirects=False)


@pytest.mark.parametrize("mode", auth.MODES)
def test_representative_sequence_with_credentials(start_registry: Callable[..., RegistryProcess],
                                                  mode: str) -> None:
    server = start_registry(SEQUENCE_CONFIG)
    server.session.auth = ("dev", "dev-pw") if mode == "basic" else auth.TokenAuth("dev", "dev-pw")
    image = make_image()
    layer = image.layers[0]

    # Push: monolithic blobs, then a chunked upload, then the manifest.
    assert push_image(server.session, server.url, "team/app", image, "v1").status_code == 201
    chunked = b"x" * 150_000
    start = server.post("/v2/team/app/blobs/uploads/")
    assert start.status_code == 202
    location = start.headers["Location"]
    for offset in range(0, len(chunked), 50_000):
        part = chunked[offset:offset + 50_000]
        content_range = f"{offset}-{offset + len(part) - 1}"
        patch = server.patch(location, data=part, headers={"Content-Type": "application/octet-stream",
                                                           "Content-Range": content_range})
        assert patch.status_code == 202, patch.text
        location = patch.headers["Location"]
    assert server.get(location).status_code == 204
    done = server.put(location, params={"digest": digest_of(chunked)})
    assert done.status_code == 201, done.text

    # Pull.
    assert server.get("/v2/team/app/manifests/v1").content == image.manifest
    assert server.get(f"/v2/team/app/blobs/{digest_of(layer)}").content == layer
    assert server.get("/v2/team/app/tags/list").json()["tags"] == ["v1"]
    assert "team/app" in server.get("/v2/_catalog").json()["repositories"]

    # Referrers.
    assert push_blob(server.session, server.url, "team/app", EMPTY_JSON).status_code == 201
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_JSON_DIGEST, "size": 2}
    referrer = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sbom",
        "config": empty, "layers": [empty],
        "subject": {"mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest)},
    }).encode()
    put = server.put(f"/v2/team/app/manifests/{digest_of(referrer)}", data=referrer,
                     headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 201 and put.headers["OCI-Subject"] == image.digest
    listed = server.get(f"/v2/team/app/referrers/{image.digest}").json()["manifests"]
    assert [d["digest"] for d in listed] == [digest_of(referrer)]

    # Mounts: from a namespace the caller may read → 201; from one it may not read → a new session.
    assert server.post("/v2/team/copy/blobs/uploads/", params={
        "mount": digest_of(layer), "from": "team/app"}).status_code == 201
    assert push_blob(server.session, server.url, "vault/secret", b"secret layer").status_code == 201
    fallback = server.post("/v2/team/copy/blobs/uploads/", params={
        "mount": digest_of(b"secret layer"), "from": "vault/secret"})
    assert fallback.status_code == 202 and "Location" in fallback.headers
    assert server.get(f"/v2/team/copy/blobs/{digest_of(b'secret layer')}").status_code == 404
    # Without `from`, repository policies make the decision namespace-dependent: no blind mount.
    blind = server.post("/v2/team/copy/blobs/uploads/", params={"mount": digest_of(chunked)})
    assert blind.status_code == 202

    # The read-only identity cannot write or mount, and anonymous callers are asked for credentials.
    reader = requests.Session()
    reader.auth = ("reader", "reader-pw")
    assert reader.get(f"{server.url}/v2/team/app/manifests/v1", timeout=30).status_code == 200
    assert reader.post(f"{server.url}/v2/team/app/blobs/uploads/", timeout=30).status_code == 403
    assert reader.post(f"{server.url}/v2/team/app/blobs/uploads/", timeout=30, params={
        "mount": digest_of(layer), "from": "team/app"}).status_code == 403
    for method, path in [("GET", "/v2/"), ("GET", "/v2/_catalog"), ("GET", "/v2/team/app/tags/list"),
                         ("GET", "/v2/team/app/manifests/v1"), ("HEAD", "/v2/team/app/manifests/v1"),
                         ("GET", f"/v2/team/app/blobs/{digest_of(layer)}"),
                         ("GET", f"/v2/team/app/referrers/{image.digest}"),
                         ("POST", "/v2/team/app/blobs/uploads/"),
                         ("PUT", "/v2/team/app/manifests/v2"),
                         ("DELETE", f"/v2/team/app/manifests/{image.digest}"),
                         ("DELETE", f"/v2/team/app/blobs/{digest_of(layer)}")]:
        response = anonymous(server, method, path)
        assert response.status_code == 401, (method, path, response.status_code)
        challenge = f'Bearer realm="{server.url}/token",service="simple-registry"'
        scope = auth.scopes_for(method, server.url + path)
        if scope and path != "/v2/_catalog":
            challenge += f',scope="{scope[0]}"'
        elif path == "/v2/_catalog":
            challenge += ',scope="registry:catalog:*"'
        assert response.headers["WWW-Authenticate"] == challenge, (method, path)

    # Delete.
    assert server.delete(f"/v2/team/app/manifests/{digest_of(referrer)}").status_code == 202
    assert server.delete("/v2/team/app/manifests/v1").status_code == 202
    assert server.delete(f"/v2/team/app/manifests/{image.digest}").status_code == 202
    assert server.get(f"/v2/team/app/manifests/{image.digest}").status_code == 404
    assert server.delete(f"/v2/team/app/blobs/{digest_of(layer)}").status_code == 202


def test_mount_without_from_under_a_namespace_independent_policy(
        start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(f"""
[auth.identity.dev]
username = "dev"
password = "{FAST.hash('dev-pw')}"

[global.access_policy]
rules = ['identity.username == "dev"']
""")
    server.session.auth = ("dev", "dev-pw")
    assert push_blob(server.session, server.url, "one/app", b"shared layer").status_code == 201
    mounted = server.post("/v2/two/app/blobs/uploads/", params={"mount": digest_of(b"shared layer")})
    assert mounted.status_code == 201, mounted.text
    assert server.get(f"/v2/two/app/blobs/{digest_of(b'shared layer')}").content == b"shared layer"
