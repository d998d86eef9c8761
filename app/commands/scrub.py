"""`registry scrub`: check the store for inconsistencies and repair them (docs/gc.md).

    registry -c config.toml scrub [--dry-run] [--uploads [AGE]] [--tags] [--revisions] [--blobs]
                                  [--retention] [--json]

No check flag: every check (retention included when a retention policy has rules; it runs first,
so the other checks see the store it left). A progress bar on a terminal (stderr), one summary line per check
(stdout), or with `--json` only the report as JSON. Exit status: 0 when the store is consistent or was
made so; 1 when something was found and not repaired (`--dry-run`, a repair failed, or a fault scrub
cannot repair); 2 for usage and configuration errors, or when a check could not finish (the store
could not be read).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from typing import TYPE_CHECKING, Any

from app.config import Config

if TYPE_CHECKING:  # the checks are imported when scrub runs, not when the parser is built
    from app.lifecycle.report import CheckReport
    from app.lifecycle.scrub import ScrubOptions


def add_arguments(commands: Any) -> None:
    parser = commands.add_parser(
        "scrub", help="check the store for inconsistencies and repair them",
        description="Check the store and repair what is inconsistent. Without a check flag, every check "
                    "runs. Exit status: 0 consistent (or made so), 1 found faults not repaired (--dry-run, "
                    "failed repairs, faults scrub cannot repair), 2 usage or configuration error, or a "
                    "check that could not finish.")
    parser.add_argument("--dry-run", action="store_true",
                        help="report what would be repaired; change nothing")
    parser.add_argument("--uploads", nargs="?", const="24h", default=None, metavar="AGE",
                        help="remove upload sessions untouched for AGE (default 24h) and abort orphan S3 "
                             "multipart uploads")
    parser.add_argument("--tags", action="store_true",
                        help="tags whose manifest is missing: re-link or remove")
    parser.add_argument("--revisions", action="store_true",
                        help="missing revision, layer, config and referrer links of stored manifests")
    parser.add_argument("--blobs", action="store_true",
                        help="hash every blob (mismatches quarantined); remove unreferenced blobs older "
                             "than [global.gc] grace_period")
    parser.add_argument("--retention", action="store_true",
                        help="remove the tags no retention policy rule keeps (with --dry-run: list them)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def options_from(args: argparse.Namespace, config: Config) -> ScrubOptions:
    """Raises ValueError for a bad AGE."""
    from app.lifecycle.scrub import CHECKS, DEFAULT_UPLOAD_AGE, ScrubOptions
    from app.retention import RetentionPolicies
    from app.units import parse_duration

    chosen = {name for name in CHECKS if getattr(args, name) not in (None, False)}
    age = DEFAULT_UPLOAD_AGE if args.uploads is None else parse_duration(args.uploads)
    policies = RetentionPolicies.from_config(config)  # checked at load: compiles
    every = {name for name in CHECKS if name != "retention" or policies.configured}
    return ScrubOptions(checks=chosen or every, dry_run=args.dry_run, upload_age=age,
                        grace_period=config.global_.gc.grace_period, retention=policies)


class Bar:
    """A tqdm bar per phase on stderr (tqdm is imported here only: the server never loads it)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar: Any = None

    def begin(self, label: str, total: int | None) -> None:
        self._bar = self._tqdm(total=total, desc=label, unit=" items", leave=False, file=sys.stderr,
                               dynamic_ncols=True)

    def advance(self, count: int = 1, bytes_read: int = 0) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def describe_store(config: Config) -> str:
    store = config.blob_store
    if store.fs is not None:
        return f"fs:{store.fs.root_dir}"
    assert store.s3 is not None
    prefix = store.s3.key_prefix.strip("/")
    return f"s3://{store.s3.bucket}/{prefix}" if prefix else f"s3://{store.s3.bucket}"


async def _run(config: Config, options: ScrubOptions, as_json: bool) -> int:
    from app.coherence import beside_servers
    from app.lifecycle.scrub import scrub
    from app.locks import open_lock_store
    from app.storage import StorageError, open_stores

    # The lock store the servers on this store use (app/locks/): files in the data folder for an fs
    # store, Redis when configured; so a repair and a server's write of the same key exclude each other.
    locks = open_lock_store(config.blob_store, config.metadata_store)
    storage = open_stores(config.blob_store, config.metadata_store)
    interactive = sys.stderr.isatty() and not as_json

    def done(check: CheckReport) -> None:
        if not as_json:
            print(check.summary(), flush=True)

    try:
        # What a repair changes, the servers hear of as of another server's write, when they share
        # Redis (a server without it does not: docs/gc.md). A repair may empty a namespace or
        # restore one: the catalog's version moves too.
        async with beside_servers(config) as (coherence, _):
            announce = functools.partial(coherence.changed, new_namespace=True) if coherence.shared else None
            report = await scrub(storage, locks, options, describe_store(config),
                                 Bar() if interactive else None, done, announce)
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await storage.close()
        await locks.close()
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(report.summary_lines()[-1])
    return report.exit_status()


def run(config: Config, args: argparse.Namespace) -> int:
    try:
        options = options_from(args, config)
    except ValueError as exc:
        print(f"error: --uploads: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(config, options, args.json))
