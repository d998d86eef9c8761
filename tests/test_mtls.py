"""app/auth/mtls.py: the identity of a verified client certificate, read from a real TLS connection."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app.auth.mtls import client_certificate_identity, subject_identity
from app.config import TLSConfig
from app.tls import ServerTLS, build_context
from tests.helpers.tls import CertificateAuthority, Issued

Serve = Callable[..., Awaitable[str]]


async def identity(request: web.Request) -> web.Response:
    return web.json_response({"identity": client_certificate_identity(request)})


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an aiohttp server on the registry's TLS context whose only route answers the identity."""
    runners: list[web.AppRunner] = []

    async def start(tls: TLSConfig, server: ServerTLS | None = None) -> str:
        app = web.Application()
        app.router.add_get("/", identity)
        runner = web.AppRunner(app)
        await runner.setup()
        server = server or ServerTLS(tls)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server.context)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"https://127.0.0.1:{port}/"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = CertificateAuthority()
    ca.write(tmp_path / "ca.crt")
    ca.issue_server().write(tmp_path / "server.crt", tmp_path / "server.key")
    return {"ca": ca, "dir": tmp_path, "tls": TLSConfig(
        server_certificate_bundle=tmp_path / "server.crt", server_private_key=tmp_path / "server.key",
        client_ca_bundle=tmp_path / "ca.crt")}


def client_context(folder: Path, ca: CertificateAuthority, client: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if client is not None:
        client.write(folder / "client.crt", folder / "client.key")
        context.load_cert_chain(folder / "client.crt", folder / "client.key")
    return context


async def fetch(url: str, context: ssl.SSLContext) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        assert response.status == 200
        return (await response.json())["identity"]


async def test_every_cn_and_o_of_the_subject(serve: Serve, pki: dict[str, Any]) -> None:
    url = await serve(pki["tls"])
    client = pki["ca"].issue_client(["ci-runner", "builder"], ["Platform", "Security"])
    got = await fetch(url, client_context(pki["dir"], pki["ca"], client))
    assert got == [["ci-runner", "builder"], ["Platform", "Security"]]


async def test_certificate_without_organization(serve: Serve, pki: dict[str, Any]) -> None:
    url = await serve(pki["tls"])
    client = pki["ca"].issue_client(["alice"], [])
    assert await fetch(url, client_context(pki["dir"], pki["ca"], client)) == [["alice"], []]


async def test_no_client_certificate_is_no_identity(serve: Serve, pki: dict[str, Any]) -> None:
    url = await serve(pki["tls"])
    assert await fetch(url, client_context(pki["dir"], pki["ca"], None)) is None


async def test_without_client_ca_a_presented_certificate_is_ignored(serve: Serve,
                                                                    pki: dict[str, Any]) -> None:
    """No `client_ca_bundle`: the server asks for no certificate and nothing unverified is believed."""
    url = await serve(pki["tls"].model_copy(update={"client_ca_bundle": None}))
    client = pki["ca"].issue_client(["mallory"], ["Admins"])
    assert await fetch(url, client_context(pki["dir"], pki["ca"], client)) is None


async def test_a_client_ca_added_by_reload_applies_to_new_connections(serve: Serve,
                                                                     pki: dict[str, Any]) -> None:
    plain = pki["tls"].model_copy(update={"client_ca_bundle": None})
    server = ServerTLS(plain)
    url = await serve(plain, server)
    client = pki["ca"].issue_client(["late"], ["Joiners"])
    context = client_context(pki["dir"], pki["ca"], client)
    assert await fetch(url, context) is None
    server.swap(build_context(pki["tls"]))
    assert await fetch(url, context) == [["late"], ["Joiners"]]


async def test_plain_http_request_has_no_identity() -> None:
    app = web.Application()
    app.router.add_get("/", identity)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as response:
            assert (await response.json())["identity"] is None
    finally:
        await runner.cleanup()


def test_subject_parsing_keeps_multi_valued_rdns_in_order() -> None:
    certificate = {"subject": (
        (("countryName", "FR"),),
        (("organizationName", "Acme"), ("commonName", "one")),
        (("organizationalUnitName", "Ops"),),
        (("commonName", "two"),),
        (("organizationName", "Beta"),),
    )}
    assert subject_identity(certificate) == (["one", "two"], ["Acme", "Beta"])
    assert subject_identity({}) == ([], [])
