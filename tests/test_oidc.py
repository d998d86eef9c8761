"""OIDC bearer tokens against the real server and a local issuer (discovery document + JWKS, RSA and EC
keys): acceptance, every rejection case, GitHub's required claims, key rotation, refetch rate limit."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from app import errors
from app.auth.oidc import OIDCProvider
from app.config import OIDCConfig
from tests.helpers.oci import make_image, push_image
from tests.helpers.server import RegistryProcess
from tests.helpers.services import Issuer


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    issuer = Issuer().start()
    issuer.add_rsa("rsa-1")
    issuer.add_ec("ec-1")
    yield issuer
    issuer.stop()


@pytest.fixture
def github() -> Iterator[Issuer]:
    issuer = Issuer().start()
    issuer.add_rsa("gh-1")
    yield issuer
    issuer.stop()


def oidc_config(issuer: Issuer, github: Issuer, refresh: float = 3600) -> str:
    return f"""
[auth.oidc.ci]
provider = "generic"
issuer = "{issuer.url}"
required_audience = "registry"
clock_skew_tolerance = 5
jwks_refresh_interval = {refresh}

[auth.oidc.actions]
provider = "github"
issuer = "{github.url}"

[global.access_policy]
rules = [
  'identity.oidc.provider_name == "ci" && identity.oidc.claims.repository == "acme/app"',
  'identity.oidc.provider_name == "actions" && identity.oidc.claims.actor == "octocat"',
]
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_rejected(response: requests.Response, reason: str) -> None:
    assert response.status_code == 401, (reason, response.status_code, response.text)
    # OIDC-only registries challenge with the token service's realm, an absolute URL docker can use.
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="http://127.0.0.1:'), challenge
    assert '/token",service="simple-registry"' in challenge
    assert reason in response.json()["errors"][0]["message"], response.text


def test_valid_tokens_are_accepted(start_registry: Callable[..., RegistryProcess], issuer: Issuer,
                                   github: Issuer) -> None:
    server = start_registry(oidc_config(issuer, github))
    assert_rejected(server.get("/v2/"), "authentication required")
    assert server.get("/v2/", headers=bearer(issuer.token("rsa-1"))).status_code == 200
    assert server.get("/v2/", headers=bearer(issuer.token("ec-1"))).status_code == 200
    assert server.get("/v2/", headers=bearer(github.token("gh-1"))).status_code == 200
    # Basic whose username is the provider's name and password the JWT (what docker login sends).
    assert server.get("/v2/", auth=("ci", issuer.token("rsa-1"))).status_code == 200
    assert server.get("/v2/", auth=("actions", github.token("gh-1"))).status_code == 200
    # Claims reach the policy: another repository is authenticated but denied.
    denied = server.get("/v2/", headers=bearer(issuer.token("rsa-1", repository="acme/other")))
    assert denied.status_code == 403 and denied.json()["errors"][0]["code"] == "DENIED"
    # A whole push and pull with a token.
    server.session.headers.update(bearer(issuer.token("ec-1")))
    image = make_image()
    assert push_image(server.session, server.url, "ci/app", image, "v1").status_code == 201
    assert server.get("/v2/ci/app/manifests/v1").content == image.manifest
    assert issuer.discovery_hits == 1 and issuer.jwks_hits == 1  # cached


def test_invalid_tokens_are_rejected(start_registry: Callable[..., RegistryProcess], issuer: Issuer,
                                     github: Issuer) -> None:
    server = start_registry(oidc_config(issuer, github))
    issuer.add_rsa("unpublished", publish=False)
    now = int(time.time())
    cases = {
        "expired": issuer.token("rsa-1", exp=now - 60, iat=now - 400, nbf=now - 400),
        "not yet valid": issuer.token("rsa-1", nbf=now + 120),
        "wrong issuer": issuer.token("rsa-1", iss="https://evil.example"),
        "wrong audience": issuer.token("rsa-1", aud="someone-else"),
        "missing claim aud": issuer.token("rsa-1", aud=None),
        "missing claim exp": issuer.token("rsa-1", exp=None),
        "unknown signing key": issuer.token("unpublished"),
        "algorithm 'none' is not allowed": issuer.unsigned_token("rsa-1"),
        "algorithm 'HS256' is not allowed": issuer.hs256_with_public_key("rsa-1"),
        "not a JWT": "not-a-jwt",
    }
    # Signed by an unpublished key but claiming a published kid: the signature does not verify.
    forged = issuer.token("unpublished").split(".")
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT","kid":"rsa-1"}').rstrip(b"=").decode()
    cases["bad signature"] = ".".join([header, forged[1], forged[2]])
    # The EC key cannot verify an RS256 token (a key of the wrong type for the algorithm).
    rs_header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT","kid":"ec-1"}').rstrip(b"=").decode()
    cases["unknown signing key "] = ".".join([rs_header, *issuer.token("rsa-1").split(".")[1:]])
    for reason, token in cases.items():
        assert_rejected(server.get("/v2/", auth=("ci", token)), reason.strip())
        # A bare bearer token is matched to a provider by its issuer first.
        bearer_reason = "no configured OIDC provider" if reason in ("wrong issuer", "not a JWT") \
            else reason.strip()
        assert_rejected(server.get("/v2/", headers=bearer(token)), bearer_reason)
    # GitHub tokens must carry `repository` and `actor`.
    assert_rejected(server.get("/v2/", headers=bearer(github.token("gh-1", actor=None))),
                    "missing claim actor")
    assert_rejected(server.get("/v2/", headers=bearer(github.token("gh-1", repository=None))),
                    "missing claim repository")
    # Within the skew tolerance (5 s) an expired token still passes.
    assert server.get("/v2/", headers=bearer(issuer.token("rsa-1", exp=now - 2))).status_code == 200


def test_key_rotation_is_picked_up(start_registry: Callable[..., RegistryProcess], issuer: Issuer,
                                   github: Issuer) -> None:
    server = start_registry(oidc_config(issuer, github, refresh=1))
    assert server.get("/v2/", headers=bearer(issuer.token("rsa-1"))).status_code == 200
    issuer.add_rsa("rsa-2")
    issuer.published = ["rsa-2", "ec-1"]  # rsa-1 retired
    deadline = time.monotonic() + 10
    while server.get("/v2/", headers=bearer(issuer.token("rsa-2"))).status_code != 200:
        assert time.monotonic() < deadline, "the rotated key was never fetched"
        time.sleep(0.3)
    time.sleep(1.2)
    assert_rejected(server.get("/v2/", headers=bearer(issuer.token("rsa-1"))), "unknown signing key")


def test_unknown_kids_refetch_at_most_once_a_minute(start_registry: Callable[..., RegistryProcess],
                                                    issuer: Issuer, github: Issuer) -> None:
    server = start_registry(oidc_config(issuer, github))
    assert server.get("/v2/", headers=bearer(issuer.token("rsa-1"))).status_code == 200
    assert issuer.jwks_hits == 1
    for n in range(30):
        issuer.add_rsa(f"forged-{n}", publish=False)
        assert_rejected(server.get("/v2/", headers=bearer(issuer.token(f"forged-{n}"))),
                        "unknown signing key")
    assert issuer.jwks_hits == 1  # the last fetch was less than a minute ago


async def test_unknown_kid_triggers_a_refetch(issuer: Issuer) -> None:
    provider = OIDCProvider("ci", OIDCConfig(provider="generic", issuer=issuer.url))
    provider.unknown_kid_refresh_interval = 0.5  # a minute in production
    try:
        assert (await provider.verify(issuer.token("rsa-1")))["repository"] == "acme/app"
        issuer.add_ec("ec-2")
        with pytest.raises(errors.RegistryError):  # within the interval: not refetched yet
            await provider.verify(issuer.token("ec-2"))
        hits = issuer.jwks_hits
        await asyncio.sleep(0.6)
        assert (await provider.verify(issuer.token("ec-2")))["sub"].startswith("repo:")
        assert issuer.jwks_hits == hits + 1
    finally:
        await provider.close()


async def test_unreachable_issuer_is_503_not_401(issuer: Issuer) -> None:
    provider = OIDCProvider("ci", OIDCConfig(provider="generic", issuer="http://127.0.0.1:9"))
    try:
        with pytest.raises(errors.RegistryError) as raised:
            await provider.verify(issuer.token("rsa-1"))
        assert raised.value.status == 503
    finally:
        await provider.close()
