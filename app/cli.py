"""The `registry` command line: `registry [-c FILE]... <command>`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.config import ConfigError, load
from app.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry", description="An OCI-compliant, Docker-compatible container registry.")
    parser.add_argument("-c", "--config", action="append", type=Path, metavar="FILE",
                        help="TOML configuration file, or a folder whose *.toml files are read in name "
                             "order (repeatable; merged in order). Default: ./config.toml, else "
                             "config.toml in the user config folder, else built-in zero-config defaults")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    server = commands.add_parser("server", help="run the registry listeners until SIGINT/SIGTERM")
    server.add_argument("--admin", action="store_true",
                        help="add an `admin` identity that may do everything; its password comes from "
                             "REGISTRY_ADMIN_PASSWORD or --admin-password-file, else is generated at the "
                             "first start and printed once")
    server.add_argument("--admin-password-file", type=Path, metavar="FILE",
                        help="read the admin password from FILE (with --admin)")
    commands.add_parser("argon", aliases=["hash-password"],
                        help="read a password and print its Argon2id hash for [auth.identity.*]")
    commands.add_parser("check-config", help="validate the configuration and print it, secrets redacted")
    from app.commands import scrub

    scrub.add_arguments(commands)
    from app.commands import delete_repository

    delete_repository.add_arguments(commands)
    from app.commands import service

    service.add_arguments(commands)
    commands.add_parser("version", help="print the version, commit, build date and Python version")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "version":
        from app import build_info

        print(build_info.describe())
        return 0
    if args.command in ("argon", "hash-password"):
        from app.commands import argon

        return argon.run()
    setup_logging()
    if args.command == "service":
        from app.commands import service

        return service.run(args, args.config)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "check-config":
            from app.commands import check_config

            return check_config.run(config)
        from app.client_tls import import_aiohttp

        import_aiohttp()  # before anything else imports it: no CA certificates loaded for nothing
        if args.command == "scrub":
            from app.commands import scrub

            return scrub.run(config, args)
        if args.command == "delete-repository":
            from app.commands import delete_repository

            return delete_repository.run(config, args)
        if getattr(args, "admin", False):
            from app.commands import admin

            config = admin.enable(config, args.config, args.admin_password_file)
        elif getattr(args, "admin_password_file", None) is not None:
            print("error: --admin-password-file needs --admin", file=sys.stderr)
            return 2
        from app.commands import server

        return server.run(config, args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
