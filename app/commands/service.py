"""`registry service install|uninstall|start|stop|status` for this OS's service manager (and `run`,
the Windows service manager's entry point). See docs/service.md."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import ConfigError, config_files, load

if TYPE_CHECKING:  # the parser is built at every start; the rest is imported by `registry service`
    from app.system_service import Backend, Scope, ServiceSpec, Status
    from app.system_service.locations import Locations

ACTIONS = ("install", "uninstall", "start", "stop", "status", "run")

STARTER_CONFIG = """\
# Simple-Registry configuration of the `registry` service (see docs/configuration.md).
# Empty, this is the zero-config registry: 127.0.0.1:5000, anyone who can reach it may push and pull.
# After a change: most keys reload live; `registry service stop` and `start` for the rest.
"""


def add_arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = commands.add_parser("service", help="run the registry as a systemd unit, launchd agent or "
                                  "Windows service: install|uninstall|start|stop|status")
    actions = service.add_subparsers(dest="service_action", metavar="<action>", required=True)
    helps = {"install": "register it to start at boot (--system) or login (--user); does not start it",
             "uninstall": "stop it and remove it (configuration and data are kept)",
             "start": "start it now", "stop": "stop it (in-flight requests are drained first)",
             "status": "where its definition, configuration, data and logs are, and whether it runs",
             "run": "the Windows service process (started by the service manager, not by hand)"}
    for action in ACTIONS:
        parser = actions.add_parser(action, help=helps[action])
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument("--user", dest="scope", action="store_const", const="user",
                           help="the current user's service (default unless run as root/Administrator)")
        scope.add_argument("--system", dest="scope", action="store_const", const="system",
                           help="the machine's service (default as root; the only one on Windows)")
        if action in ("install", "run"):
            parser.add_argument("-c", "--config", dest="service_config", action="append", type=Path,
                                metavar="FILE", help="the configuration file the service runs with "
                                "(default: config.toml in the scope's configuration folder; created "
                                "when missing)")
            parser.add_argument("--data", type=Path, metavar="DIR",
                                help="the data folder, when the configuration has no [blob_store] "
                                     "(default: the scope's data folder)")


def default_scope(platform: str) -> Scope:
    if platform == "win32":
        return "system"
    return "system" if os.geteuid() == 0 else "user"


def run(args: argparse.Namespace, global_configs: list[Path] | None, platform: str = sys.platform) -> int:
    """`platform`: which service manager to drive (tests pick one; otherwise this OS's)."""
    from app.system_service import ServiceError

    try:
        return _run(args, [*(global_configs or []), *(getattr(args, "service_config", None) or [])],
                    platform)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, configs: list[Path], platform: str) -> int:
    from app.system_service import ServiceError, ServiceSpec, service_root
    from app.system_service.locations import default_locations, server_command

    scope: Scope = args.scope or default_scope(platform)
    if platform == "win32" and scope == "user":
        raise ServiceError("a Windows service belongs to the machine: use --system (from an elevated prompt)")
    locations = default_locations(platform, scope)
    if args.service_action == "run":
        return _host(platform, configs, getattr(args, "data", None), locations)
    backend = _backend(platform, locations)
    if args.service_action == "install":
        spec = _install_spec(scope, configs, args.data, locations)
        for line in backend.install(spec):
            print(line)
        print(f"configuration: {spec.config_file}")
        print(f"data: {_data_description(spec.data_dir, spec.config_file)}")
        return 0
    if configs:
        raise ServiceError(f"-c is for `service install`; `service {args.service_action}` acts on the "
                           "installed service")
    spec = ServiceSpec(scope, server_command(), locations.config_file, None, service_root())
    if args.service_action == "uninstall":
        for line in backend.uninstall(spec):
            print(line)
        return 0
    if args.service_action == "start":
        backend.start(spec)
        print("started")
        return 0
    if args.service_action == "stop":
        backend.stop(spec)
        print("stopped")
        return 0
    status = backend.status(spec)
    _print_status(status, scope, locations)
    return 0 if status.running else 3  # 3: "not running", as systemctl/LSB status say


def _backend(platform: str, locations: Locations) -> Backend:
    from app.system_service import ServiceError

    if platform == "darwin":
        from app.system_service.launchd import Launchd

        assert locations.log_dir is not None
        return Launchd(locations.log_dir)
    if platform == "win32":
        from app.system_service.windows import WindowsServices

        assert locations.log_dir is not None
        return WindowsServices(locations.log_dir)
    if platform.startswith("linux"):
        from app.system_service.systemd import Systemd

        return Systemd()
    raise ServiceError(f"no service manager support for {platform} (Linux, macOS and Windows have one)")


def _install_spec(scope: Scope, configs: list[Path], data: Path | None, locations: Locations) -> ServiceSpec:
    from app.system_service import ServiceError, ServiceSpec, service_root
    from app.system_service.locations import server_command

    root = service_root()
    if len(configs) > 1:
        raise ServiceError("a service runs with one configuration file (or folder of *.toml files)")
    if configs:
        config_file = Path(os.path.abspath(configs[0]))
        if not config_file.exists():
            raise ServiceError(f"{config_file}: file not found")
    else:
        config_file = locations.config_file
        written = _rooted(root, config_file)
        if not written.exists():
            written.parent.mkdir(parents=True, exist_ok=True)
            written.write_text(STARTER_CONFIG, encoding="utf-8")
            print(f"wrote {written} (the zero-config defaults: edit it to configure the registry)")
    readable = config_file if configs else _rooted(root, config_file)
    try:
        load([readable])  # a configuration that would not start is refused now, not at boot
        configured = _configures_storage(readable)
    except ConfigError as exc:
        raise ServiceError(f"the configuration would not start: {exc}") from None
    if configured and data is not None:
        raise ServiceError(f"{config_file} configures [blob_store], which decides where data lives: "
                           "leave out --data, or remove [blob_store] from the file")
    data_dir = None if configured else Path(os.path.abspath(data or locations.data_dir))
    if data_dir is not None and scope == "user":
        _rooted(root, data_dir).mkdir(parents=True, exist_ok=True)
    return ServiceSpec(scope, server_command(), config_file, data_dir, root)


def _rooted(root: Path, path: Path) -> Path:
    return path if root == Path("/") else root / path.relative_to(path.anchor)


def _configures_storage(path: Path) -> bool:
    for file in config_files([path]):
        data = tomllib.loads(file.read_text(encoding="utf-8"))
        if "blob_store" in data or "storage" in data:  # `storage` is the seeds' name for it
            return True
    return False


def _data_description(data_dir: Path | str | None, config_file: Path | str | None) -> str:
    if data_dir is not None:
        return str(data_dir)
    return f"as [blob_store] in {config_file} says"


def _print_status(status: Status, scope: Scope, locations: Locations) -> None:
    from app.system_service import DATA_VARIABLE

    print(f"service: {status.definition} ({scope})")
    print(f"state: {status.state}")
    if not status.installed:
        print(f"default configuration: {locations.config_file}")
        print(f"default data: {locations.data_dir}")
        return
    arguments = status.arguments
    config = arguments[arguments.index("-c") + 1] if "-c" in arguments[:-1] else None
    data = status.environment.get(DATA_VARIABLE)
    if "--data" in arguments[:-1]:
        data = arguments[arguments.index("--data") + 1]
    if data is not None and data.startswith("%S/"):  # systemd's state folder
        data = "/var/lib/" + data[3:]
    print(f"command: {' '.join(arguments)}")
    print(f"configuration: {config}")
    print(f"data: {_data_description(data, config)}")
    if status.logs:
        print(f"logs: {status.logs}")


def _host(platform: str, configs: list[Path], data: Path | None, locations: Locations) -> int:
    from app.system_service import ServiceError

    if platform != "win32":
        raise ServiceError("`service run` is the Windows service process; elsewhere the service manager "
                           "runs `registry server`")
    from app.system_service import windows_host

    assert locations.log_dir is not None
    return windows_host.host(configs or None, data, locations.log_dir)
