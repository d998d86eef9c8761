"""`registry service` on Linux: the unit it writes passes `systemd-analyze verify`, its ExecStart (with
its Environment=) serves, and `systemctl` is called as it should be.

There is no systemd to run units here (not PID 1), so a stand-in `systemctl` first on PATH records its
calls; the unit goes below a temporary root (REGISTRY_SERVICE_ROOT) for the system scope and below a
temporary XDG_CONFIG_HOME for the user scope. `systemd-analyze` is the real one (Debian's `systemd`).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path, PureWindowsPath

import pytest
import requests

from app.system_service import ServiceError, ServiceSpec
from app.system_service.locations import default_locations
from app.system_service.packaging import files as packaged_files
from app.system_service.systemd import parse_unit, quote, render_unit, state_directory
from tests.helpers.server import free_port
from tests.helpers.service_manager import FakeTool, registry_cli, serve_as_service_manager_would
from tests.helpers.tools import require_tool

PYTHON = os.path.abspath(sys.executable)
SYSTEM_ONLY = ("DynamicUser=", "StateDirectory=", "ProtectSystem=", "ProtectHome=", "PrivateTmp=",
               "CapabilityBoundingSet=", "RestrictAddressFamilies=", "SystemCallFilter=")


def _verify(unit: Path, tmp_path: Path, user: bool = False) -> None:
    """`systemd-analyze verify` accepts the unit with not a single warning (unknown keys only warn)."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    command = [require_tool("systemd-analyze"), *(["--user"] if user else []), "verify", str(unit)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def _directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def _environment(unit: str) -> dict[str, str]:
    return parse_unit(unit)[1]


def test_system_unit_is_hardened_verifies_and_serves(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir()
    config.write_text(f'[server]\nport = {port}\n[blob_store.fs]\nroot_dir = "{tmp_path / "data"}"\n')
    systemctl = FakeTool(tmp_path / "bin", "systemctl")
    root = tmp_path / "root"
    env = {**os.environ, **systemctl.env, "REGISTRY_SERVICE_ROOT": str(root)}

    installed = registry_cli("-c", str(config), "service", "install", "--system", env=env)
    assert installed.returncode == 0, installed.stderr
    assert systemctl.calls() == [["daemon-reload"], ["enable", "registry.service"]]
    unit_path = root / "etc/systemd/system/registry.service"
    unit = unit_path.read_text()
    directives = _directives(unit)
    assert directives["ExecStart"] == [f"{PYTHON} -m app -c {config} server"]
    for key, value in [("Type", "exec"), ("DynamicUser", "yes"), ("StateDirectory", "registry"),
                       ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("NoNewPrivileges", "yes"), ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
                       ("CapabilityBoundingSet", ""), ("Restart", "on-failure"), ("KillSignal", "SIGTERM"),
                       ("WantedBy", "multi-user.target")]:
        assert directives.get(key) == [value], key
    # The file configures [blob_store]: no data override that would fight it.
    assert "REGISTRY__BLOB_STORE__FS__ROOT_DIR" not in _environment(unit)
    assert "configuration: " + str(config) in installed.stdout
    _verify(unit_path, tmp_path)

    arguments, environment = parse_unit(unit)
    assert arguments == [PYTHON, "-m", "app", "-c", str(config), "server"]
    log = serve_as_service_manager_would(arguments, environment, port, tmp_path)
    assert '"stopped"' in log

    for action, expected in [("start", [["start", "registry.service"]]),
                             ("status", [["is-active", "registry.service"]]),
                             ("stop", [["stop", "registry.service"]])]:
        result = registry_cli("service", action, "--system", env=env)
        assert result.returncode == 0, (action, result.stdout, result.stderr)
        assert systemctl.calls() == expected, action
        if action == "status":
            assert f"service: {unit_path} (system)" in result.stdout
            assert "state: active" in result.stdout
            assert f"configuration: {config}" in result.stdout
            assert f"data: as [blob_store] in {config} says" in result.stdout
    stopped = registry_cli("service", "status", "--system", env=env)
    assert stopped.returncode == 3 and "state: inactive" in stopped.stdout
    systemctl.calls()

    removed = registry_cli("service", "uninstall", "--system", env=env)
    assert removed.returncode == 0, removed.stderr
    assert systemctl.calls() == [["disable", "--now", "registry.service"], ["daemon-reload"]]
    assert not unit_path.exists() and config.exists()
    again = registry_cli("service", "uninstall", "--system", env=env)
    assert again.returncode == 1 and "not installed" in again.stderr


def test_user_unit_verifies_and_serves_with_its_data_folder(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\nport = {port}\n")  # no [blob_store]: the data folder comes from install
    data = tmp_path / "my data"
    systemctl = FakeTool(tmp_path / "bin", "systemctl")
    xdg = tmp_path / "xdg-config"
    env = {**os.environ, **systemctl.env, "XDG_CONFIG_HOME": str(xdg)}

    installed = registry_cli("service", "install", "--user", "-c", str(config), "--data", str(data), env=env)
    assert installed.returncode == 0, installed.stderr
    assert systemctl.calls() == [["--user", "daemon-reload"], ["--user", "enable", "registry.service"]]
    unit_path = xdg / "systemd/user/registry.service"
    unit = unit_path.read_text()
    directives = _directives(unit)
    assert directives["ExecStart"] == [f"{PYTHON} -m app -c {config} server"]
    assert directives["Restart"] == ["on-failure"] and directives["WantedBy"] == ["default.target"]
    assert directives["NoNewPrivileges"] == ["yes"]
    assert [key for key in SYSTEM_ONLY if key in unit] == []  # refused or meaningless in a user manager
    assert _environment(unit)["REGISTRY__BLOB_STORE__FS__ROOT_DIR"] == str(data)
    _verify(unit_path, tmp_path, user=True)

    blob = b"stored where install said\n"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    def push(url: str) -> None:
        response = requests.post(f"{url}/v2/svc/blobs/uploads/?digest={digest}", data=blob, timeout=30)
        assert response.status_code == 201, response.text

    arguments, environment = parse_unit(unit)
    serve_as_service_manager_would(arguments, environment, port, tmp_path, check=push)
    stored = data / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
    assert stored.read_bytes() == blob

    for action, verb in [("start", "start"), ("stop", "stop")]:
        assert registry_cli("service", action, "--user", env=env).returncode == 0
        assert systemctl.calls() == [["--user", verb, "registry.service"]]
    assert registry_cli("service", "uninstall", "--user", env=env).returncode == 0
    assert systemctl.calls() == [["--user", "disable", "--now", "registry.service"],
                                 ["--user", "daemon-reload"]]
    assert not unit_path.exists()


def test_install_creates_a_missing_default_configuration(tmp_path: Path) -> None:
    systemctl = FakeTool(tmp_path / "bin", "systemctl")
    root = tmp_path / "root"
    env = {**os.environ, **systemctl.env, "REGISTRY_SERVICE_ROOT": str(root)}
    installed = registry_cli("service", "install", "--system", env=env)
    assert installed.returncode == 0, installed.stderr
    unit = (root / "etc/systemd/system/registry.service").read_text()
    assert parse_unit(unit)[0][-3:] == ["-c", "/etc/registry/config.toml", "server"]
    assert (root / "etc/registry/config.toml").read_text().startswith("# Simple-Registry configuration")
    assert _environment(unit)["REGISTRY__BLOB_STORE__FS__ROOT_DIR"] == "%S/registry"  # /var/lib/registry
    assert _directives(unit)["ConfigurationDirectory"] == ["registry"]


def test_install_refuses_what_would_not_work(tmp_path: Path) -> None:
    systemctl = FakeTool(tmp_path / "bin", "systemctl")
    env = {**os.environ, **systemctl.env, "REGISTRY_SERVICE_ROOT": str(tmp_path / "root")}
    configured = tmp_path / "configured.toml"
    configured.write_text(f'[blob_store.fs]\nroot_dir = "{tmp_path / "d"}"\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("[server]\nport = 'many'\n")
    cases = [
        (["-c", str(configured), "service", "install", "--system", "--data", "/var/lib/x"],
         "leave out --data"),
        (["service", "install", "--system", "--data", str(tmp_path / "elsewhere")], "below /var/lib"),
        (["-c", str(broken), "service", "install", "--system"], "server.port"),
        (["-c", str(tmp_path / "missing.toml"), "service", "install", "--system"], "file not found"),
    ]
    for arguments, message in cases:
        result = registry_cli(*arguments, env=env)
        assert result.returncode == 1, (arguments, result.stdout)
        assert message in result.stderr, (arguments, result.stderr)
    assert systemctl.calls() == []
    assert not (tmp_path / "root/etc/systemd").exists()


def test_exec_start_quoting_round_trips() -> None:
    spec = ServiceSpec("user", ["/opt/my registry/registry"], Path("/etc/100% \"odd\"/$HOME.toml"),
                       Path("/data/with space"))
    unit = render_unit(spec)
    assert "ExecStart=\"/opt/my registry/registry\" -c \"/etc/100%% \\\"odd\\\"/$$HOME.toml\" server" in unit
    arguments, environment = parse_unit(unit)
    assert arguments == ["/opt/my registry/registry", "-c", "/etc/100% \"odd\"/$HOME.toml", "server"]
    assert environment["REGISTRY__BLOB_STORE__FS__ROOT_DIR"] == "/data/with space"
    assert quote("plain/path-1.toml") == "plain/path-1.toml"


def test_state_directory_lies_below_var_lib() -> None:
    assert state_directory(Path("/var/lib/registry")) == "registry"
    assert state_directory(Path("/var/lib/registries/main")) == "registries/main"
    for outside in ("/var/lib", "/srv/registry", "/var/library"):
        with pytest.raises(ServiceError, match="below /var/lib"):
            state_directory(Path(outside))


def test_default_locations_per_os_and_scope(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "d"))
    linux_user = default_locations("linux", "user")
    assert (linux_user.config_file, linux_user.data_dir) == (tmp_path / "c/registry/config.toml",
                                                             tmp_path / "d/registry")
    linux_system = default_locations("linux", "system")
    assert (linux_system.config_file, linux_system.data_dir, linux_system.log_dir) == (
        Path("/etc/registry/config.toml"), Path("/var/lib/registry"), None)
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):  # platformdirs honours them on macOS too
        monkeypatch.delenv(name)
    mac_user = default_locations("darwin", "user")
    support = tmp_path / "Library/Application Support/registry"
    assert (mac_user.config_file, mac_user.data_dir, mac_user.log_dir) == (
        support / "config.toml", support, tmp_path / "Library/Logs/registry")
    mac_system = default_locations("darwin", "system")
    assert (mac_system.config_file, mac_system.data_dir, mac_system.log_dir) == (
        Path("/Library/Application Support/registry/config.toml"),
        Path("/Library/Application Support/registry/data"), Path("/Library/Logs/registry"))
    monkeypatch.setenv("PROGRAMDATA", r"D:\ProgramData")
    windows = default_locations("win32", "system")
    assert [PureWindowsPath(p) for p in (windows.config_file, windows.data_dir, windows.log_dir)] == [
        PureWindowsPath(r"D:\ProgramData\registry") / name for name in ("config.toml", "data", "logs")]


def test_packaging_files_are_what_install_writes() -> None:
    for path, content in packaged_files().items():
        assert path.read_bytes() == content, (
            f"{path} is out of date: run `.venv/bin/python -m app.system_service.packaging`")
    unit = (Path(__file__).parents[1] / "packaging/linux/registry.service").read_text()
    assert shlex.split(_directives(unit)["ExecStart"][0]) == [
        "/usr/local/bin/registry", "-c", "/etc/registry/config.toml", "server"]
