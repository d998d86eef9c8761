"""The built-in token service against the real server: challenges, grants, refresh tokens, and every way
a token must be refused (expired, tampered, another audience or issuer, another repository, revoked)."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers.oci import digest_of, make_image, push_blob, push_image
from tests.helpers.server import RegistryProcess
from tests.helpers.tls import replace_file

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
SERVICE = "simple-registry"


def identities(alice_password: str = "alice-pw", bob: bool = True) -> str:
    text = f"""
[auth.identity.alice]
username = "alice"
password = "{FAST.hash(alice_password)}"
groups = ["dev"]
"""
    if bob:
        text += f"""
[auth.identity.bob]
username = "bob"
password = "{FAST.hash('bob-pw')}"
"""
    return text


POLICIES = """
[global.access_policy]
default_allow = true
rules = ['identity.username == null && request.action == "list-catalog"']

[repository."public"]
access_policy = { default_allow = false, rules = [
  'request.action in ["get-manifest", "get-blob", "list-tags", "get-referrers", "get-upload"]',
  'identity.username == "alice"'] }

[repository."private"]
access_policy = { default_allow = false, rules = ['"dev" in identity.groups'] }
"""


def token_config(extra: str = "", alice_password: str = "alice-pw", bob: bool = True) -> str:
    return identities(alice_password, bob) + POLICIES + extra


def get_token(server: RegistryProcess, scopes: list[str], auth: tuple[str, str] | None = None,
              expect: int = 200, **params: str) -> dict[str, Any]:
    fields = {"service": SERVICE, **params}
    query: list[tuple[str, str]] = [*fields.items(), *[("scope", s) for s in scopes]]
    response = requests.get(f"{server.url}/token", params=query, auth=auth, timeout=30)
    assert response.status_code == expect, response.text
    if expect == 200:
        assert response.headers["Cache-Control"] == "no-store"
    return dict(response.json())


def post_token(server: RegistryProcess, form: dict[str, str], expect: int = 200) -> requests.Response:
    response = requests.post(f"{server.url}/token", data=form, timeout=30)
    assert response.status_code == expect, response.text
    return response


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def access_of(token: str) -> dict[str, list[str]]:
    return {entry["name"]: entry["actions"] for entry in claims(token)["access"]}


def challenge_of(response: requests.Response) -> str:
    assert response.status_code == 401, (response.status_code, response.text)
    return response.headers["WWW-Authenticate"]


@pytest.fixture
def server(start_registry: Callable[..., RegistryProcess]) -> RegistryProcess:
    return start_registry(token_config())


def test_anonymous_callers_are_challenged_with_the_token_realm(server: RegistryProcess) -> None:
    realm = f'Bearer realm="{server.url}/token",service="{SERVICE}"'
    anonymous = requests.Session()
    assert challenge_of(anonymous.get(f"{server.url}/v2/", timeout=30)) == realm
    # `Basic Og==` (empty username and password) is what clients without credentials send: anonymous.
    empty = anonymous.get(f"{server.url}/v2/", headers={"Authorization": "Basic Og=="}, timeout=30)
    assert challenge_of(empty) == realm
    assert empty.json()["errors"][0]["code"] == "UNAUTHORIZED"
    cases = {
        ("GET", "/v2/public/app/tags/list"): "repository:public/app:pull",
        ("HEAD", "/v2/public/app/manifests/1"): "repository:public/app:pull",
        ("POST", "/v2/public/app/blobs/uploads/"): "repository:public/app:pull,push",
        ("PUT", "/v2/public/app/manifests/1"): "repository:public/app:pull,push",
        ("DELETE", "/v2/public/app/manifests/1"): "repository:public/app:delete",
        ("GET", "/v2/_catalog"): "registry:catalog:*",
    }
    for (method, path), scope in cases.items():
        response = anonymous.request(method, server.url + path, timeout=30)
        assert challenge_of(response) == f'{realm},scope="{scope}"', (method, path)
    # Liveness stays open.
    assert anonymous.get(f"{server.url}/healthz", timeout=30).status_code == 200


def test_anonymous_tokens_grant_only_what_anonymous_callers_may_do(server: RegistryProcess) -> None:
    answer = get_token(server, ["repository:public/app:pull,push", "repository:private/app:pull",
                                "registry:catalog:*"], offline_token="true")
    assert access_of(answer["token"]) == {"public/app": ["pull"]}
    assert answer["token"] == answer["access_token"] and answer["expires_in"] == 300
    assert "refresh_token" not in answer  # nothing to refresh for nobody
    assert claims(answer["token"])["sub"] == ""
    # The same with `Basic Og==` at the token endpoint.
    empty = requests.get(f"{server.url}/token", headers={"Authorization": "Basic Og=="}, timeout=30,
                         params={"service": SERVICE, "scope": "repository:public/app:pull"})
    assert empty.status_code == 200 and access_of(empty.json()["token"]) == {"public/app": ["pull"]}


def test_wrong_credentials_and_bad_requests_at_the_token_endpoint(server: RegistryProcess) -> None:
    for credentials in [("alice", "wrong"), ("mallory", "alice-pw"), ("alice", "")]:
        response = requests.get(f"{server.url}/token", params={"service": SERVICE}, auth=credentials,
                                timeout=30)
        assert response.status_code == 401, credentials
        assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    post_token(server, {"grant_type": "password", "username": "alice", "password": "nope",
                        "service": SERVICE, "client_id": "test"}, expect=401)
    post_token(server, {"grant_type": "refresh_token", "refresh_token": "garbage", "service": SERVICE},
               expect=401)
    post_token(server, {"grant_type": "client_credentials", "service": SERVICE}, expect=400)
    get_token(server, ["repository:public/app"], expect=400)  # no actions part
    get_token(server, [], expect=400, service="another-service")
    form = requests.post(f"{server.url}/token", data=b"{}", headers={"Content-Type": "application/json"},
                         timeout=30)
    assert form.status_code == 400


def test_user_tokens_carry_what_the_policy_grants(server: RegistryProcess) -> None:
    scopes = ["repository:public/app:pull,push", "repository:private/app:*", "registry:catalog:*"]
    alice = get_token(server, scopes, auth=("alice", "alice-pw"))
    assert access_of(alice["token"]) == {"public/app": ["pull", "push"],
                                         "private/app": ["pull", "push", "delete", "*"], "catalog": ["*"]}
    bob = get_token(server, scopes, auth=("bob", "bob-pw"))
    assert access_of(bob["token"]) == {"public/app": ["pull"], "catalog": ["*"]}
    header = jwt.get_unverified_header(alice["token"])
    assert header["alg"] == "HS256" and header["kid"]  # the store's secret (no key_file configured)
    body = claims(alice["token"])
    assert body["iss"] == SERVICE and body["aud"] == SERVICE and body["sub"] == "alice"
    assert body["exp"] - body["iat"] == 300 and body["nbf"] <= time.time() and len(body["jti"]) >= 16
    assert body["jti"] != claims(bob["token"])["jti"]


def test_tokens_open_exactly_their_scope(server: RegistryProcess) -> None:
    image = make_image()
    push_token = get_token(server, ["repository:public/app:pull,push"], auth=("alice", "alice-pw"))["token"]
    session = requests.Session()
    session.headers.update(bearer(push_token))
    assert push_image(session, server.url, "public/app", image, "1").status_code == 201
    assert session.get(f"{server.url}/v2/public/app/manifests/1", timeout=30).content == image.manifest
    assert session.get(f"{server.url}/v2/", timeout=30).json() == {}
    # Another repository: 401 insufficient_scope, with the scope the request needs.
    other = session.post(f"{server.url}/v2/public/other/blobs/uploads/", timeout=30)
    assert challenge_of(other) == (f'Bearer realm="{server.url}/token",service="{SERVICE}",'
                                   f'scope="repository:public/other:pull,push",error="insufficient_scope"')
    # A pull-only token cannot push, however the policy stands.
    pull_token = get_token(server, ["repository:public/app:pull"], auth=("alice", "alice-pw"))["token"]
    refused = requests.put(f"{server.url}/v2/public/app/manifests/2", data=image.manifest, timeout=30,
                           headers={**bearer(pull_token), "Content-Type": image.media_type})
    assert 'error="insufficient_scope"' in challenge_of(refused)
    # Bob asked for push but was granted pull only: the token pulls, and pushing is refused.
    bob = get_token(server, ["repository:public/app:pull,push"], auth=("bob", "bob-pw"))["token"]
    assert requests.get(f"{server.url}/v2/public/app/manifests/1", headers=bearer(bob),
                        timeout=30).status_code == 200
    refused = push_blob(_session(bob), server.url, "public/app", b"x")
    assert 'error="insufficient_scope"' in challenge_of(refused)
    # Basic credentials sent straight to the registry still work, and the policy still decides.
    assert requests.get(f"{server.url}/v2/public/app/manifests/1", auth=("alice", "alice-pw"),
                        timeout=30).content == image.manifest
    direct = push_blob(_basic_session("bob", "bob-pw"), server.url, "public/app", b"direct")
    assert direct.status_code == 403 and direct.json()["errors"][0]["code"] == "DENIED"
    # The catalog needs registry:catalog:*.
    catalog = get_token(server, ["registry:catalog:*"], auth=("bob", "bob-pw"))["token"]
    assert "public/app" in requests.get(f"{server.url}/v2/_catalog", headers=bearer(catalog),
                                        timeout=30).json()["repositories"]
    assert challenge_of(requests.get(f"{server.url}/v2/_catalog", headers=bearer(bob), timeout=30))


def _session(token: str) -> requests.Session:
    session = requests.Session()
    session.headers.update(bearer(token))
    return session


def _basic_session(username: str, password: str) -> requests.Session:
    session = requests.Session()
    session.auth = (username, password)
    return session


def test_cross_repository_mount_needs_pull_on_the_source(server: RegistryProcess) -> None:
    data = os.urandom(3000)
    alice = get_token(server, ["repository:private/src:pull,push"], auth=("alice", "alice-pw"))["token"]
    assert push_blob(_session(alice), server.url, "private/src", data).status_code == 201
    mount = {"mount": digest_of(data), "from": "private/src"}
    # Docker asks for both repositories in one token: the mount happens.
    both = get_token(server, ["repository:private/dst:pull,push", "repository:private/src:pull"],
                     auth=("alice", "alice-pw"))["token"]
    assert requests.post(f"{server.url}/v2/private/dst/blobs/uploads/", params=mount, headers=bearer(both),
                         timeout=30).status_code == 201
    # A token for the target only: no mount, a new upload session instead.
    target_only = get_token(server, ["repository:private/dst2:pull,push"],
                            auth=("alice", "alice-pw"))["token"]
    fallback = requests.post(f"{server.url}/v2/private/dst2/blobs/uploads/", params=mount,
                             headers=bearer(target_only), timeout=30)
    assert fallback.status_code == 202 and "Location" in fallback.headers


def _signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def test_expired_tampered_and_foreign_tokens_are_refused(start_registry: Callable[..., RegistryProcess],
                                                         tmp_path: Path) -> None:
    key_file = tmp_path / "token-key.pem"
    key = _signing_key(key_file)
    server = start_registry(token_config(f'[auth.token]\nkey_file = "{key_file}"\n'))
    valid = get_token(server, ["repository:public/app:pull"], auth=("alice", "alice-pw"))["token"]
    kid = jwt.get_unverified_header(valid)["kid"]
    path = "/v2/public/app/tags/list"
    # No tags yet: the token is accepted.
    assert requests.get(server.url + path, headers=bearer(valid), timeout=30).status_code == 404

    def forged(key_: Any = key, algorithm: str = "ES256", **changes: Any) -> str:
        body = {**claims(valid), **changes}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key_, algorithm=algorithm,
                          headers={"kid": kid})

    now = int(time.time())
    cases = {
        "expired": forged(exp=now - 120, iat=now - 500, nbf=now - 500),
        "not yet valid": forged(nbf=now + 600),
        "wrong audience": forged(aud="another-registry"),
        "wrong issuer": forged(iss="someone-else"),
        "other key": forged(key_=ec.generate_private_key(ec.SECP256R1())),
        "no exp": forged(exp=None),
        "refresh used as access": forged(use="refresh"),
        "unknown identity": forged(ident={"kind": "basic", "id": "mallory", "username": "mallory",
                                          "fingerprint": ""}),
    }
    header, payload, signature = valid.split(".")
    widened = json.loads(base64.urlsafe_b64decode(payload + "=="))
    widened["access"] = [{"type": "repository", "name": "private/app", "actions": ["*"]}]
    cases["tampered"] = ".".join([header, base64.urlsafe_b64encode(json.dumps(widened).encode()).decode()
                                  .rstrip("="), signature])
    cases["alg none"] = ".".join([base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": kid}).encode())
                                  .decode().rstrip("="), payload, ""])
    for reason, token in cases.items():
        response = requests.get(server.url + path, headers=bearer(token), timeout=30)
        assert response.status_code == 401, (reason, response.status_code, response.text)
        assert response.headers["WWW-Authenticate"].startswith(f'Bearer realm="{server.url}/token"'), reason
    # A token for another repository: 401 insufficient_scope.
    other = requests.get(f"{server.url}/v2/private/app/tags/list", headers=bearer(valid), timeout=30)
    assert 'error="insufficient_scope"' in challenge_of(other)


def test_forged_tokens_of_the_default_hs256_secret_are_refused(server: RegistryProcess) -> None:
    valid = get_token(server, ["repository:public/app:pull"], auth=("alice", "alice-pw"))["token"]
    header, payload, signature = valid.split(".")
    kid = jwt.get_unverified_header(valid)["kid"]
    path = "/v2/public/app/tags/list"
    assert requests.get(server.url + path, headers=bearer(valid), timeout=30).status_code == 404
    body = claims(valid)
    widened = {**body, "access": [{"type": "repository", "name": "private/app", "actions": ["*"]}]}
    ec_key = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "another secret": jwt.encode(body, "another-secret-of-32-bytes-or-more!!", algorithm="HS256",
                                     headers={"kid": kid}),
        "widened access, old signature": ".".join([
            header, base64.urlsafe_b64encode(json.dumps(widened).encode()).decode().rstrip("="), signature]),
        "alg none": ".".join([base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": kid}).encode())
                              .decode().rstrip("="), payload, ""]),
        "ES256 with our kid": jwt.encode(body, ec_key, algorithm="ES256", headers={"kid": kid}),
        "truncated signature": valid[:-4],
        "garbage": "a.b.c",
    }
    for reason, token in cases.items():
        response = requests.get(server.url + path, headers=bearer(token), timeout=30)
        assert response.status_code == 401, (reason, response.status_code, response.text)


def test_refresh_tokens_renew_a_session_and_survive_a_restart(
        start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(token_config())
    login = get_token(server, [], auth=("alice", "alice-pw"), offline_token="true", client_id="docker",
                      account="alice")
    refresh = login["refresh_token"]
    assert claims(login["token"])["access"] == [] and claims(refresh)["use"] == "refresh"
    assert claims(refresh)["exp"] - claims(refresh)["iat"] == 30 * 86400
    # A refresh token is no access token.
    assert challenge_of(requests.get(f"{server.url}/v2/", headers=bearer(refresh), timeout=30))
    renewed = post_token(server, {"grant_type": "refresh_token", "refresh_token": refresh, "service": SERVICE,
                                  "client_id": "docker", "scope": "repository:private/app:pull,push"}).json()
    assert renewed["refresh_token"] == refresh
    assert renewed["scope"] == "repository:private/app:pull,push"
    assert access_of(renewed["access_token"]) == {"private/app": ["pull", "push"]}
    pushed = push_blob(_session(renewed["access_token"]), server.url, "private/app", b"renewed")
    assert pushed.status_code == 201
    # The password grant with access_type=offline gives a refresh token too.
    oauth = post_token(server, {"grant_type": "password", "username": "alice", "password": "alice-pw",
                                "service": SERVICE, "client_id": "containerd", "access_type": "offline",
                                "scope": "repository:public/app:pull"}).json()
    assert oauth["refresh_token"] and access_of(oauth["access_token"]) == {"public/app": ["pull"]}

    # The generated key is kept in the store (owner-only) and survives a restart.
    key_path = server.root / "token" / "signing-secret"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    before = key_path.read_bytes()
    server.restart()
    assert key_path.read_bytes() == before
    again = post_token(server, {"grant_type": "refresh_token", "refresh_token": refresh, "service": SERVICE,
                                "scope": "repository:private/app:pull"}).json()
    assert requests.get(f"{server.url}/v2/private/app/blobs/{digest_of(b'renewed')}",
                        headers=bearer(again["access_token"]), timeout=30).content == b"renewed"
    assert requests.get(f"{server.url}/v2/private/app/blobs/{digest_of(b'renewed')}",
                        headers=bearer(renewed["access_token"]), timeout=30).status_code == 200


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_password_change_and_removed_identities_revoke_their_tokens(
        start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(token_config())
    scope = ["repository:private/app:pull"]
    alice = get_token(server, scope, auth=("alice", "alice-pw"), offline_token="true")
    bob = get_token(server, ["repository:public/app:pull"], auth=("bob", "bob-pw"))["token"]
    path = "/v2/private/app/tags/list"
    assert requests.get(server.url + path, headers=bearer(alice["token"]), timeout=30).status_code == 404
    text = server.config_path.read_text()
    head = text[:text.index("[auth.identity.alice]")]
    replace_file(server.config_path, (head + token_config(alice_password="new-pw", bob=False)).encode())
    _wait_for(lambda: requests.get(f"{server.url}/token", params={"service": SERVICE},
                                   auth=("alice", "new-pw"), timeout=30).status_code == 200)
    assert challenge_of(requests.get(server.url + path, headers=bearer(alice["token"]), timeout=30))
    assert challenge_of(requests.get(f"{server.url}/v2/public/app/tags/list", headers=bearer(bob),
                                     timeout=30))
    post_token(server, {"grant_type": "refresh_token", "refresh_token": alice["refresh_token"],
                        "service": SERVICE}, expect=401)


def test_realm_follows_the_host_and_only_trusted_proxies(
        start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(token_config())
    headers = {"Host": "registry.example.com:8443", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "evil.example.com"}
    response = requests.get(f"{server.url}/v2/", headers=headers, timeout=30)
    assert challenge_of(response).startswith('Bearer realm="http://registry.example.com:8443/token"')
    weird = requests.get(f"{server.url}/v2/", headers={"Host": 'a"b'}, timeout=30)
    assert f'realm="http://127.0.0.1:{server.port}/token"' in challenge_of(weird)

    proxied = start_registry(token_config('[global]\ntrusted_proxies = ["127.0.0.1/32"]\n'))
    response = requests.get(f"{proxied.url}/v2/", headers=headers, timeout=30)
    assert challenge_of(response).startswith('Bearer realm="https://evil.example.com/token"')

    fixed = start_registry(token_config('[auth.token]\nrealm = "https://auth.example.com/v2/token"\n'
                                        'service = "registry.example.com"\n'))
    assert challenge_of(requests.get(f"{fixed.url}/v2/", timeout=30)) == \
        'Bearer realm="https://auth.example.com/v2/token",service="registry.example.com"'
    token = requests.get(f"{fixed.url}/token", params={"service": "registry.example.com"}, timeout=30)
    assert claims(token.json()["token"])["aud"] == "registry.example.com"


def test_the_token_service_can_be_switched_off(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(token_config("[auth.token]\nenabled = false\n"))
    response = requests.get(f"{server.url}/v2/", timeout=30)
    assert challenge_of(response) == 'Basic realm="Simple-Registry"'
    assert requests.get(f"{server.url}/token", timeout=30).status_code == 404
    # Anonymous pulls of the public repository work without a token (the policy allows them).
    assert requests.get(f"{server.url}/v2/public/app/tags/list", timeout=30).status_code == 404
    assert requests.get(f"{server.url}/v2/public/app/tags/list", auth=("alice", "alice-pw"),
                        timeout=30).status_code == 404
    assert challenge_of(requests.get(f"{server.url}/v2/private/app/tags/list", timeout=30)) \
        == 'Basic realm="Simple-Registry"'
