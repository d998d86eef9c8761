"""Deleting a whole repository, over HTTP (`DELETE /v2/<name>/_registry/repository`) and with
`registry delete-repository` beside a running server: what goes, what stays (other repositories
sharing its layers, nested repositories, pushes racing the deletion), and who may do it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from argon2 import PasswordHasher

from tests.helpers import stores
from tests.helpers.drivers import DriverSpec
from tests.helpers.oci import (
    OCI_MANIFEST,
    Image,
    digest_of,
    make_image,
    push_blob,
    push_image,
    random_layer,
)
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import REPO_ROOT, RegistryProcess, toml_value

V2 = "docker/registry/v2"
ACCEPT = {"Accept": OCI_MANIFEST}
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def unique(prefix: str = "del") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def delete_repository(server: RegistryProcess, name: str, **kwargs: Any) -> requests.Response:
    return server.delete(f"/v2/{name}/_registry/repository", **kwargs)


def error_code(response: requests.Response) -> str:
    assert response.headers["Content-Type"].split(";")[0] == "application/json", response.text
    return str(response.json()["errors"][0]["code"])


def pull_complete(server: RegistryProcess, name: str, reference: str) -> bool:
    """The manifest and every blob it references come back, each matching its digest."""
    response = server.get(f"/v2/{name}/manifests/{reference}", headers=ACCEPT)
    if response.status_code != 200:
        return False
    manifest = response.json()
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = server.get(f"/v2/{name}/blobs/{descriptor['digest']}", allow_redirects=True)
        if blob.status_code != 200 or digest_of(blob.content) != descriptor["digest"]:
            return False
    return True


def multipart_uploads(spec: DriverSpec) -> set[tuple[str, str]]:
    async def listed() -> set[tuple[str, str]]:
        driver: Any = spec.open()
        try:
            return {(key, upload_id) for key, upload_id, _ in await driver.multipart_uploads("")}
        finally:
            await driver.close()

    return asyncio.run(listed())


def catalog(server: RegistryProcess) -> list[str]:
    response = server.get("/v2/_catalog", params={"n": 10000})
    assert response.status_code == 200, response.text
    return list(response.json()["repositories"])


def push(server: RegistryProcess, name: str, image: Image, tag: str) -> None:
    response = push_image(server.session, server.url, name, image, tag=tag)
    assert response.status_code == 201, response.text


def start_upload(server: RegistryProcess, name: str, data: bytes) -> str:
    """A session with `data` in it, left open: its path."""
    started = server.post(f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 202, started.text
    found = urlsplit(started.headers["Location"])
    path = found.path + (f"?{found.query}" if found.query else "")
    patched = server.patch(path, data=data, headers={"Content-Type": "application/octet-stream"})
    assert patched.status_code == 202, patched.text
    return found.path


def assert_gone(server: RegistryProcess, name: str, image: Image, tags: list[str]) -> None:
    listed = server.get(f"/v2/{name}/tags/list")
    assert listed.status_code == 404 and error_code(listed) == "NAME_UNKNOWN", listed.text
    for reference in [image.digest, *tags]:
        response = server.get(f"/v2/{name}/manifests/{reference}", headers=ACCEPT)
        assert response.status_code == 404 and error_code(response) == "MANIFEST_UNKNOWN", reference
    for digest in image.blobs:
        assert server.head(f"/v2/{name}/blobs/{digest}").status_code == 404
    assert name not in catalog(server)


@pytest.fixture(params=["fs", "s3"])
def server(request: pytest.FixtureRequest, start_registry: Callable[..., RegistryProcess],
           tmp_path: Path) -> RegistryProcess:
    """A zero-config server on a store of each kind; `server.store` reads that store by key."""
    section, spec = stores.section_of_each_kind(request, tmp_path)
    started = start_registry(section)
    started.store = stores.StoreView(spec)
    return started


# --- over HTTP ------------------------------------------------------------------------------------
def test_delete_removes_everything_of_the_repository_and_nothing_else(server: RegistryProcess) -> None:
    name, neighbour = unique(), unique()
    shared = random_layer()
    image, other = make_image([shared, random_layer()]), make_image([shared])
    push(server, name, image, "v1")
    push(server, name, image, "v2")
    signature = make_image(artifact_type="application/example.signature",
                           subject={"mediaType": OCI_MANIFEST, "digest": image.digest,
                                    "size": len(image.manifest)})
    push(server, name, signature, "sig")
    push(server, neighbour, other, "v1")
    # An open session with a full S3 part in it: its multipart upload must be aborted.
    upload = start_upload(server, name, os.urandom(6 * 1024 * 1024))
    if server.store.spec.kind == "s3":
        assert [key for key, _ in multipart_uploads(server.store.spec) if f"/{name}/_uploads/" in key]
    # Warm every cache the server has of it.
    assert pull_complete(server, name, "v1")
    assert server.get(f"/v2/{name}/tags/list").json()["tags"] == ["sig", "v1", "v2"]
    assert len(server.get(f"/v2/{name}/referrers/{image.digest}").json()["manifests"]) == 1
    assert name in catalog(server)

    response = delete_repository(server, name)
    assert response.status_code == 202, response.text
    report = response.json()
    assert report["name"] == name and report["removed"] is True
    assert report["tags"] == ["sig", "v1", "v2"]
    assert sorted(report["manifests"]) == sorted([image.digest, signature.digest])
    assert report["referrers"] == 1 and len(report["uploads"]) == 1
    assert sorted(report["layers"]) == sorted({*image.blobs, *signature.blobs})

    assert_gone(server, name, image, ["v1", "v2", "sig"])
    assert server.get(upload).status_code == 404
    referrers = server.get(f"/v2/{name}/referrers/{image.digest}")
    assert referrers.status_code == 200 and referrers.json()["manifests"] == []
    assert server.store.keys(f"{V2}/repositories/{name}") == []
    if server.store.spec.kind == "s3":  # the session's multipart upload was aborted
        assert not [key for key, _ in multipart_uploads(server.store.spec) if "/_uploads/" in key]
    # Its blobs stay for the GC; the repository sharing a layer is untouched.
    assert server.store.read(f"{V2}/blobs/sha256/{digest_of(shared)[7:9]}/{digest_of(shared)[7:]}/data")
    assert pull_complete(server, neighbour, "v1")
    assert neighbour in catalog(server)
    # Gone is gone: a second deletion finds nothing; a new push starts afresh.
    again = delete_repository(server, name)
    assert again.status_code == 404 and error_code(again) == "NAME_UNKNOWN"
    push(server, name, other, "v1")
    assert server.get(f"/v2/{name}/tags/list").json()["tags"] == ["v1"]


def test_nested_repositories_are_other_repositories(registry: RegistryProcess) -> None:
    parent = unique("nest")
    child, sibling = f"{parent}/c", f"{parent}x"
    image, kept, beside = make_image(), make_image(), make_image()
    push(registry, parent, image, "v1")
    push(registry, child, kept, "v1")
    push(registry, sibling, beside, "v1")
    assert delete_repository(registry, parent).status_code == 202
    assert_gone(registry, parent, image, ["v1"])
    assert pull_complete(registry, child, "v1") and pull_complete(registry, sibling, "v1")
    assert {child, sibling} <= set(catalog(registry))
    # Nothing of the parent's own is left, also no empty folders (which would list it again).
    assert not (registry.root / V2 / "repositories" / parent / "_manifests").exists()
    assert delete_repository(registry, child).status_code == 202
    assert not (registry.root / V2 / "repositories" / parent).exists()  # empty parents go too
    assert pull_complete(registry, sibling, "v1")


def test_unknown_and_invalid_names(registry: RegistryProcess) -> None:
    missing = delete_repository(registry, unique())
    assert missing.status_code == 404 and error_code(missing) == "NAME_UNKNOWN"
    invalid = registry.delete("/v2/Upper/_registry/repository")
    assert invalid.status_code == 400 and error_code(invalid) == "NAME_INVALID"
    # Only DELETE; and a repository whose name ends like an OCI route is deleted by its own name.
    assert registry.get(f"/v2/{unique()}/_registry/repository").status_code == 405
    tricky = f"{unique()}/manifests"
    push(registry, tricky, make_image(), "v1")
    assert delete_repository(registry, tricky).status_code == 202
    assert registry.get(f"/v2/{tricky}/tags/list").status_code == 404


def test_immutable_tags_are_deleted_with_their_repository(
        start_registry: Callable[..., RegistryProcess]) -> None:
    """Deleting a tag is governed by policy, not by immutability (docs/policies.md); so is deleting
    every tag at once. Afterwards the tag can be pushed again, as after a tag deletion."""
    server = start_registry("[global]\nimmutable_tags = true\n")
    name = unique()
    first, second = make_image(), make_image()
    push(server, name, first, "v1")
    refused = push_image(server.session, server.url, name, second, tag="v1")
    assert refused.status_code == 409 and error_code(refused) == "DENIED"
    assert delete_repository(server, name).status_code == 202
    assert_gone(server, name, first, ["v1"])
    push(server, name, second, "v1")
    assert pull_complete(server, name, "v1")


# --- who may ----------------------------------------------------------------------------------------
POLICY = """
[auth.identity.alice]
username = "alice"
password = "{alice}"

[auth.identity.bob]
username = "bob"
password = "{bob}"

[auth.identity.carol]
username = "carol"
password = "{carol}"

[global.access_policy]
default_allow = false
rules = [
  'identity.username == "alice"',
  'identity.username == "bob" && request.action != "delete-repository"',
  'identity.username == "carol" && request.action in ["get-manifest", "list-tags", "delete-repository"]',
]
"""


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[RegistryProcess]:
    workdir = tmp_path / "guarded"
    workdir.mkdir()
    config = POLICY.format(alice=FAST.hash("alice-pw"), bob=FAST.hash("bob-pw"), carol=FAST.hash("carol-pw"))
    server = RegistryProcess(workdir, config)
    server.session.auth = ("alice", "alice-pw")
    yield server.start()
    server.kill()


def bearer(server: RegistryProcess, user: str, scope: str) -> dict[str, str]:
    """The `Authorization` header of a token for `scope` from the token service (as docker fetches it)."""
    response = requests.get(f"{server.url}/token", params={"service": "simple-registry", "scope": scope},
                            auth=(user, f"{user}-pw"), timeout=30)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def test_the_policy_decides_with_the_delete_repository_action(guarded: RegistryProcess) -> None:
    name = unique()
    image = make_image()
    push(guarded, name, image, "v1")
    url = f"{guarded.url}/v2/{name}/_registry/repository"

    anonymous = requests.delete(url, timeout=30)
    assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers
    assert f"repository:{name}:delete" in anonymous.headers["WWW-Authenticate"]
    # Everything but this action.
    bob = requests.delete(url, auth=("bob", "bob-pw"), timeout=30)
    assert bob.status_code == 403 and error_code(bob) == "DENIED"
    # This action but not delete-manifest: a policy that denies deleting manifests denies this too.
    carol = requests.delete(url, auth=("carol", "carol-pw"), timeout=30)
    assert carol.status_code == 403 and error_code(carol) == "DENIED"
    # A token must carry `delete` on the repository.
    pull_only = requests.delete(url, headers=bearer(guarded, "alice", f"repository:{name}:pull"), timeout=30)
    assert pull_only.status_code == 401 and "insufficient_scope" in pull_only.headers["WWW-Authenticate"]
    bob = requests.delete(url, headers=bearer(guarded, "bob", f"repository:{name}:delete"), timeout=30)
    assert bob.status_code == 403  # the token was granted (bob may delete manifests), the policy refuses
    assert pull_complete(guarded, name, "v1")  # nothing of it went

    response = requests.delete(url, headers=bearer(guarded, "alice", f"repository:{name}:delete"), timeout=30)
    assert response.status_code == 202, response.text
    assert_gone(guarded, name, image, ["v1"])
    # `*` covers it too; Basic credentials straight to the registry work as for every endpoint.
    push(guarded, name, image, "v1")
    everything = requests.delete(url, headers=bearer(guarded, "alice", f"repository:{name}:*"), timeout=30)
    assert everything.status_code == 202, everything.text
    push(guarded, name, image, "v1")
    assert delete_repository(guarded, name).status_code == 202


# --- a push racing the deletion ---------------------------------------------------------------------
def test_a_push_racing_the_deletion_survives_whole_or_goes_whole(registry: RegistryProcess) -> None:
    """Pushers keep pushing images (fresh layers, the HEAD-less monolithic way) to one repository
    while it is deleted over and over. Every push that was answered 201 ends up either complete (its
    manifest and every blob pull) or gone (its manifest 404s): never a manifest whose blobs 404."""
    name = unique("race")
    pushed: list[tuple[Image, str]] = []
    stop = threading.Event()
    failures: list[str] = []

    def pusher(worker: int) -> None:
        session = requests.Session()
        count = 0
        while not stop.is_set():
            image = make_image([random_layer(2048), random_layer(2048)])
            tag = f"w{worker}-{count}"
            count += 1
            try:
                for blob in image.blobs.values():
                    push_blob(session, registry.url, name, blob)
                put = session.put(f"{registry.url}/v2/{name}/manifests/{tag}", data=image.manifest,
                                  headers={"Content-Type": image.media_type}, timeout=60)
            except requests.RequestException as exc:
                failures.append(repr(exc))
                continue
            if put.status_code == 201:
                pushed.append((image, tag))
            elif put.status_code not in (400, 404):  # MANIFEST_BLOB_UNKNOWN when the deletion won
                failures.append(f"{put.status_code} {put.text}")

    def deleter() -> None:
        session = requests.Session()
        while not stop.is_set():
            response = session.delete(f"{registry.url}/v2/{name}/_registry/repository", timeout=60)
            if response.status_code not in (202, 404):
                failures.append(f"delete: {response.status_code} {response.text}")

    threads = [threading.Thread(target=pusher, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=deleter))
    for thread in threads:
        thread.start()
    time.sleep(6)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:5]
    assert len(pushed) > 20, len(pushed)
    survived = 0
    for image, tag in pushed:
        response = registry.get(f"/v2/{name}/manifests/{image.digest}", headers=ACCEPT)
        if response.status_code == 404:
            # Gone whole: its tag too.
            assert registry.get(f"/v2/{name}/manifests/{tag}", headers=ACCEPT).status_code == 404, tag
            continue
        assert response.status_code == 200, response.text
        assert pull_complete(registry, name, image.digest), f"{tag}: a manifest whose blobs are missing"
        survived += 1
    # After a restart (no cache at all) storage says the same.
    registry.restart()
    for image, _ in pushed:
        if registry.get(f"/v2/{name}/manifests/{image.digest}", headers=ACCEPT).status_code == 200:
            assert pull_complete(registry, name, image.digest)
    assert survived < len(pushed), "the deletion never removed anything"


# --- the command line -------------------------------------------------------------------------------
@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def run_cli(server: RegistryProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in server.env.items() if not k.startswith("REGISTRY__")}
    return subprocess.run([sys.executable, "-m", "app", "-c", str(server.config_path), "delete-repository",
                           *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False, stdin=subprocess.DEVNULL)


def test_the_command_line_beside_a_running_server(start_registry: Callable[..., RegistryProcess],
                                                  tmp_path: Path, redis_server: RedisServer) -> None:
    # Locks and the replicas' shared state in Redis, as a server beside others has them.
    url = toml_value(redis_server.url)
    server = start_registry(f"[blob_store.fs]\nroot_dir = {toml_value(tmp_path / 'store')}\n"
                            f"[blob_store.fs.redis]\nurl = {url}\n\n[cache.redis]\nurl = {url}\n")
    server.store = stores.StoreView(DriverSpec("fs", root=str(tmp_path / "store")))
    name, neighbour = unique(), unique()
    image, other = make_image(), make_image()
    push(server, name, image, "v1")
    push(server, neighbour, other, "v1")
    # The server's caches hold it: tags, the manifest and its body, the catalog.
    assert pull_complete(server, name, "v1")
    assert server.get(f"/v2/{name}/tags/list").json()["tags"] == ["v1"]
    assert name in catalog(server)
    before = server.store.keys("")

    dry = run_cli(server, name, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove tag v1" in dry.stdout and f"would remove manifest {image.digest}" in dry.stdout
    assert server.store.keys("") == before
    assert pull_complete(server, name, "v1")

    unconfirmed = run_cli(server, name)  # no terminal to confirm on, no --yes
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert server.store.keys("") == before

    done = run_cli(server, name, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["removed"] and report["tags"] == ["v1"] and report["manifests"] == [image.digest]
    # At once, although the server had all of it cached.
    assert_gone(server, name, image, ["v1"])
    assert pull_complete(server, neighbour, "v1")

    missing = run_cli(server, name, "--yes")
    assert missing.returncode == 1 and "not known" in missing.stderr
    assert run_cli(server, "Not/Valid", "--yes").returncode == 2
