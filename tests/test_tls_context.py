"""app/tls.py: the server SSLContext built from [server.tls], and the errors a broken section gives."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from app.config import ConfigError, TLSConfig
from app.tls import ServerTLS, build_context, tls_files
from tests.helpers.tls import CertificateAuthority


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    ca = CertificateAuthority()
    ca.write(tmp_path / "ca.crt")
    ca.issue_server().write(tmp_path / "server.crt", tmp_path / "server.key")
    return {"ca": tmp_path / "ca.crt", "cert": tmp_path / "server.crt", "key": tmp_path / "server.key"}


def tls(files: dict[str, Path], **overrides: object) -> TLSConfig:
    values: dict[str, object] = {"server_certificate_bundle": files["cert"],
                                 "server_private_key": files["key"]}
    values.update(overrides)
    return TLSConfig.model_validate(values)


def test_server_only_context_needs_tls_1_2_and_asks_no_client_certificate(files: dict[str, Path]) -> None:
    context = build_context(tls(files))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert context.options & ssl.OP_NO_TICKET
    assert context.num_tickets == 0


@pytest.mark.parametrize(("client_auth", "mode"), [("optional", ssl.CERT_OPTIONAL),
                                                   ("required", ssl.CERT_REQUIRED)])
def test_client_ca_sets_the_verification_mode(files: dict[str, Path], client_auth: str, mode: int) -> None:
    context = build_context(tls(files, client_ca_bundle=files["ca"], client_auth=client_auth))
    assert context.verify_mode == mode


def test_only_the_configured_client_ca_is_trusted(files: dict[str, Path]) -> None:
    """The system's public CAs (SSL_CERT_FILE & co.) must never vouch for client certificates."""
    context = build_context(tls(files, client_ca_bundle=files["ca"]))
    authorities = context.get_ca_certs()
    assert [dict(rdn[0] for rdn in ca["subject"])["commonName"] for ca in authorities] == ["Test CA"]
    assert build_context(tls(files)).get_ca_certs() == []


def test_tls_files_lists_every_named_file(files: dict[str, Path]) -> None:
    assert tls_files(None) == []
    assert tls_files(tls(files)) == [files["cert"], files["key"]]
    assert tls_files(tls(files, client_ca_bundle=files["ca"])) == [files["cert"], files["key"], files["ca"]]


def test_missing_certificate_names_key_file_and_reason(files: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(ConfigError) as error:
        build_context(tls(files, server_certificate_bundle=missing))
    assert str(error.value) == f"server.tls.server_certificate_bundle: {missing}: file not found"


def test_missing_key_and_missing_client_ca(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.tls\.server_private_key: .*nope\.key: file not found"):
        build_context(tls(files, server_private_key=tmp_path / "nope.key"))
    with pytest.raises(ConfigError, match=r"server\.tls\.client_ca_bundle: .*ca\.pem: file not found"):
        build_context(tls(files, client_ca_bundle=tmp_path / "ca.pem"))


def test_a_folder_instead_of_a_file_is_unreadable(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.tls\.server_private_key: .*: cannot read"):
        build_context(tls(files, server_private_key=tmp_path))


def test_garbage_certificate(files: dict[str, Path]) -> None:
    files["cert"].write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"server_certificate_bundle: .*: no PEM certificate found"):
        build_context(tls(files))


def test_key_that_is_a_certificate(files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"server_private_key: .*: no usable PEM private key found"):
        build_context(tls(files, server_private_key=files["cert"]))


def test_key_of_another_certificate(files: dict[str, Path], tmp_path: Path) -> None:
    CertificateAuthority().issue_server().write(tmp_path / "other.crt", tmp_path / "other.key")
    with pytest.raises(ConfigError, match=r"server_private_key: .*other\.key: does not match the cert"):
        build_context(tls(files, server_private_key=tmp_path / "other.key"))


def test_encrypted_key_is_refused_without_prompting(files: dict[str, Path]) -> None:
    key = serialization.load_pem_private_key(files["key"].read_bytes(), password=None)
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError, match="encrypted private keys are not supported"):
        build_context(tls(files))


def test_client_ca_without_certificates(files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"client_ca_bundle: .*server\.key: no PEM CA certificate found"):
        build_context(tls(files, client_ca_bundle=files["key"]))


def test_server_tls_swap_updates_the_listener_verification_mode(files: dict[str, Path]) -> None:
    server = ServerTLS(tls(files))
    assert server.context.verify_mode == ssl.CERT_NONE
    assert server.context.sni_callback is not None
    server.swap(build_context(tls(files, client_ca_bundle=files["ca"], client_auth="required")))
    assert server.context.verify_mode == ssl.CERT_REQUIRED
