"""How long `registry scrub` takes on a store of N blobs (not a test; numbers for docs/gc.md).

    python -m tests.bench.scrub_store --images 250 --layers 3 [--layer-size 16384] [--garbage 0]
                                      [--folder DIR] [--s3]

Builds an fs store the way pushes leave it (blobs, layer links, revisions, tags: written through the
storage driver and app/storage/layout.py, not over HTTP, so that building 10,000 blobs takes seconds),
(`--s3`: a bucket on a moto server started for the run), then runs
`python -m app -c <config> scrub --json` on it, once with `--dry-run` and once repairing,
and prints the timings per check with blobs/s and MB/s. Before that, one garbage collection
(app/lifecycle/gc.py `collect`, in this process, grace period 0) as a dry run and for real: with
`--garbage N` the store also holds N unreferenced blobs (linked in no repository) for it to delete.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.grammar import Digest
from app.services.links import write_link
from app.storage import Storage, layout
from app.storage.fs import FsStorage

REPO_ROOT = Path(__file__).resolve().parents[2]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


async def build(storage: Storage, images: int, layers: int, layer_size: int, garbage: int = 0) -> int:
    blobs = 0
    jobs = asyncio.Semaphore(32)

    async def image(i: int) -> None:
        nonlocal blobs
        namespace = f"bench/r{i % 20}"
        async with jobs:
            parts = [os.urandom(layer_size) for _ in range(layers)]
            config = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
            descriptors = []
            for data in [config, *parts]:
                digest = _digest(data)
                await storage.put(layout.blob_data(digest), data)
                await write_link(storage, layout.layer_link(namespace, digest), digest)
                descriptors.append({"digest": str(digest), "size": len(data)})
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          **descriptors[0]},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **d}
                                          for d in descriptors[1:]]}).encode()
            digest = _digest(body)
            await storage.put(layout.blob_data(digest), body)
            await write_link(storage, layout.revision_link(namespace, digest), digest)
            await write_link(storage, layout.tag_index_link(namespace, f"t{i}", digest), digest)
            await write_link(storage, layout.tag_current_link(namespace, f"t{i}"), digest)
            blobs += len(descriptors) + 1

    async def unreferenced(i: int) -> None:
        nonlocal blobs
        async with jobs:
            data = os.urandom(layer_size)
            await storage.put(layout.blob_data(_digest(data)), data)
            blobs += 1

    try:
        await asyncio.gather(*(image(i) for i in range(images)), *(unreferenced(i) for i in range(garbage)))
    finally:
        await storage.close()
    return blobs


def scrub(config: Path, *args: str) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "app", "-c", str(config), "scrub", "--json", *args],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"scrub exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return seconds, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--layer-size", type=int, default=16384)
    parser.add_argument("--garbage", type=int, default=0, help="unreferenced blobs for GC to delete")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--s3", action="store_true", help="on a moto server instead of a folder")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="scrub-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    moto = None
    if args.s3:
        from tests.helpers import stores
        from tests.helpers.moto import MotoServer

        moto = MotoServer(folder / "moto.log").start()
        spec = stores.new_s3_store(moto.endpoint)
        storage, where, section = spec.open(), f"s3://{spec.bucket}", stores.s3_section(spec)
        reopen: Callable[[], Storage] = spec.open
    else:
        root = folder / "data"
        storage, where = FsStorage(root), str(root)
        section = f'[blob_store.fs]\nroot_dir = "{root.as_posix()}"\n'
        reopen = functools.partial(FsStorage, root)
    try:
        started = time.monotonic()
        blobs = asyncio.run(build(storage, args.images, args.layers, args.layer_size, args.garbage))
        print(f"built {blobs} blobs ({args.images} images, {args.garbage} unreferenced) in "
              f"{time.monotonic() - started:.1f} s at {where}")
        for dry_run in (True, False):
            asyncio.run(_collect(reopen(), dry_run))
        config = folder / "config.toml"
        config.write_text(section)
        _measure(config)
    finally:
        if moto is not None:
            moto.stop()


async def _collect(storage: Storage, dry_run: bool) -> None:
    from app.lifecycle.gc import GCOptions, collect
    from app.locks.memory import MemoryLockStore

    locks = MemoryLockStore()
    try:
        result = await collect(storage, locks, GCOptions(grace_period=0, dry_run=dry_run))
    finally:
        await locks.close()
        await storage.close()
    print(f"gc ({'dry run' if dry_run else 'deleting'}): {result.seconds:.2f} s; "
          f"{result.blobs_examined} blobs examined "
          f"({result.blobs_examined / max(result.seconds, 1e-9):.0f}/s), "
          f"{result.manifests_examined} manifests, {result.blobs_deleted} blobs deleted "
          f"({result.bytes_reclaimed} bytes), {result.kept_on_recheck} kept on recheck")


def _measure(config: Path) -> None:
    for label, extra in (("dry run", ["--dry-run"]), ("repairing", [])):
        seconds, report = scrub(config, *extra)
        checks = report["checks"]
        assert isinstance(checks, list)
        blobs_check = next(c for c in checks if c["name"] == "blobs")
        hashed = blobs_check["bytes_hashed"]
        print(f"scrub ({label}): {seconds:.2f} s wall (process), {report['seconds']:.2f} s of checks "
              f"(listing and marking {report['listing_and_marking_seconds']:.2f} s); "
              f"blobs: {blobs_check['examined']} in {blobs_check['seconds']:.2f} s = "
              f"{blobs_check['examined'] / max(blobs_check['seconds'], 1e-9):.0f} blobs/s, "
              f"{hashed / 1e6 / max(blobs_check['seconds'], 1e-9):.0f} MB/s; "
              + ", ".join(f"{c['name']} {c['examined']} in {c['seconds']:.2f} s" for c in checks))


if __name__ == "__main__":
    main()
