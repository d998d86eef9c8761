"""Webhook authorization against the real server and a local webhook: every header, credentials,
allow/deny/timeout/5xx (fail closed), decision caching, per-repository choice, TLS with client certs."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web
from argon2 import PasswordHasher

from tests.helpers.oci import digest_of, make_image, push_blob, push_image
from tests.helpers.server import RegistryProcess, toml_value
from tests.helpers.services import Webhook
from tests.helpers.tls import CertificateAuthority, TLSRegistryProcess, tls_section

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


async def by_namespace(request: web.Request) -> web.Response:
    namespace = request.headers.get("X-Registry-Namespace", "")
    if namespace.startswith("slow/"):
        await asyncio.sleep(3)
    if namespace.startswith(("denied/", "slow/")):
        return web.Response(status=403)
    if namespace.startswith("broken/"):
        return web.Response(status=500)
    if namespace.startswith("busy/"):
        return web.Response(status=429)
    if namespace.startswith("redirect/"):
        return web.Response(status=302, headers={"Location": "/authorize"})
    return web.Response(status=204)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(decide=by_namespace).start()
    yield hook
    hook.stop()


def config(webhook: Webhook, other: Webhook | None = None, token_service: bool = False) -> str:
    """Anonymous callers reach the webhook directly when the token service is off (the default here);
    with it on, they come with a token first."""
    other_url = other.url if other is not None else webhook.url
    return f"""
[auth.token]
enabled = {"true" if token_service else "false"}

[auth.identity.alice]
username = "alice"
password = "{FAST.hash('pw')}"

[auth.webhook.gate]
url = "{webhook.url}"
timeout_ms = 500
bearer_token = "hook-secret"
forward_headers = ["X-Request-Id", "X-Multi"]

[auth.webhook.other]
url = "{other_url}"
basic_auth = {{ username = "registry", password = "hook-pw" }}
cache_ttl = 0

[global]
authorization_webhook = "gate"

[global.access_policy]
default_allow = true

[repository."free"]
access_policy = {{ default_allow = true }}
authorization_webhook = ""

[repository."elsewhere"]
access_policy = {{ default_allow = true }}
authorization_webhook = "other"
"""


def seen(webhook: Webhook, namespace: str) -> int:
    return sum(1 for headers in webhook.received if headers.get("X-Registry-Namespace") == namespace)


def test_every_header_is_sent(start_registry: Callable[..., RegistryProcess], webhook: Webhook) -> None:
    server = start_registry(config(webhook))
    image = make_image()
    assert push_image(server.session, server.url, "allowed/app", image, "v1").status_code == 201
    webhook.received.clear()
    response = server.get("/v2/allowed/app/manifests/v1?x=1", auth=("alice", "pw"),
                          headers={"X-Request-Id": "req-42", "X-Multi": "one"})
    assert response.status_code == 200
    sent = webhook.received[-1]
    assert sent["Authorization"] == "Bearer hook-secret"
    assert sent["X-Forwarded-Method"] == "GET"
    assert sent["X-Forwarded-Proto"] == "http"
    assert sent["X-Forwarded-Host"] == server.host
    assert sent["X-Forwarded-Uri"] == "/v2/allowed/app/manifests/v1?x=1"
    assert sent["X-Forwarded-For"] == "127.0.0.1"
    assert sent["X-Registry-Action"] == "get-manifest"
    assert sent["X-Registry-Namespace"] == "allowed/app"
    assert sent["X-Registry-Reference"] == "v1"
    assert sent["X-Registry-Username"] == "alice"
    assert sent["X-Registry-Identity-ID"] == "alice"
    assert sent["X-Request-Id"] == "req-42"
    assert "X-Registry-Digest" not in sent and "X-Registry-OIDC-Subject" not in sent

    layer = image.layers[0]
    assert server.head(f"/v2/allowed/app/blobs/{digest_of(layer)}").status_code == 200
    sent = webhook.received[-1]
    assert sent["X-Forwarded-Method"] == "HEAD"
    assert sent["X-Registry-Action"] == "get-blob"
    assert sent["X-Registry-Digest"] == digest_of(layer)
    assert "X-Registry-Username" not in sent  # anonymous
    # Every value of a forwarded header (a header sent twice).
    raw = (f"GET /v2/allowed/app/tags/list HTTP/1.1\r\nHost: {server.host}\r\nX-Multi: first\r\n"
           "X-Multi: second\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(raw.encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    assert webhook.received[-1].getall("X-Multi") == ["first", "second"]


def test_the_webhook_sees_who_holds_a_token(start_registry: Callable[..., RegistryProcess],
                                            webhook: Webhook) -> None:
    server = start_registry(config(webhook, token_service=True))
    token = requests.get(f"{server.url}/token", auth=("alice", "pw"), timeout=30, params={
        "service": "simple-registry", "scope": "repository:allowed/app:pull"}).json()["token"]
    assert not webhook.received  # the token service asks the policy, never the webhook
    response = server.get("/v2/allowed/app/tags/list", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404  # allowed by the webhook, then NAME_UNKNOWN
    sent = webhook.received[-1]
    assert sent["X-Registry-Username"] == "alice" and sent["X-Registry-Identity-ID"] == "alice"
    assert sent["X-Registry-Action"] == "list-tags"
    denied = server.get("/v2/denied/app/tags/list", headers={"Authorization": f"Bearer {token}"})
    assert denied.status_code == 401 and 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]


def test_decisions_fail_closed(start_registry: Callable[..., RegistryProcess], webhook: Webhook) -> None:
    server = start_registry(config(webhook))
    assert server.get("/v2/allowed/app/tags/list").status_code == 404  # allowed, then NAME_UNKNOWN
    denied = server.get("/v2/denied/app/tags/list")
    assert denied.status_code == 401 and "WWW-Authenticate" in denied.headers  # anonymous
    assert server.get("/v2/denied/app/tags/list", auth=("alice", "pw")).status_code == 403
    for namespace in ("slow/app", "broken/app", "busy/app", "redirect/app"):
        response = server.get(f"/v2/{namespace}/tags/list", auth=("alice", "pw"))
        assert response.status_code == 403, (namespace, response.text)
        assert response.json()["errors"][0]["code"] == "DENIED"
    assert "timed out" in server.logs()


def test_decisions_are_cached_but_not_failures(start_registry: Callable[..., RegistryProcess],
                                               webhook: Webhook) -> None:
    server = start_registry(config(webhook))
    for namespace in ("allowed/c", "denied/c", "broken/c", "busy/c", "slow/c"):
        for _ in range(3):
            server.get(f"/v2/{namespace}/tags/list", auth=("alice", "pw"))
    assert seen(webhook, "allowed/c") == 1
    assert seen(webhook, "denied/c") == 1
    assert seen(webhook, "broken/c") == 3  # 5xx: asked again
    assert seen(webhook, "busy/c") == 3  # 429: asked again
    assert seen(webhook, "slow/c") == 3  # timeouts: asked again
    # The cache key is everything sent: another user, path or forwarded header is a new question.
    server.get("/v2/allowed/c/tags/list")
    server.get("/v2/allowed/c/tags/list", headers={"X-Request-Id": "other"})
    assert seen(webhook, "allowed/c") == 3
    metrics = server.get("/metrics").text
    for result in ("allow", "deny", "cached", "timeout"):
        assert f'registry_webhook_requests_total{{result="{result}",webhook="gate"}}' in metrics, result


def test_repository_chooses_or_disables_the_webhook(start_registry: Callable[..., RegistryProcess],
                                                    webhook: Webhook) -> None:
    other = Webhook(decide=by_namespace).start()
    try:
        server = start_registry(config(webhook, other))
        assert push_blob(server.session, server.url, "free/denied", b"x").status_code == 201
        assert seen(webhook, "free/denied") == 0 and seen(other, "free/denied") == 0
        assert push_blob(server.session, server.url, "elsewhere/app", b"x").status_code == 201
        assert seen(webhook, "elsewhere/app") == 0 and seen(other, "elsewhere/app") >= 1
        sent = other.received[-1]
        assert sent["Authorization"] == "Basic cmVnaXN0cnk6aG9vay1wdw=="  # registry:hook-pw
        before = seen(other, "elsewhere/app")
        server.get("/v2/elsewhere/app/tags/list")
        server.get("/v2/elsewhere/app/tags/list")
        assert seen(other, "elsewhere/app") == before + 2  # cache_ttl = 0
    finally:
        other.stop()


def test_webhook_over_mtls_sees_certificate_identity(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    ca_file = ca.write(tmp_path / "ca.crt")
    ca.issue_server().write(tmp_path / "hook.crt", tmp_path / "hook.key")
    ca.issue_server().write(tmp_path / "server.crt", tmp_path / "server.key")
    ca.issue_client(["registry"], ["infra"]).write(tmp_path / "registry-client.crt",
                                                   tmp_path / "registry-client.key")
    hook_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    hook_tls.load_cert_chain(tmp_path / "hook.crt", tmp_path / "hook.key")
    hook_tls.verify_mode = ssl.CERT_REQUIRED  # the registry must present its client certificate
    hook = Webhook().start(hook_tls)
    client = ca.issue_client(["runner-1", "runner-alias"], ["ci", "acme"])
    (tmp_path / "registry").mkdir()
    server = TLSRegistryProcess(
        tmp_path / "registry", tls_section(tmp_path / "server.crt", tmp_path / "server.key", ca_file),
        ca_file, client, extra_config=f"""
[auth.webhook.gate]
url = "{hook.url}"
server_ca_bundle = {toml_value(ca_file)}
client_certificate_bundle = {toml_value(tmp_path / "registry-client.crt")}
client_private_key = {toml_value(tmp_path / "registry-client.key")}

[global]
authorization_webhook = "gate"

[global.access_policy]
rules = ['"ci" in identity.certificate.organizations']
""")
    try:
        server.start()
        assert server.get("/v2/").status_code == 200
        sent = hook.received[-1]
        assert sent.getall("X-Registry-Certificate-CN") == ["runner-1", "runner-alias"]
        assert sent.getall("X-Registry-Certificate-O") == ["ci", "acme"]
        assert sent["X-Forwarded-Proto"] == "https"
    finally:
        server.kill()
        hook.stop()
