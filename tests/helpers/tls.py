"""Certificates for TLS tests (a CA, server and client certificates made with `cryptography`), a
registry process served over https, and the file operations of certificate rotation (rename-style
replacement and Kubernetes' `..data` symlink swap)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers.server import RegistryProcess, toml_value

_PrivateKey = ec.EllipticCurvePrivateKey


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_names: list[str], organizations: list[str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
                     + [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])


@dataclass
class Issued:
    """A certificate and its private key, in PEM."""

    certificate: x509.Certificate
    key: _PrivateKey

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, cert_path: Path, key_path: Path) -> Issued:
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        return self


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, name: str = "Test CA") -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name([name], [])
        certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
        self.issued = Issued(certificate, key)

    @property
    def cert_pem(self) -> bytes:
        return self.issued.cert_pem

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert_pem)
        return path

    def _issue(self, subject: x509.Name, usage: x509.ObjectIdentifier,
               alternative_names: list[x509.GeneralName]) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.issued.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.issued.key.public_key()), critical=False))
        if alternative_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        return Issued(builder.sign(self.issued.key, hashes.SHA256()), key)

    def issue_server(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Issued:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(_name([hosts[0]], []), ExtendedKeyUsageOID.SERVER_AUTH, names)

    def issue_client(self, common_names: list[str], organizations: list[str]) -> Issued:
        return self._issue(_name(common_names, organizations), ExtendedKeyUsageOID.CLIENT_AUTH, [])


def skopeo_cert_dir(path: Path, ca: CertificateAuthority, client: Issued | None = None) -> Path:
    """A `--cert-dir` folder: `ca.crt`, and `client.cert` + `client.key` for mTLS."""
    path.mkdir(parents=True, exist_ok=True)
    ca.write(path / "ca.crt")
    if client is not None:
        client.write(path / "client.cert", path / "client.key")
    return path


def replace_file(path: Path, data: bytes) -> None:
    """Rename-style save: write a temporary file beside `path`, then rename it over `path`."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class KubernetesVolume:
    """A folder laid out like a mounted ConfigMap/Secret: `<name> -> ..data/<name>`, `..data ->
    ..<version>`; an update writes a new version folder and renames a new `..data` link over the old."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = 0
        path.mkdir(parents=True, exist_ok=True)

    def publish(self, files: dict[str, bytes]) -> None:
        self.version += 1
        old = os.readlink(self.path / "..data") if (self.path / "..data").is_symlink() else None
        folder = self.path / f"..2026_01_01_00_00_{self.version:02d}.{os.getpid()}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        link = self.path / "..data_tmp"
        link.symlink_to(folder.name)
        os.replace(link, self.path / "..data")
        for name in files:
            if not (self.path / name).is_symlink():
                (self.path / name).symlink_to(f"..data/{name}")
        if old is not None:
            for child in (self.path / old).iterdir():
                child.unlink()
            (self.path / old).rmdir()


def server_certificate(host: str, port: int, client: Issued | None = None,
                       tmp: Path | None = None) -> x509.Certificate:
    """The certificate a new connection is presented (no verification: only who answers)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if client is not None:
        assert tmp is not None
        client.write(tmp / "probe-client.crt", tmp / "probe-client.key")
        context.load_cert_chain(tmp / "probe-client.crt", tmp / "probe-client.key")
    with socket.create_connection((host, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=None) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def tls_section(certificate: Path, key: Path, client_ca: Path | None = None,
                client_auth: str | None = None) -> str:
    lines = ["[server.tls]", f"server_certificate_bundle = {toml_value(certificate)}",
             f"server_private_key = {toml_value(key)}"]
    if client_ca is not None:
        lines.append(f"client_ca_bundle = {toml_value(client_ca)}")
    if client_auth is not None:
        lines.append(f"client_auth = {toml_value(client_auth)}")
    return "\n".join(lines) + "\n"


class TLSRegistryProcess(RegistryProcess):
    """A registry process serving https; its session trusts `ca_file` and presents `client` if given."""

    def __init__(self, workdir: Path, tls_config: str, ca_file: Path, client: Issued | None = None,
                 extra_config: str = "", env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, tls_config + "\n" + extra_config, env)
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca_file = ca_file
        # REQUESTS_CA_BUNDLE & co. in the environment would override the session's `verify`.
        self.session.trust_env = False
        self.session.verify = str(ca_file)
        if client is not None:
            client.write(workdir / "session-client.crt", workdir / "session-client.key")
            self.session.cert = (str(workdir / "session-client.crt"), str(workdir / "session-client.key"))

    def healthy(self) -> bool:
        return self.session.get(f"{self.url}/healthz", timeout=1).status_code == 200

    def fresh_get(self, path: str, **kwargs: Any) -> requests.Response:
        """A GET on a new connection (a new TLS handshake), with the session's trust and certificate."""
        kwargs.setdefault("verify", self.session.verify)
        kwargs.setdefault("cert", self.session.cert)
        kwargs.setdefault("timeout", 30)
        with requests.Session() as session:
            session.trust_env = False
            return session.get(self.url + path, **kwargs)


def eventually(check: Any, timeout: float = 10.0, interval: float = 0.02) -> float:
    """Call `check()` until it returns true; fail after `timeout`. Returns the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not true within {timeout}s: {check}"
        time.sleep(interval)
    return time.monotonic() - started
