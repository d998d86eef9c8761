"""The TLS listener, black box: the real server process over https, with skopeo and requests.

Certificates are generated per test with `cryptography`: a CA, a server certificate for 127.0.0.1,
a client certificate from that CA and one from a CA the server does not trust.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.helpers.interop import assert_oci_layout_has_image, skopeo
from tests.helpers.oci import make_image, random_layer, write_oci_layout
from tests.helpers.server import REPO_ROOT, RegistryProcess
from tests.helpers.tls import (
    CertificateAuthority,
    Issued,
    TLSRegistryProcess,
    server_certificate,
    skopeo_cert_dir,
    tls_section,
)


@dataclass
class PKI:
    folder: Path
    ca: CertificateAuthority
    ca_file: Path
    server: Issued
    cert_file: Path
    key_file: Path
    client: Issued
    stranger: Issued  # a client certificate from a CA the server does not trust


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = CertificateAuthority()
    server = ca.issue_server().write(folder / "server.crt", folder / "server.key")
    return PKI(folder, ca, ca.write(folder / "ca.crt"), server, folder / "server.crt", folder / "server.key",
               ca.issue_client(["ci-runner"], ["Platform", "Builders"]),
               CertificateAuthority("Other CA").issue_client(["ci-runner"], ["Platform"]))


StartTLS = Callable[..., TLSRegistryProcess]


@pytest.fixture
def start_tls(tmp_path: Path, pki: PKI) -> Iterator[StartTLS]:
    started: list[TLSRegistryProcess] = []

    def start(client_auth: str | None = None, client: Issued | None = None,
              extra_config: str = "") -> TLSRegistryProcess:
        workdir = tmp_path / f"registry-{len(started)}"
        workdir.mkdir()
        section = tls_section(pki.cert_file, pki.key_file, pki.ca_file if client_auth else None, client_auth)
        server = TLSRegistryProcess(workdir, section, pki.ca_file, client, extra_config)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


def handshake(port: int, context: ssl.SSLContext) -> str | None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")
        return tls.version()


def test_https_is_served_with_the_configured_certificate(start_tls: StartTLS, pki: PKI) -> None:
    registry = start_tls()
    response = registry.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert server_certificate("127.0.0.1", registry.port).serial_number == pki.server.serial
    assert '"tls": true' in registry.logs()
    # A client that does not trust the CA refuses the server; plaintext HTTP gets no answer.
    with pytest.raises(requests.exceptions.SSLError):
        registry.fresh_get("/v2/", verify=True)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{registry.port}/v2/", timeout=10)


def test_tls_1_2_and_1_3_are_accepted_older_versions_refused(start_tls: StartTLS, pki: PKI) -> None:
    registry = start_tls()
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = ssl.create_default_context(cafile=pki.ca_file)
        context.minimum_version = context.maximum_version = version
        assert handshake(registry.port, context) == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(pki.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1 at all
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(registry.port, context)


def image_layout(folder: Path) -> tuple[Path, object]:
    image = make_image([random_layer(200_000, "a.bin"), random_layer(50_000, "b.bin")])
    write_oci_layout(folder, {"v1": image})
    return folder, image


def test_skopeo_push_and_pull_over_tls_with_the_ca(start_tls: StartTLS, pki: PKI, tmp_path: Path) -> None:
    registry = start_tls()
    certs = skopeo_cert_dir(tmp_path / "certs", pki.ca)
    src, image = image_layout(tmp_path / "src")
    skopeo("copy", "--dest-cert-dir", str(certs), f"oci:{src}:v1", f"docker://{registry.host}/tls/app:v1")
    out = tmp_path / "out"
    skopeo("copy", "--src-cert-dir", str(certs), f"docker://{registry.host}/tls/app:v1", f"oci:{out}:v1")
    assert_oci_layout_has_image(out, "v1", image)  # type: ignore[arg-type]
    # Without the CA, skopeo (which verifies by default) refuses the server.
    refused = skopeo("copy", f"docker://{registry.host}/tls/app:v1", f"oci:{tmp_path / 'nope'}:v1",
                     check=False)
    assert refused.returncode != 0 and "certificate" in refused.stderr


def test_required_client_certificate(start_tls: StartTLS, pki: PKI, tmp_path: Path) -> None:
    registry = start_tls(client_auth="required", client=pki.client)
    assert registry.get("/v2/").status_code == 200
    assert registry.fresh_get("/v2/").status_code == 200
    with pytest.raises(requests.ConnectionError):  # no certificate: the handshake fails
        registry.fresh_get("/v2/", cert=None)
    pki.stranger.write(tmp_path / "stranger.crt", tmp_path / "stranger.key")
    with pytest.raises(requests.ConnectionError):  # a certificate from another CA fails too
        registry.fresh_get("/v2/", cert=(str(tmp_path / "stranger.crt"), str(tmp_path / "stranger.key")))

    with_client = skopeo_cert_dir(tmp_path / "mtls", pki.ca, pki.client)
    src, image = image_layout(tmp_path / "src")
    skopeo("copy", "--dest-cert-dir", str(with_client), f"oci:{src}:v1",
           f"docker://{registry.host}/mtls/app:v1")
    out = tmp_path / "out"
    skopeo("copy", "--src-cert-dir", str(with_client), f"docker://{registry.host}/mtls/app:v1",
           f"oci:{out}:v1")
    assert_oci_layout_has_image(out, "v1", image)  # type: ignore[arg-type]
    ca_only = skopeo_cert_dir(tmp_path / "ca-only", pki.ca)
    refused = skopeo("copy", "--src-cert-dir", str(ca_only), f"docker://{registry.host}/mtls/app:v1",
                     f"oci:{tmp_path / 'nope'}:v1", check=False)
    assert refused.returncode != 0
    stranger = skopeo_cert_dir(tmp_path / "stranger", pki.ca, pki.stranger)
    refused = skopeo("copy", "--src-cert-dir", str(stranger), f"docker://{registry.host}/mtls/app:v1",
                     f"oci:{tmp_path / 'nope2'}:v1", check=False)
    assert refused.returncode != 0


def test_optional_client_certificate(start_tls: StartTLS, pki: PKI, tmp_path: Path) -> None:
    registry = start_tls(client_auth="optional")
    assert registry.fresh_get("/v2/").status_code == 200  # no certificate: fine
    pki.client.write(tmp_path / "client.crt", tmp_path / "client.key")
    assert registry.fresh_get("/v2/", cert=(str(tmp_path / "client.crt"),
                                            str(tmp_path / "client.key"))).status_code == 200
    pki.stranger.write(tmp_path / "stranger.crt", tmp_path / "stranger.key")
    with pytest.raises(requests.ConnectionError):  # presented but invalid: the handshake fails
        registry.fresh_get("/v2/", cert=(str(tmp_path / "stranger.crt"), str(tmp_path / "stranger.key")))


BROKEN_SECTIONS = {
    "missing key file": (lambda p: tls_section(p.cert_file, p.folder / "absent.key"),
                         "server.tls.server_private_key: {folder}/absent.key: file not found"),
    "key of another certificate": (lambda p: tls_section(p.cert_file, p.folder / "other.key"),
                                   "server.tls.server_private_key: {folder}/other.key: does not match"),
    "garbage certificate": (lambda p: tls_section(p.folder / "garbage.crt", p.key_file),
                            "server.tls.server_certificate_bundle: {folder}/garbage.crt: no PEM certificate"),
    "no private key": (lambda p: f'[server.tls]\nserver_certificate_bundle = "{p.cert_file}"\n',
                       "server.tls.server_private_key: Field required"),
    "unknown client_auth": (lambda p: tls_section(p.cert_file, p.key_file, p.ca_file, "sometimes"),
                            "server.tls.client_auth: Input should be 'optional' or 'required'"),
    "misspelled key": (lambda p: tls_section(p.cert_file, p.key_file) + 'client_ca = "x"\n',
                       "server.tls.client_ca: unknown key `client_ca`"),
}


@pytest.mark.parametrize("case", list(BROKEN_SECTIONS))
def test_a_broken_tls_section_stops_the_start(case: str, pki: PKI, tmp_path: Path) -> None:
    """Never a plaintext fallback: the server exits with a message naming the key, file and reason."""
    CertificateAuthority().issue_server().write(pki.folder / "other.crt", pki.folder / "other.key")
    (pki.folder / "garbage.crt").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    section, message = BROKEN_SECTIONS[case]
    workdir = tmp_path / "broken"
    workdir.mkdir()
    registry = RegistryProcess(workdir, section(pki))
    result = subprocess.run([sys.executable, "-m", "app", "-c", str(registry.config_path), "server"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    assert message.format(folder=pki.folder) in result.stderr
    assert "listening" not in result.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", registry.port), timeout=5).close()
