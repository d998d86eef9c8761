"""Basic authentication against the real server: the login flow, skopeo with credentials, 401 vs 403,
malformed and oversized headers, trusted proxies, path-encoding bypass attempts, failing CEL rules."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from argon2 import PasswordHasher

from tests.helpers.interop import assert_oci_layout_has_image, copy, skopeo
from tests.helpers.oci import make_image, push_blob, push_image, random_layer, write_oci_layout
from tests.helpers.server import RegistryProcess, toml_value

# Cheap hashes keep these tests fast; the brute-force test uses the real default cost.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
READ_ACTIONS = '["get-api-version", "get-manifest", "get-blob", "list-tags", "get-referrers"]'


def identities(**passwords: str) -> str:
    return "".join(f'[auth.identity.{user}]\nusername = "{user}"\npassword = "{FAST.hash(password)}"\n'
                   for user, password in passwords.items())


POLICY = f"""
[global.access_policy]
default_allow = false
rules = [
  'identity.username == "alice"',
  'identity.username == "bob" && request.action in {READ_ACTIONS}',
]
"""


BASIC_CHALLENGES = "\n[auth.token]\nenabled = false\n"


@pytest.fixture
def server(start_registry: Callable[..., RegistryProcess]) -> RegistryProcess:
    """Plain Basic challenges (the token service switched off)."""
    return start_registry(identities(alice="alice-pw", bob="bob-pw") + POLICY + BASIC_CHALLENGES)


@pytest.fixture(params=["basic", "token"])
def either(request: pytest.FixtureRequest, start_registry: Callable[..., RegistryProcess]) -> RegistryProcess:
    """Basic challenges, or the token service's (the default): Basic credentials work with both."""
    extra = BASIC_CHALLENGES if request.param == "basic" else ""
    return start_registry(identities(alice="alice-pw", bob="bob-pw") + POLICY + extra)


def assert_challenge(response: requests.Response) -> None:
    assert response.status_code == 401, (response.status_code, response.text)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge == 'Basic realm="Simple-Registry"' or challenge.startswith('Bearer realm="http://'), \
        challenge
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_login_flow_and_wrong_credentials(either: RegistryProcess) -> None:
    server = either
    assert_challenge(server.get("/v2/"))
    assert server.get("/v2/", auth=("alice", "alice-pw")).status_code == 200
    assert server.get("/v2/", auth=("bob", "bob-pw")).status_code == 200
    # Wrong credentials are 401 (never treated as anonymous), whatever is wrong.
    assert_challenge(server.get("/v2/", auth=("alice", "wrong")))
    assert_challenge(server.get("/v2/", auth=("mallory", "alice-pw")))
    assert_challenge(server.get("/v2/", auth=("alice", "")))
    for header in ("Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(), "Digest abc",
                   "Bearer some.jwt.token", "Basic", "Basic " + base64.b64encode(b"\xff\xfe:x").decode()):
        assert_challenge(server.get("/v2/", headers={"Authorization": header}))
    # The error never echoes the password.
    assert "alice-pw" not in server.get("/v2/", auth=("alice", "alice-pw-wrong")).text
    metrics = server.get("/metrics", auth=("alice", "alice-pw")).text
    assert 'registry_auth_attempts_total{method="basic",result="failure"}' in metrics
    assert 'registry_auth_attempts_total{method="basic",result="success"}' in metrics


def test_oversized_authorization_headers(server: RegistryProcess) -> None:
    big = "Basic " + base64.b64encode(b"alice:" + b"x" * 9000).decode()
    assert_challenge(server.get("/v2/", headers={"Authorization": big}))
    huge = "Basic " + "A" * 40_000  # beyond the HTTP parser's field limit: refused before any handler
    try:
        answer = server.get("/v2/", headers={"Authorization": huge}).status_code
    except requests.ConnectionError:
        answer = 0  # the server may also just close the connection
    assert answer in (0, 400, 431)
    assert server.get("/v2/", auth=("alice", "alice-pw")).status_code == 200


def test_read_only_user_gets_403_anonymous_gets_401(either: RegistryProcess) -> None:
    server = either
    image = make_image()
    assert_challenge(push_blob(server.session, server.url, "team/app", b"anonymous blob"))
    server.session.auth = ("alice", "alice-pw")
    assert push_image(server.session, server.url, "team/app", image, "v1").status_code == 201
    server.session.auth = ("bob", "bob-pw")
    assert server.get("/v2/team/app/manifests/v1").status_code == 200
    denied = push_blob(server.session, server.url, "team/app", b"bob's blob")
    assert denied.status_code == 403 and denied.json()["errors"][0]["code"] == "DENIED"
    assert "WWW-Authenticate" not in denied.headers
    assert server.delete(f"/v2/team/app/manifests/{image.digest}").status_code == 403
    server.session.auth = None
    assert_challenge(server.get("/v2/team/app/manifests/v1"))
    assert_challenge(server.get("/v2/team/app/tags/list"))


def test_skopeo_with_credentials(server: RegistryProcess, tmp_path: Path) -> None:
    image = make_image([random_layer(200_000, "a"), random_layer(100_000, "b")])
    write_oci_layout(tmp_path / "src", {"v1": image})
    target = f"docker://{server.host}/team/skopeo:v1"
    copy(f"oci:{tmp_path / 'src'}:v1", target, "--dest-creds", "alice:alice-pw")
    copy(target, f"oci:{tmp_path / 'out'}:v1", "--src-creds", "bob:bob-pw")
    assert_oci_layout_has_image(tmp_path / "out", "v1", image)
    info = skopeo("inspect", "--tls-verify=false", "--creds", "bob:bob-pw", target).stdout
    assert image.digest in info

    anonymous = skopeo("copy", "--src-tls-verify=false", target, f"oci:{tmp_path / 'anon'}:v1", check=False)
    assert anonymous.returncode != 0
    assert "unauthorized" in anonymous.stderr.lower() or "401" in anonymous.stderr
    forbidden = skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "bob:bob-pw",
                       f"oci:{tmp_path / 'src'}:v1", f"docker://{server.host}/team/bob:v1", check=False)
    assert forbidden.returncode != 0
    assert "denied" in forbidden.stderr.lower() or "403" in forbidden.stderr


def test_successful_verifications_are_cached_and_forgotten_on_reload(
        start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(identities(alice="first") + POLICY)
    assert server.get("/v2/", auth=("alice", "first")).status_code == 200
    assert server.get("/v2/", auth=("alice", "first")).status_code == 200
    # A new password in the file: the cached success for the old one must not survive the reload.
    server.config_path.write_text(server.config_path.read_text().replace(
        server.config_path.read_text().split('password = "')[1].split('"')[0], FAST.hash("second")))
    deadline = time.monotonic() + 10
    while server.get("/v2/", auth=("alice", "first")).status_code != 401:
        assert time.monotonic() < deadline, "the reload did not forget the cached credentials"
        time.sleep(0.1)
    assert server.get("/v2/", auth=("alice", "second")).status_code == 200


def test_trusted_proxies(start_registry: Callable[..., RegistryProcess]) -> None:
    rules = """
[global.access_policy]
rules = ['identity.client_ip == "203.0.113.9"']
"""
    trusted = start_registry(rules + '[global]\ntrusted_proxies = ["127.0.0.0/8"]\n')
    assert trusted.get("/v2/", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 200
    assert trusted.get("/v2/", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 127.0.0.1"}
                       ).status_code == 200
    assert trusted.get("/v2/", headers={"X-Real-IP": "203.0.113.9"}).status_code == 200
    assert trusted.get("/v2/", headers={"X-Forwarded-For": "203.0.113.10"}).status_code == 401
    assert trusted.get("/v2/").status_code == 401
    untrusted = start_registry(rules + '[global]\ntrusted_proxies = ["10.0.0.0/8"]\n')
    assert untrusted.get("/v2/", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 401
    assert untrusted.get("/v2/", headers={"X-Real-IP": "203.0.113.9"}).status_code == 401


def test_path_encodings_never_reach_a_denied_namespace(
        start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(identities(alice="pw") + """
[repository."public"]
access_policy = { default_allow = true }

[repository."secret"]
access_policy = { default_allow = false, rules = ['identity.username == "alice"'] }
""")
    image = make_image()
    server.session.auth = ("alice", "pw")
    assert push_image(server.session, server.url, "secret/app", image, "v1").status_code == 201
    server.session.auth = None
    digest = image.digest
    attempts = [
        "/v2/public/%2E%2E/secret/app/manifests/v1",
        "/v2/public/../secret/app/manifests/v1",
        "/v2/public/%2e%2e%2fsecret/app/manifests/v1",
        "/v2/public%2F..%2Fsecret%2Fapp/manifests/v1",
        "/v2/secret%2Fapp/manifests/v1",
        "/v2/public//secret/app/manifests/v1",
        "/v2//secret/app/manifests/v1",
        "/v2/SECRET/app/manifests/v1",
        "/v2/Secret/app/manifests/v1",
        "/v2/public/..%2Fsecret/app/manifests/v1",
        "/v2/public\\..\\secret/app/manifests/v1",
        "/v2/public/./../secret/app/manifests/v1",
        f"/v2/public/secret/app/../../../secret/app/manifests/{digest}",
        "/v2/secret/app/manifests/v1%00",
        "/v2/public%00/../secret/app/manifests/v1",
    ]
    for path in attempts:
        response = requests.get(server.url + path, timeout=30, allow_redirects=False)
        # Never the manifest: refused by the grammar (400/404) or by the policy (401).
        assert response.status_code in (400, 401, 404), (path, response.status_code)
        assert image.manifest not in response.content, path
    assert requests.get(server.url + "/v2/secret/app/manifests/v1", timeout=30).status_code == 401
    assert requests.get(server.url + "/v2/secret/app/manifests/v1", auth=("alice", "pw"),
                        timeout=30).status_code == 200


def test_failing_rules_deny_and_stay_in_the_log(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(identities(alice="pw") + """
[repository."team"]
access_policy = { default_allow = false, rules = [
  'identity.oidc.claims.repository == "acme/app"', 'identity.username'] }

[repository."open"]
access_policy = { default_allow = true, rules = ['int(identity.username) > 3'] }
""")
    for path in ("/v2/team/app/tags/list", "/v2/open/app/tags/list"):
        response = server.get(path, auth=("alice", "pw"))
        assert response.status_code == 403, (path, response.text)
        assert "claims" not in response.text and "no such" not in response.text.lower()
        assert "int(" not in response.text
    deadline = time.monotonic() + 5
    while "counts against the caller" not in server.logs():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "acme/app" in server.logs()


def test_bad_rule_is_refused_at_start_and_by_check_config(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers.server import REPO_ROOT

    config = tmp_path / "bad.toml"
    config.write_text(f'[blob_store.fs]\nroot_dir = {toml_value(tmp_path / "data")}\n[global.access_policy]\n'
                      'rules = ["identity.username == \'a\'", "request.action ==="]\n')
    for command in ("check-config", "server"):
        result = subprocess.run([sys.executable, "-m", "app", "-c", str(config), command], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, result.stderr
        assert "global.access_policy.rules" in result.stderr and "rule 2" in result.stderr
        assert "column" in result.stderr
