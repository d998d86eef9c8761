"""`registry delete-repository`: delete a whole repository from the store (docs/repositories.md).

    registry -c config.toml delete-repository <name> [--dry-run] [--yes] [--json]

Its tags, manifests, referrer links, upload sessions and `_layers` links go; the blobs are reclaimed
later by the GC. Safe beside running servers: it takes the locks they take, from the same lock store
(files in the data folder, Redis when configured), and with Redis (the replicas' shared state) it
tells them, so they stop serving the repository at once. Without Redis a running server keeps serving
what it cached of the repository until it restarts: delete through the server's API then.

Without `--yes` it asks on a terminal (the name must be typed) and refuses otherwise. Exit status:
0 deleted (or, with `--dry-run`, would be); 1 no such repository, not confirmed, or something was
left because a push raced the deletion; 2 usage or configuration error (also `--yes` missing without
a terminal), or the store or lock store failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from app import errors
from app.config import Config
from app.grammar import validate_name


def add_arguments(commands: Any) -> None:
    parser = commands.add_parser(
        "delete-repository", help="delete a repository: its tags, manifests and uploads",
        description="Delete a repository (tags, manifests, referrer links, upload sessions, layer links); "
                    "its blobs are reclaimed by the garbage collector. Nested repositories (<name>/...) are "
                    "kept. For a pull-through repository only the local cache goes. Exit status: 0 deleted, "
                    "1 no such repository or something kept (a push raced the deletion), 2 usage, "
                    "configuration or storage error.")
    parser.add_argument("name", help="the repository, e.g. team/app")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _confirmed(name: str) -> bool | None:
    """On a terminal, whether the user typed the name; None when there is no terminal to ask on."""
    if not sys.stdin.isatty():
        print(f"error: deleting {name} needs --yes when not run on a terminal", file=sys.stderr)
        return None
    answer = input(f"Delete repository {name} and everything in it? Type its name to confirm: ")
    return answer.strip() == name


async def _run(config: Config, name: str, args: argparse.Namespace) -> int:
    from app.coherence import beside_servers, shared_redis
    from app.locks import open_lock_store
    from app.services.repository_delete import RepositoryDeletion
    from app.storage import StorageError, open_stores

    storage = open_stores(config.blob_store, config.metadata_store)
    locks = open_lock_store(config.blob_store, config.metadata_store)
    try:
        # The replicas are told as a server tells them (app/coherence.py).
        async with beside_servers(config) as (coherence, index):
            deletion = RepositoryDeletion(storage, locks, index=index, coherence=coherence)
            try:
                if not args.dry_run and not args.yes:
                    await deletion.survey(name)  # NAME_UNKNOWN before asking
                    confirmed = _confirmed(name)
                    if not confirmed:
                        return 2 if confirmed is None else 1
                report = await deletion.delete(name, dry_run=args.dry_run)
            except errors.NameUnknown as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return 1
            except StorageError as exc:  # also the lock store and Redis (unreachable, a lock lost)
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except TimeoutError as exc:
                print(f"error: a lock could not be had: {exc}", file=sys.stderr)
                return 2
    finally:
        await locks.close()
        await storage.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        for what, items in (("tag", report.tags), ("manifest", report.manifests),
                            ("upload", report.uploads), ("layer link", report.layers)):
            for item in sorted(items):
                print(f"{'would remove' if report.dry_run else 'removed'} {what} {item}")
        print(report.summary())
    if not args.dry_run and shared_redis(config) is None:
        print("note: no Redis is configured; a server running on this store keeps serving what it "
              "cached of the repository until it restarts", file=sys.stderr)
    return 0 if report.dry_run or report.removed else 1


def run(config: Config, args: argparse.Namespace) -> int:
    try:
        name = validate_name(args.name)
    except errors.RegistryError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return asyncio.run(_run(config, name, args))
