"""The `registry` command line: `registry [-c FILE]... <command>`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app import __version__
from app.config import ConfigError, load
from app.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry", description="An OCI-compliant, Docker-compatible container registry.")
    parser.add_argument("-c", "--config", action="append", type=Path, metavar="FILE",
                        help="TOML configuration file (repeatable; merged in order). Default: "
                             "./config.toml, else config.toml in the user config folder, else built-in "
                             "zero-config defaults")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    commands.add_parser("server", help="run the registry listeners until SIGINT/SIGTERM")
    commands.add_parser("argon", aliases=["hash-password"],
                        help="read a password and print its Argon2id hash for [auth.identity.*]")
    commands.add_parser("check-config", help="validate the configuration and print it, secrets redacted")
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "version":
        print(f"registry {__version__}")
        return 0
    if args.command in ("argon", "hash-password"):
        from app.commands import argon

        return argon.run()
    setup_logging()
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "check-config":
            from app.commands import check_config

            return check_config.run(config)
        from app.commands import server

        return server.run(config, args.config)
    except ValueError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
