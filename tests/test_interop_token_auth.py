"""docker, podman, skopeo and containerd against one registry with the token service on (its default
whenever identities exist): a public namespace anyone may pull, a private one, two users, and an OIDC
provider served by the test. Real daemons (tests/helpers/daemons.py), real clients, no credentials
sent anywhere but where the clients choose to send them.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from argon2 import PasswordHasher

from tests.helpers.daemons import Ctr, DockerClient, write_docker_archive
from tests.helpers.interop import skopeo
from tests.helpers.oci import DOCKER_LIST, DOCKER_MANIFEST, digest_of
from tests.helpers.podman import Podman
from tests.helpers.server import RegistryProcess
from tests.helpers.services import Issuer

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    issuer = Issuer().start()
    issuer.add_ec("ci-key")
    yield issuer
    issuer.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[RegistryProcess]:
    workdir = tmp_path_factory.mktemp("token-interop")
    config = f"""
[auth.identity.alice]
username = "alice"
password = "{FAST.hash('alice-pw')}"
groups = ["dev"]

[auth.identity.bob]
username = "bob"
password = "{FAST.hash('bob-pw')}"

[auth.oidc.ci]
provider = "generic"
issuer = "{issuer.url}"
required_audience = "registry"
groups_claim = "groups"

[repository."public"]
access_policy = {{ default_allow = false, rules = [
  'request.action in ["get-manifest", "get-blob", "list-tags", "get-referrers"]',
  'identity.username == "alice"',
  'identity.oidc.claims.repository == "acme/app"'] }}

[repository."private"]
access_policy = {{ default_allow = false, rules = ['"dev" in identity.groups'] }}
"""
    process = RegistryProcess(workdir, config).start()
    yield process
    process.kill()


def alice(server: RegistryProcess) -> requests.Session:
    session = requests.Session()
    session.auth = ("alice", "alice-pw")
    return session


@pytest.fixture
def podman(tmp_path: Path, server: RegistryProcess) -> Iterator[Podman]:
    runroot = Path(tempfile.mkdtemp(prefix="podman-run-"))
    try:
        yield Podman(tmp_path / "podman", runroot, server.host)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def _push_archive(docker: DockerClient, tmp_path: Path, reference: str, layers: int = 2) -> str:
    archive = write_docker_archive(tmp_path / f"{abs(hash(reference))}.tar", "local/src:1", layers=layers)
    docker.load(archive.path)
    docker.tag("local/src:1", reference)
    output = docker.push(reference).stdout
    match = re.search(r"digest: (sha256:[0-9a-f]{64})", output)
    assert match, output
    return match.group(1)


def _manifest_digest(server: RegistryProcess, name: str, tag: str) -> str:
    response = alice(server).get(f"{server.url}/v2/{name}/manifests/{tag}", timeout=30,
                                 headers={"Accept": f"{DOCKER_MANIFEST}, {DOCKER_LIST}"})
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"]


def test_docker_login_refuses_a_wrong_password_and_keeps_a_refresh_token(
        server: RegistryProcess, docker_client: DockerClient) -> None:
    wrong = docker_client.run("login", "-u", "alice", "--password-stdin", server.host, input="wrong",
                              check=False)
    assert wrong.returncode != 0 and "unauthorized" in wrong.stderr.lower(), wrong.stderr
    unknown = docker_client.run("login", "-u", "mallory", "--password-stdin", server.host, input="x",
                                check=False)
    assert unknown.returncode != 0
    assert "Login Succeeded" in docker_client.login(server.host, "alice", "alice-pw").stdout
    saved = json.loads((docker_client.config_dir / "config.json").read_text())["auths"][server.host]
    # docker keeps the refresh token as its identity token, not the password.
    assert saved["identitytoken"] and "alice-pw" not in json.dumps(saved)


def test_anonymous_pulls_of_the_public_namespace_by_every_client(
        server: RegistryProcess, docker_client: DockerClient, ctr: Ctr, podman: Podman,
        tmp_path: Path) -> None:
    docker_client.login(server.host, "alice", "alice-pw")
    reference = f"{server.host}/public/app:1"
    digest = _push_archive(docker_client, tmp_path, reference)
    docker_client.logout(server.host)
    docker_client.remove_all_images()

    assert f"Digest: {digest}" in docker_client.pull(reference).stdout
    podman("pull", "--tls-verify=false", reference)
    assert json.loads(podman("images", "--format", "json").stdout)[0]["Digest"] == digest
    skopeo("copy", "--src-tls-verify=false", f"docker://{reference}", f"dir:{tmp_path / 'skopeo'}")
    assert digest_of((tmp_path / "skopeo" / "manifest.json").read_bytes()) == digest
    ctr.pull(reference)
    assert ctr.image(reference).digest == digest


def test_anonymous_pulls_of_the_private_namespace_are_refused(
        server: RegistryProcess, docker_client: DockerClient, ctr: Ctr, podman: Podman,
        tmp_path: Path) -> None:
    docker_client.login(server.host, "alice", "alice-pw")
    reference = f"{server.host}/private/app:1"
    _push_archive(docker_client, tmp_path, reference)
    docker_client.logout(server.host)
    docker_client.remove_all_images()

    refused = docker_client.run("pull", reference, check=False)
    assert refused.returncode != 0 and re.search(r"denied|unauthorized", refused.stderr), refused.stderr
    assert podman("pull", "--tls-verify=false", reference, check=False).returncode != 0
    assert skopeo("copy", "--src-tls-verify=false", f"docker://{reference}", f"dir:{tmp_path / 'no'}",
                  check=False).returncode != 0
    assert ctr.run("images", "pull", "--plain-http", reference, check=False).returncode != 0
    # Logged in as alice (group dev), every client pulls it.
    docker_client.login(server.host, "alice", "alice-pw")
    docker_client.pull(reference)
    podman.login(server.host, "alice", "alice-pw")
    podman("pull", "--tls-verify=false", reference)
    skopeo("copy", "--src-tls-verify=false", "--src-creds", "alice:alice-pw", f"docker://{reference}",
           f"dir:{tmp_path / 'yes'}")
    ctr.pull(reference, user="alice:alice-pw")


def test_pushes_succeed_for_the_permitted_user_and_are_refused_for_the_other(
        server: RegistryProcess, docker_client: DockerClient, ctr: Ctr, podman: Podman,
        tmp_path: Path) -> None:
    archive = write_docker_archive(tmp_path / "push.tar", "local/push:1", layers=2)
    docker_client.load(archive.path)
    # docker
    docker_client.login(server.host, "bob", "bob-pw")
    docker_client.tag("local/push:1", f"{server.host}/public/docker:1")
    refused = docker_client.run("push", f"{server.host}/public/docker:1", check=False)
    assert refused.returncode != 0 and re.search(r"denied|unauthorized", refused.stderr), refused.stderr
    docker_client.login(server.host, "alice", "alice-pw")
    docker_client.push(f"{server.host}/public/docker:1")
    assert _manifest_digest(server, "public/docker", "1")
    # podman
    podman.login(server.host, "bob", "bob-pw")
    podman("pull", "--tls-verify=false", f"{server.host}/public/docker:1")
    pushed_by_bob = podman("push", "--tls-verify=false", f"{server.host}/public/docker:1",
                           f"{server.host}/public/podman:1", check=False)
    assert pushed_by_bob.returncode != 0
    podman.login(server.host, "alice", "alice-pw")
    podman("push", "--tls-verify=false", f"{server.host}/public/docker:1", f"{server.host}/public/podman:1")
    assert _manifest_digest(server, "public/podman", "1")
    # skopeo
    source = f"docker://{server.host}/public/docker:1"
    assert skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds", "bob:bob-pw",
                  source, f"docker://{server.host}/public/skopeo:1", check=False).returncode != 0
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds", "alice:alice-pw",
           source, f"docker://{server.host}/public/skopeo:1")
    assert _manifest_digest(server, "public/skopeo", "1") == _manifest_digest(server, "public/docker", "1")
    # ctr
    ctr.import_archive(archive.path)
    ctr.tag("docker.io/local/push:1", f"{server.host}/public/ctr:1")
    assert ctr.run("images", "push", "--plain-http", "--user", "bob:bob-pw", f"{server.host}/public/ctr:1",
                   check=False).returncode != 0
    ctr.push(f"{server.host}/public/ctr:1", user="alice:alice-pw")
    assert _manifest_digest(server, "public/ctr", "1") == ctr.image(f"{server.host}/public/ctr:1").digest
    # Nothing bob tried to push exists.
    for name in ("public/podman", "public/skopeo", "public/ctr", "public/docker"):
        tags = alice(server).get(f"{server.url}/v2/{name}/tags/list", timeout=30).json()["tags"]
        assert tags == ["1"], (name, tags)


def test_docker_login_with_an_oidc_token_then_push(server: RegistryProcess, issuer: Issuer,
                                                  docker_client: DockerClient, tmp_path: Path) -> None:
    jwt = issuer.token("ci-key", groups=["dev"])
    assert "Login Succeeded" in docker_client.login(server.host, "ci", jwt).stdout
    public = _push_archive(docker_client, tmp_path, f"{server.host}/public/ci:1")
    assert _manifest_digest(server, "public/ci", "1") == public
    # The provider maps the token's `groups` claim to identity.groups: the private namespace is open.
    private = _push_archive(docker_client, tmp_path, f"{server.host}/private/ci:1")
    assert _manifest_digest(server, "private/ci", "1") == private
    # A token of another repository's workflow may pull, not push.
    docker_client.login(server.host, "ci", issuer.token("ci-key", repository="acme/other"))
    docker_client.tag(f"{server.host}/public/ci:1", f"{server.host}/public/other:1")
    assert docker_client.run("push", f"{server.host}/public/other:1", check=False).returncode != 0


def test_docker_mounts_layers_across_repositories(server: RegistryProcess, docker_client: DockerClient,
                                                 tmp_path: Path) -> None:
    docker_client.login(server.host, "alice", "alice-pw")
    digest = _push_archive(docker_client, tmp_path, f"{server.host}/public/mount-src:1", layers=3)
    docker_client.tag(f"{server.host}/public/mount-src:1", f"{server.host}/public/mount-dst:1")
    output = docker_client.push(f"{server.host}/public/mount-dst:1").stdout
    # docker asks one token for both repositories (push here, pull there) and mounts every layer.
    assert output.count("Mounted from public/mount-src") == 3, output
    assert _manifest_digest(server, "public/mount-dst", "1") == digest


def test_docker_manifest_push_of_a_multi_arch_list(server: RegistryProcess, docker_client: DockerClient,
                                                   tmp_path: Path) -> None:
    docker_client.login(server.host, "alice", "alice-pw")
    repository = f"{server.host}/public/multi"
    digests = {}
    for arch in ("amd64", "arm64"):
        archive = write_docker_archive(tmp_path / f"{arch}.tar", f"local/multi:{arch}", layers=1,
                                       architecture=arch)
        docker_client.load(archive.path)
        docker_client.tag(archive.repo_tag, f"{repository}:{arch}")
        docker_client.push(f"{repository}:{arch}")
        digests[arch] = _manifest_digest(server, "public/multi", arch)
    docker_client.run("manifest", "create", "--insecure", f"{repository}:list", f"{repository}:amd64",
                      f"{repository}:arm64")
    docker_client.run("manifest", "push", "--insecure", f"{repository}:list")
    listed = alice(server).get(f"{server.url}/v2/public/multi/manifests/list", timeout=30,
                               headers={"Accept": DOCKER_LIST})
    assert listed.headers["Content-Type"] == DOCKER_LIST
    assert {m["digest"] for m in listed.json()["manifests"]} == set(digests.values())


def test_refresh_tokens_renew_the_docker_session(server: RegistryProcess, docker_client: DockerClient,
                                                 tmp_path: Path) -> None:
    """After `docker login`, every push trades the stored identity token for access tokens: the
    password is never sent again."""
    docker_client.login(server.host, "alice", "alice-pw")
    before = len(server.logs().splitlines())
    _push_archive(docker_client, tmp_path, f"{server.host}/public/renewed:1")
    issued = [json.loads(line) for line in server.logs().splitlines()[before:]
              if '"token issued"' in line]
    assert issued and all(entry["grant"] == "refresh_token" for entry in issued), issued
    assert all(entry["subject"] == "alice" for entry in issued)
    assert "repository:public/renewed:pull,push" in {entry["granted"] for entry in issued}
