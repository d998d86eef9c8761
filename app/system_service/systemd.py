"""Linux: a systemd unit, enabled, started and stopped through `systemctl` (`--user` for a user unit).

The system unit is hardened: a dynamic user (no account to create, no files it can own outside its
state folder), the whole file system read-only except that folder, no new privileges, no
capabilities, private /tmp and devices, no access to homes, only IP and Unix sockets. A user unit
cannot use most of that (no dynamic user, no capability bounding in a user manager), so it keeps
`NoNewPrivileges` and leaves the rest to the account it runs as. `packaging/linux/registry.service`
is this module's system unit, rendered with `registry service unit` (a test keeps the two equal).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import platformdirs

from app.system_service import DATA_VARIABLE, DESCRIPTION, NAME, ServiceError, ServiceSpec, Status

UNIT = f"{NAME}.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
STATE_ROOT = PurePosixPath("/var/lib")  # systemd's %S for system units

# What the system service cannot see, so a configuration or executable there would not be found.
_HIDDEN = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")

HARDENING = """\
# Hardening: the registry needs its state folder, the network and nothing else.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
UMask=0027
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
# The one-file executable unpacks its libraries into the private /tmp at each start and loads them
# from there, so /tmp must stay executable (no NoExecPaths=/tmp). MemoryDenyWriteExecute is not
# set: cffi (argon2) may need writable+executable memory for callbacks.
# Listening on a port below 1024 needs AmbientCapabilities=CAP_NET_BIND_SERVICE and the same in
# CapabilityBoundingSet.
"""


def unit_path(spec: ServiceSpec) -> Path:
    if spec.scope == "system":
        return SYSTEM_UNIT_DIR / UNIT
    return platformdirs.user_config_path("systemd", appauthor=False) / "user" / UNIT


def quote(argument: str) -> str:
    """One ExecStart argument: `%` is a specifier and `$` a variable to systemd, whitespace, quotes
    and backslashes need C-style quoting (systemd.syntax(7))."""
    escaped = argument.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _environment_line(name: str, value: str, specifiers: bool = False) -> str:
    """`specifiers`: the value uses systemd's (`%S`); otherwise a `%` in it is taken literally."""
    if not specifiers:
        value = value.replace("%", "%%")
    assignment = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{assignment}"'


def state_directory(data_dir: Path | None) -> str | None:
    """The StateDirectory= for a system unit's data folder, which must lie below /var/lib (systemd
    creates it and hands it to the dynamic user; anywhere else that user could not write)."""
    if data_dir is None:
        return None
    path = PurePosixPath(data_dir)
    if path == STATE_ROOT or STATE_ROOT not in path.parents:
        raise ServiceError(f"a system unit keeps its data below {STATE_ROOT} (a StateDirectory, which "
                           f"systemd gives to the service's dynamic user); {data_dir} is not. Mount or "
                           "link your storage there, or configure [blob_store] in the configuration file")
    return str(path.relative_to(STATE_ROOT))


def render_unit(spec: ServiceSpec, header: list[str] | None = None) -> str:
    """The unit `install` writes; `header`: comment lines in place of "written by install"."""
    system = spec.scope == "system"
    lines = [
        *(header or [f"# Simple-Registry as a systemd {'system' if system else 'user'} service, written by "
                     f"`registry service install --{spec.scope}`."]),
        "#",
        "# It runs `registry server` with one configuration file, in the foreground. On SIGTERM the",
        "# registry stops accepting, drains in-flight requests (server.query_timeout_grace_period, 60 s",
        f"# by default) and exits 0. Logs: JSON lines on stderr, kept by journald "
        f"(journalctl {'' if system else '--user '}-u {NAME}).",
        f"# Local changes belong in a drop-in (systemctl {'' if system else '--user '}edit {NAME}): "
        "installing again rewrites this file.",
        "",
        "[Unit]",
        f"Description={DESCRIPTION}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        "ExecStart=" + " ".join(quote(argument) for argument in spec.server_arguments()),
        _environment_line("REGISTRY_LOG", spec.environment.get("REGISTRY_LOG", "info")),
    ]
    for name, value in sorted(spec.environment.items()):
        if name != "REGISTRY_LOG":
            lines.append(_environment_line(name, value))
    state = state_directory(spec.data_dir) if system else None
    if spec.data_dir is not None:
        # Environment variables override the file: set only when the file leaves [blob_store] out.
        if state is not None:
            lines.append(_environment_line(DATA_VARIABLE, f"%S/{state}", specifiers=True))
        else:
            lines.append(_environment_line(DATA_VARIABLE, str(spec.data_dir)))
    if system:
        lines += ["DynamicUser=yes", f"StateDirectory={state or NAME}", "StateDirectoryMode=0750"]
        if PurePosixPath(spec.config_file).parent == PurePosixPath("/etc") / NAME:
            lines += [f"ConfigurationDirectory={NAME}", "ConfigurationDirectoryMode=0755"]
    lines += [
        "",
        "# Stop: SIGTERM to the main process; the drain has until TimeoutStopSec.",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        "TimeoutStopSec=90",
        "Restart=on-failure",
        "RestartSec=2s",
        "LimitNOFILE=65536",
        "",
    ]
    if system:
        lines.append(HARDENING)
    else:
        lines += ["NoNewPrivileges=yes", ""]
    lines += ["[Install]", f"WantedBy={'multi-user.target' if system else 'default.target'}", ""]
    return "\n".join(lines)


def hidden_paths_warnings(spec: ServiceSpec) -> list[str]:
    if spec.scope != "system":
        return []
    warnings = []
    for what, path, better in (("executable", spec.command[0], "/usr/local/bin"),
                               ("configuration", str(spec.config_file), f"/etc/{NAME}")):
        if any(path == hidden or path.startswith(hidden + "/") for hidden in _HIDDEN):
            warnings.append(f"warning: the hardened system service cannot see the {what} {path} "
                            f"({', '.join(_HIDDEN)} are hidden from it): move it, e.g. to {better}")
    return warnings


class Systemd:
    def __init__(self) -> None:
        self.systemctl = "systemctl"

    def _run(self, spec: ServiceSpec, *arguments: str,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [self.systemctl, *(["--user"] if spec.scope == "user" else []), *arguments]
        if shutil.which(self.systemctl) is None:
            raise ServiceError(f"{self.systemctl} was not found: this system does not run systemd")
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if check and result.returncode != 0:
            raise ServiceError(f"`{' '.join(command)}` failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()}")
        return result

    def install(self, spec: ServiceSpec) -> list[str]:
        unit = render_unit(spec)  # refuses a data folder the unit could not use, before writing anything
        path = spec.rooted(unit_path(spec))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(unit)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)  # a reinstall never leaves a half-written unit
        self._run(spec, "daemon-reload")
        self._run(spec, "enable", UNIT)
        notes = [*hidden_paths_warnings(spec), f"wrote {path}", f"enabled {UNIT}: it starts at "
                 f"{'boot' if spec.scope == 'system' else 'login'}; `registry service start` starts it now"]
        if spec.scope == "user":
            notes.append("a user service stops when you log out; `loginctl enable-linger` keeps it running")
        return notes

    def uninstall(self, spec: ServiceSpec) -> list[str]:
        path = spec.rooted(unit_path(spec))
        if not path.exists():
            raise ServiceError(f"not installed: {path} does not exist")
        self._run(spec, "disable", "--now", UNIT)
        path.unlink()
        self._run(spec, "daemon-reload")
        return [f"stopped, disabled and removed {path} (configuration and data are kept)"]

    def start(self, spec: ServiceSpec) -> None:
        self._run(spec, "start", UNIT)

    def stop(self, spec: ServiceSpec) -> None:
        self._run(spec, "stop", UNIT)

    def status(self, spec: ServiceSpec) -> Status:
        path = spec.rooted(unit_path(spec))
        if not path.exists():
            return Status(path, installed=False, running=False, state="not installed")
        active = self._run(spec, "is-active", UNIT, check=False).stdout.strip() or "unknown"
        arguments, environment = parse_unit(path.read_text())
        journal = f"journalctl {'--user ' if spec.scope == 'user' else ''}-u {NAME}"
        return Status(path, installed=True, running=active == "active", state=active, arguments=arguments,
                      environment=environment, logs=journal)


def parse_unit(text: str) -> tuple[list[str], dict[str, str]]:
    """ExecStart's arguments and the Environment= assignments of a unit this module wrote."""
    import shlex

    arguments: list[str] = []
    environment: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            words = shlex.split(line[len("ExecStart="):])
            arguments = [word.replace("%%", "%").replace("$$", "$") for word in words]
        elif line.startswith("Environment="):
            for assignment in shlex.split(line[len("Environment="):]):
                name, _, value = assignment.partition("=")
                environment[name] = value
    return arguments, environment
