"""Live reload, black box: the real server process, real files changed on disk while it serves.

Certificates rotate (rename-style and by a Kubernetes `..data` symlink swap) for new connections while
an in-flight download continues; configuration changes apply without a restart; an invalid file is
logged and the running configuration keeps serving; keys that need a restart are reported as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers.oci import digest_of, make_image, push_blob, random_layer
from tests.helpers.server import RegistryProcess
from tests.helpers.tls import (
    CertificateAuthority,
    KubernetesVolume,
    TLSRegistryProcess,
    eventually,
    replace_file,
    server_certificate,
    tls_section,
)

StartRegistry = Callable[..., RegistryProcess]


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def processes() -> Iterator[list[RegistryProcess]]:
    started: list[RegistryProcess] = []
    yield started
    for process in started:
        process.kill()


def rewrite(registry: RegistryProcess, text: str) -> None:
    replace_file(registry.config_path, text.encode())


def serial(registry: RegistryProcess) -> int:
    return server_certificate("127.0.0.1", registry.port).serial_number


def log_lines(registry: RegistryProcess, level: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in registry.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == level]


def pushed_blob(registry: RegistryProcess, name: str = "team/app") -> str:
    """Push a small blob into `name`; return its path (HEAD: 200 while reads are allowed there)."""
    data = os.urandom(1000)
    assert push_blob(registry.session, registry.url, name, data).status_code == 201
    return f"/v2/{name}/blobs/{digest_of(data)}"


def big_manifest_image() -> tuple[bytes, dict[str, bytes], str]:
    """An image whose manifest is ~3 KiB (annotations), above a 2 KiB `max_manifest_size`."""
    image = make_image([random_layer(1000)], annotations={f"note.{i}": "x" * 40 for i in range(50)})
    assert 2048 < len(image.manifest) < 8192
    return image.manifest, image.blobs, image.media_type


def test_server_certificate_rotation_by_rename_keeps_in_flight_downloads(
        tmp_path: Path, ca: CertificateAuthority, processes: list[RegistryProcess]) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    first = ca.issue_server().write(certs / "tls.crt", certs / "tls.key")
    ca_file = ca.write(tmp_path / "ca.crt")
    (tmp_path / "server").mkdir()
    registry = TLSRegistryProcess(tmp_path / "server", tls_section(certs / "tls.crt", certs / "tls.key"),
                                  ca_file)
    processes.append(registry.start())
    assert serial(registry) == first.serial

    blob = os.urandom(64 * 1024 * 1024)
    assert push_blob(registry.session, registry.url, "rotation/big", blob).status_code == 201
    download = registry.fresh_get(f"/v2/rotation/big/blobs/{digest_of(blob)}", stream=True)
    assert download.status_code == 200
    chunks = download.iter_content(1024 * 1024)
    received = hashlib.sha256(next(chunks))

    second = ca.issue_server()
    replace_file(certs / "tls.key", second.key_pem)
    replace_file(certs / "tls.crt", second.cert_pem)
    eventually(lambda: serial(registry) == second.serial)
    assert registry.fresh_get("/v2/").status_code == 200  # a new connection verifies the new certificate

    for chunk in chunks:  # the download that started before the rotation finishes, intact
        received.update(chunk)
    assert "sha256:" + received.hexdigest() == digest_of(blob)
    assert log_lines(registry, "error") == []
    assert registry.stop() == 0


def test_server_certificate_rotation_by_kubernetes_secret_swap(
        tmp_path: Path, ca: CertificateAuthority, processes: list[RegistryProcess]) -> None:
    secret = KubernetesVolume(tmp_path / "secret")
    first = ca.issue_server()
    secret.publish({"tls.crt": first.cert_pem, "tls.key": first.key_pem})
    (tmp_path / "server").mkdir()
    registry = TLSRegistryProcess(tmp_path / "server",
                                  tls_section(secret.path / "tls.crt", secret.path / "tls.key"),
                                  ca.write(tmp_path / "ca.crt"))
    processes.append(registry.start())
    assert serial(registry) == first.serial
    for _ in range(2):  # twice: the watch must survive the old version folder being deleted
        issued = ca.issue_server()
        secret.publish({"tls.crt": issued.cert_pem, "tls.key": issued.key_pem})
        eventually(lambda issued=issued: serial(registry) == issued.serial)  # type: ignore[misc]
        assert registry.fresh_get("/v2/").status_code == 200


def test_client_ca_rotation_and_client_auth_change_apply_to_new_connections(
        tmp_path: Path, ca: CertificateAuthority, processes: list[RegistryProcess]) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue_server().write(certs / "tls.crt", certs / "tls.key")
    client_ca = ca.write(certs / "clients.crt")
    old_client = ca.issue_client(["old"], ["Org"]).write(tmp_path / "old.crt", tmp_path / "old.key")
    new_ca = CertificateAuthority("New client CA")
    new_ca.issue_client(["new"], ["Org"]).write(tmp_path / "new.crt", tmp_path / "new.key")
    (tmp_path / "server").mkdir()
    registry = TLSRegistryProcess(tmp_path / "server",
                                  tls_section(certs / "tls.crt", certs / "tls.key", client_ca, "optional"),
                                  ca.write(tmp_path / "ca.crt"), client=old_client)
    processes.append(registry.start())
    old_pair = (str(tmp_path / "old.crt"), str(tmp_path / "old.key"))
    new_pair = (str(tmp_path / "new.crt"), str(tmp_path / "new.key"))
    assert registry.get("/v2/").status_code == 200  # the session keeps this connection open

    def refused(cert: tuple[str, str] | None) -> bool:
        try:
            registry.fresh_get("/v2/", cert=cert)
        except requests.ConnectionError:
            return True
        return False

    assert refused(new_pair) and not refused(old_pair)
    replace_file(client_ca, new_ca.cert_pem)
    eventually(lambda: refused(old_pair))
    assert not refused(new_pair) and not refused(None)
    assert registry.get("/v2/").status_code == 200  # the connection made before the rotation goes on

    text = registry.config_path.read_text().replace('client_auth = "optional"', 'client_auth = "required"')
    rewrite(registry, text)
    eventually(lambda: refused(None))
    assert not refused(new_pair)


def test_configuration_changes_apply_without_restart(start_registry: StartRegistry) -> None:
    registry = start_registry(extra_config='[global]\nmax_manifest_size = 2048\n\n'
                                           '[repository."team"]\naccess_policy = { default_allow = true }\n')
    base = registry.config_path.read_text()
    manifest, blobs, media_type = big_manifest_image()
    for blob in blobs.values():
        assert push_blob(registry.session, registry.url, "team/app", blob).status_code == 201

    def put() -> int:
        return registry.put("/v2/team/app/manifests/v1", data=manifest,
                            headers={"Content-Type": media_type}).status_code

    assert put() == 413
    rewrite(registry, base.replace("max_manifest_size = 2048", 'max_manifest_size = "1MiB"'))
    eventually(lambda: put() == 201, timeout=5)
    assert registry.get("/v2/team/app/manifests/v1").status_code == 200

    text = registry.config_path.read_text().replace("default_allow = true", "default_allow = false")
    rewrite(registry, text)
    eventually(lambda: registry.get("/v2/team/app/manifests/v1").status_code in (401, 403), timeout=5)

    def changed() -> list[list[str]]:
        return [line["changed"] for line in log_lines(registry, "info")
                if line["message"] == "configuration reloaded"]

    # The reload's log line follows its taking effect: under load it lands a moment after.
    eventually(lambda: len(changed()) >= 2, timeout=5)
    assert changed() == [["global"], ["repository"]]


def test_invalid_files_are_logged_and_the_running_configuration_keeps_serving(
        start_registry: StartRegistry) -> None:
    registry = start_registry(extra_config='[repository."team"]\naccess_policy = { default_allow = true }\n')
    base = registry.config_path.read_text()
    blob = pushed_blob(registry)

    broken = {
        "invalid TOML": base + "[global\n",
        "unknown key `max_manifest_sise`": base + "[global]\nmax_manifest_sise = 4096\n",
        "global.max_manifest_size": base + '[global]\nmax_manifest_size = "lots"\n',
        "repository prefix 'Team/' is not a valid repository name":
            base.replace('[repository."team"]', '[repository."Team/"]'),
    }
    for count, (reason, text) in enumerate(broken.items(), start=1):
        rewrite(registry, text)
        eventually(lambda count=count: len(log_lines(registry, "error")) == count)  # type: ignore[misc]
        message = str(log_lines(registry, "error")[-1]["message"])
        assert "configuration reload failed; the running configuration is kept" in message
        assert str(registry.config_path) in message and reason in message
        assert registry.head(blob).status_code == 200

    rewrite(registry, base.replace("default_allow = true", "default_allow = false"))
    eventually(lambda: registry.head(blob).status_code in (401, 403))


def test_keys_that_need_a_restart_are_reported_and_kept(start_registry: StartRegistry) -> None:
    registry = start_registry(extra_config='[repository."team"]\naccess_policy = { default_allow = true }\n')
    base = registry.config_path.read_text()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        other_port = probe.getsockname()[1]
    blob = pushed_blob(registry)
    text = base.replace(f"port = {registry.port}", f"port = {other_port}").replace(
        "default_allow = true", "default_allow = false")
    rewrite(registry, text)
    eventually(lambda: registry.head(blob).status_code in (401, 403))
    warnings = [str(line["message"]) for line in log_lines(registry, "warning")]
    assert any(re.match(r"server\.port changed but needs a restart", w) for w in warnings), warnings
    assert registry.get("/healthz").status_code == 200  # still on the old port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", other_port), timeout=5).close()
    assert registry.stop() == 0


def test_turning_tls_off_needs_a_restart(tmp_path: Path, ca: CertificateAuthority,
                                         processes: list[RegistryProcess]) -> None:
    ca.issue_server().write(tmp_path / "tls.crt", tmp_path / "tls.key")
    (tmp_path / "server").mkdir()
    section = tls_section(tmp_path / "tls.crt", tmp_path / "tls.key")
    registry = TLSRegistryProcess(tmp_path / "server", section, ca.write(tmp_path / "ca.crt"))
    processes.append(registry.start())
    rewrite(registry, registry.config_path.read_text().replace(section, ""))
    eventually(lambda: any("server.tls changed but needs a restart" in str(line["message"])
                           for line in log_lines(registry, "warning")))
    assert registry.fresh_get("/v2/").status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{registry.port}/v2/", timeout=10)


def test_configmap_symlink_swap_of_the_config_file(tmp_path: Path, processes: list[RegistryProcess]) -> None:
    """The config file itself mounted from a Kubernetes ConfigMap: `config.toml -> ..data/config.toml`."""
    workdir = tmp_path / "server"
    workdir.mkdir()
    registry = RegistryProcess(workdir, '[repository."team"]\naccess_policy = { default_allow = true }\n')
    base = registry.config_path.read_text()
    registry.config_path.unlink()
    volume = KubernetesVolume(workdir)
    volume.publish({"config.toml": base.encode()})
    processes.append(registry.start())
    blob = pushed_blob(registry)
    volume.publish({"config.toml": base.replace("default_allow = true", "default_allow = false").encode()})
    eventually(lambda: registry.head(blob).status_code in (401, 403))
    volume.publish({"config.toml": base.encode()})
    eventually(lambda: registry.head(blob).status_code == 200)
