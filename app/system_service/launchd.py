"""macOS: a launchd property list, loaded with `launchctl bootstrap` and unloaded with `bootout`.

`--user` writes a LaunchAgent (`~/Library/LaunchAgents`, the `gui/<uid>` domain: it runs while the
user is logged in), `--system` a LaunchDaemon (`/Library/LaunchDaemons`, the `system` domain: at boot).
launchd loads every property list in those folders at login/boot, so installing is writing the file;
`start` bootstraps it now (RunAtLoad starts the process), `stop` boots it out (a stop that KeepAlive
would undo otherwise). The process stays in the foreground and on SIGTERM drains and exits 0, which
KeepAlive's `SuccessfulExit = false` takes as "stopped on purpose"; any other exit is restarted.
`packaging/macos/com.simple-registry.registry.plist` is this module's LaunchAgent.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

from app.system_service import DATA_VARIABLE, NAME, ServiceError, ServiceSpec, Status

LABEL = "com.simple-registry.registry"
SYSTEM_AGENT_DIR = Path("/Library/LaunchDaemons")


def plist_path(spec: ServiceSpec) -> Path:
    if spec.scope == "system":
        return SYSTEM_AGENT_DIR / f"{LABEL}.plist"
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def domain(spec: ServiceSpec) -> str:
    return "system" if spec.scope == "system" else f"gui/{os.getuid()}"


def log_files(log_dir: Path) -> tuple[Path, Path]:
    return log_dir / f"{NAME}.log", log_dir / f"{NAME}.err.log"


def render_plist(spec: ServiceSpec, log_dir: Path) -> bytes:
    """launchd expands neither `~` nor variables: every path in it is absolute."""
    environment = {"REGISTRY_LOG": "info", **spec.environment}
    if spec.data_dir is not None:  # set only when the configuration leaves [blob_store] out
        environment[DATA_VARIABLE] = str(spec.data_dir)
    stdout, stderr = log_files(log_dir)
    document: dict[str, Any] = {
        "Label": LABEL,
        "ProgramArguments": spec.server_arguments(),
        "RunAtLoad": True,
        # Restarted after a crash, not after the clean exit (0) that follows a SIGTERM.
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ExitTimeOut": 90,  # seconds between SIGTERM and SIGKILL: the drain's grace period and some
        "ProcessType": "Background",
        "EnvironmentVariables": environment,
        "StandardOutPath": str(stdout),
        "StandardErrorPath": str(stderr),
    }
    return plistlib.dumps(document, fmt=plistlib.FMT_XML, sort_keys=False)


class Launchd:
    def __init__(self, log_dir: Path) -> None:
        self.launchctl = "launchctl"
        self.log_dir = log_dir

    def _run(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if shutil.which(self.launchctl) is None:
            raise ServiceError(f"{self.launchctl} was not found: this is not macOS")
        command = [self.launchctl, *arguments]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if check and result.returncode != 0:
            raise ServiceError(f"`{' '.join(command)}` failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()}")
        return result

    def _loaded(self, spec: ServiceSpec) -> subprocess.CompletedProcess[str]:
        return self._run("print", f"{domain(spec)}/{LABEL}", check=False)

    def install(self, spec: ServiceSpec) -> list[str]:
        path = spec.rooted(plist_path(spec))
        path.parent.mkdir(parents=True, exist_ok=True)
        spec.rooted(self.log_dir).mkdir(parents=True, exist_ok=True)  # launchd creates files, not folders
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(render_plist(spec, self.log_dir))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
        when = "at boot" if spec.scope == "system" else "at login"
        return [f"wrote {path}", f"launchd loads it {when}; `registry service start` starts it now"]

    def uninstall(self, spec: ServiceSpec) -> list[str]:
        path = spec.rooted(plist_path(spec))
        if not path.exists():
            raise ServiceError(f"not installed: {path} does not exist")
        if self._loaded(spec).returncode == 0:
            self._run("bootout", f"{domain(spec)}/{LABEL}")
        path.unlink()
        return [f"unloaded and removed {path} (configuration, data and logs are kept)"]

    def start(self, spec: ServiceSpec) -> None:
        path = spec.rooted(plist_path(spec))
        if not path.exists():
            raise ServiceError(f"not installed: {path} does not exist (`registry service install`)")
        if self._loaded(spec).returncode == 0:
            self._run("kickstart", f"{domain(spec)}/{LABEL}")  # loaded, perhaps stopped: run it
        else:
            self._run("bootstrap", domain(spec), str(path))

    def stop(self, spec: ServiceSpec) -> None:
        if self._loaded(spec).returncode == 0:
            self._run("bootout", f"{domain(spec)}/{LABEL}")

    def status(self, spec: ServiceSpec) -> Status:
        path = spec.rooted(plist_path(spec))
        stdout, stderr = log_files(self.log_dir)
        if not path.exists():
            return Status(path, installed=False, running=False, state="not installed")
        document = plistlib.loads(path.read_bytes())
        printed = self._loaded(spec)
        state = "not loaded"
        if printed.returncode == 0:
            state = "loaded"
            for line in printed.stdout.splitlines():
                key, _, value = line.strip().partition(" = ")
                if key == "state":
                    state = value
        return Status(path, installed=True, running=state == "running", state=state,
                      arguments=list(document.get("ProgramArguments", [])),
                      environment=dict(document.get("EnvironmentVariables", {})),
                      logs=f"{document.get('StandardErrorPath', stderr)} (and {stdout})")
