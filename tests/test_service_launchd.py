"""`registry service` for macOS (forced with the platform parameter): the property list read back
with plistlib key by key, its ProgramArguments run as launchd would, and the `launchctl` calls of
each action, made to a stand-in `launchctl` first on PATH (launchd cannot run here)."""

from __future__ import annotations

import os
import plistlib
import sys
from pathlib import Path

import pytest

from app.cli import _parser
from app.commands import service
from app.system_service.launchd import LABEL
from tests.helpers.server import free_port
from tests.helpers.service_manager import FakeTool, serve_as_service_manager_would

PYTHON = os.path.abspath(sys.executable)


def _registry(*arguments: str) -> int:
    args = _parser().parse_args(list(arguments))
    return service.run(args, args.config, platform="darwin")


@pytest.fixture
def launchctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTool:
    tool = FakeTool(tmp_path / "bin", "launchctl")
    for name, value in tool.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "REGISTRY_SERVICE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return tool


def test_user_agent(launchctl: FakeTool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\nport = {port}\n")
    assert _registry("service", "install", "--user", "-c", str(config)) == 0
    assert launchctl.calls() == []  # installing is writing the file: launchd loads it at login

    path = home / "Library/LaunchAgents" / f"{LABEL}.plist"
    document = plistlib.loads(path.read_bytes())
    data = home / "Library/Application Support/registry"
    logs = home / "Library/Logs/registry"
    assert document == {
        "Label": LABEL,
        "ProgramArguments": [PYTHON, "-m", "app", "-c", str(config), "server"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ExitTimeOut": 90,
        "ProcessType": "Background",
        "EnvironmentVariables": {"REGISTRY_LOG": "info", "REGISTRY__BLOB_STORE__FS__ROOT_DIR": str(data)},
        "StandardOutPath": str(logs / "registry.log"),
        "StandardErrorPath": str(logs / "registry.err.log"),
    }
    assert logs.is_dir() and data.is_dir()  # launchd creates the log files, never their folder
    serve_as_service_manager_would(document["ProgramArguments"], document["EnvironmentVariables"], port,
                                   tmp_path)

    domain, target = f"gui/{os.getuid()}", f"gui/{os.getuid()}/{LABEL}"
    assert _registry("service", "start", "--user") == 0
    assert launchctl.calls() == [["print", target], ["bootstrap", domain, str(path)]]
    assert _registry("service", "start", "--user") == 0  # loaded already: run it again
    assert launchctl.calls() == [["print", target], ["kickstart", target]]
    capsys.readouterr()
    assert _registry("service", "status", "--user") == 0
    assert launchctl.calls() == [["print", target]]
    status = capsys.readouterr().out
    assert f"service: {path} (user)" in status and "state: running" in status
    assert f"configuration: {config}" in status and f"data: {data}" in status
    assert f"logs: {logs / 'registry.err.log'}" in status
    assert _registry("service", "stop", "--user") == 0
    assert launchctl.calls() == [["print", target], ["bootout", target]]
    assert _registry("service", "status", "--user") == 3
    assert "state: not loaded" in capsys.readouterr().out
    launchctl.calls()
    assert _registry("service", "uninstall", "--user") == 0
    assert launchctl.calls() == [["print", target]]  # not loaded: nothing to boot out
    assert not path.exists() and config.exists() and data.exists()


def test_system_daemon(launchctl: FakeTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    monkeypatch.setenv("REGISTRY_SERVICE_ROOT", str(root))
    assert _registry("service", "install", "--system") == 0
    path = root / "Library/LaunchDaemons" / f"{LABEL}.plist"
    document = plistlib.loads(path.read_bytes())
    support = Path("/Library/Application Support/registry")
    assert document["ProgramArguments"] == [PYTHON, "-m", "app", "-c", str(support / "config.toml"), "server"]
    assert document["EnvironmentVariables"]["REGISTRY__BLOB_STORE__FS__ROOT_DIR"] == str(support / "data")
    assert document["StandardErrorPath"] == "/Library/Logs/registry/registry.err.log"
    assert (document["RunAtLoad"], document["KeepAlive"]) == (True, {"SuccessfulExit": False})
    assert (root / "Library/Logs/registry").is_dir()
    assert (root / "Library/Application Support/registry/config.toml").is_file()  # the starter file

    assert _registry("service", "start", "--system") == 0
    assert launchctl.calls() == [["print", f"system/{LABEL}"], ["bootstrap", "system", str(path)]]
    assert _registry("service", "uninstall", "--system") == 0
    assert launchctl.calls() == [["print", f"system/{LABEL}"], ["bootout", f"system/{LABEL}"]]
    assert not path.exists()
