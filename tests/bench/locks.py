"""The cost of one uncontended hold/release per lock store (app/locks/), in µs; not a test.

    python -m tests.bench.locks [--iterations N] [--folder PATH]

Each store holds and releases distinct-free names one after another on one event loop (the median of
five rounds of N). The file store's folder is a temporary one (on /tmp) unless --folder names one on
the disk to measure; Redis is a `redis-server` started on loopback for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from app.config import RedisLockConfig
from app.locks import LockStore, MemoryLockStore
from app.locks.files import FileLockStore
from app.locks.redis import RedisLockStore
from tests.helpers.redis_server import RedisServer


async def _per_hold_us(store: LockStore, iterations: int, shared: bool) -> float:
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for i in range(iterations):
            async with store.hold(f"blob:{i % 64}", shared=shared):
                pass
        rounds.append((time.perf_counter() - started) / iterations * 1e6)
    return statistics.median(rounds)


async def _asyncio_reference_us(iterations: int) -> float:
    """An asyncio-only table (one asyncio.Lock per name): what the actor round trip costs extra."""
    locks: dict[str, asyncio.Lock] = {}
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for i in range(iterations):
            async with locks.setdefault(f"blob:{i % 64}", asyncio.Lock()):
                pass
        rounds.append((time.perf_counter() - started) / iterations * 1e6)
    return statistics.median(rounds)


async def main(iterations: int, folder: Path | None) -> None:
    print(f"{'asyncio.Lock (ref.)':20s} exclusive {await _asyncio_reference_us(iterations):7.1f} µs")
    with tempfile.TemporaryDirectory(prefix="lock-bench-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        stores: dict[str, LockStore] = {
            "memory (LockActor)": MemoryLockStore(),
            "file (flock)": FileLockStore(folder or Path(tmp) / "data"),
            "redis (loopback)": RedisLockStore(RedisLockConfig(url=redis.url, key_prefix="bench:")),
        }
        try:
            for label, store in stores.items():
                await _per_hold_us(store, 100, False)  # warm up: threads, connections, scripts
                exclusive = await _per_hold_us(store, iterations, False)
                shared = await _per_hold_us(store, iterations, True)
                print(f"{label:20s} exclusive {exclusive:7.1f} µs   shared {shared:7.1f} µs per hold/release")
        finally:
            for store in stores.values():
                await store.close()
            redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(main(args.iterations, args.folder))
