"""One suite for every lock store (app/locks/): in-process, OS file locks and Redis (a real
`redis-server`). Each test takes two store objects that must coordinate: two faces of one LockActor,
two file stores on one folder (so exclusion comes from the OS locks, not the in-process layer), two
Redis stores with clients of their own (two replicas)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.actors.bridge import ActorHandle
from app.actors.locks import LockActor
from app.config import FsStoreConfig, RedisLockConfig, S3StoreConfig, StoreConfig
from app.locks import (
    Lease,
    LockLost,
    LockStore,
    LockStoreUnavailable,
    LockTimeout,
    MemoryLockStore,
    lock_store_kind,
    open_lock_store,
)
from app.locks.files import FileLockStore
from app.locks.redis import RedisLockStore
from app.storage import StorageError
from tests.helpers.redis_server import RedisServer

KINDS = ["memory", "file", "redis"]


def redis_config(server: RedisServer, **overrides: Any) -> RedisLockConfig:
    values: dict[str, Any] = {"url": server.url, "ttl": 1.0, "key_prefix": "test:", "timeout": 0.5,
                              "retry_delay_ms": 5, **overrides}
    return RedisLockConfig(**values)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


class Pair:
    """Two lock-store objects that share one lock space, and the means to tamper with it."""

    def __init__(self, kind: str, first: LockStore, second: LockStore, actor: ActorHandle | None = None,
                 redis: RedisServer | None = None) -> None:
        self.kind, self.first, self.second, self.actor, self.redis = kind, first, second, actor, redis

    async def release_with(self, name: str, token: str) -> None:
        """What a holder that is not the owner (a stale token) can do: ask the store to release."""
        if isinstance(self.first, RedisLockStore):
            await self.first._release(Lease(name, token))
        else:
            actor = self.actor if self.actor is not None else self.first._inner.actor  # type: ignore[attr-defined]
            assert await actor.call("release", name, token) is False


@pytest.fixture(params=KINDS)
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    kind = request.param
    if kind == "memory":
        actor = ActorHandle(LockActor.start())
        made = Pair(kind, MemoryLockStore(actor), MemoryLockStore(actor), actor=actor)
    elif kind == "file":
        made = Pair(kind, FileLockStore(tmp_path / "data"), FileLockStore(tmp_path / "data"))
    else:
        server = request.getfixturevalue("redis_server")
        made = Pair(kind, RedisLockStore(redis_config(server)), RedisLockStore(redis_config(server)),
                    redis=server)
    try:
        yield made
    finally:
        await made.first.close()
        await made.second.close()
        if made.actor is not None:
            made.actor.stop()


async def can_hold(store: LockStore, name: str, *, shared: bool = False, wait: float = 0.15) -> bool:
    try:
        async with store.hold(name, wait=wait, shared=shared):
            return True
    except LockTimeout:
        return False


async def test_exclusive_excludes(pair: Pair) -> None:
    async with pair.first.hold("blob:x") as lease:
        assert not lease.shared and lease.token
        assert not await can_hold(pair.second, "blob:x")
        assert not await can_hold(pair.second, "blob:x", shared=True)
        lease.check()
    assert await can_hold(pair.second, "blob:x")

    inside = 0
    seen: list[int] = []

    async def worker(i: int) -> None:
        nonlocal inside
        async with (pair.first if i % 2 else pair.second).hold("blob:y", wait=20):
            inside += 1
            seen.append(inside)
            await asyncio.sleep(0.005)
            inside -= 1

    await asyncio.gather(*(worker(i) for i in range(8)))
    assert seen == [1] * 8


async def test_shared_holders_coexist(pair: Pair) -> None:
    async with contextlib.AsyncExitStack() as stack:
        leases = [await stack.enter_async_context(store.hold("gc", shared=True, wait=2))
                  for store in (pair.first, pair.second, pair.first, pair.second)]
        assert all(lease.shared for lease in leases)
        assert len({lease.token for lease in leases}) == 4
        assert not await can_hold(pair.second, "gc")  # exclusive: not while shared holders hold


async def test_exclusive_waits_for_the_shared_holders(pair: Pair) -> None:
    got_it = asyncio.Event()

    async def writer() -> None:
        async with pair.second.hold("gc", wait=10):
            got_it.set()

    async with pair.first.hold("gc", shared=True):
        task = asyncio.ensure_future(writer())
        await asyncio.sleep(0.3)
        assert not got_it.is_set()
    await asyncio.wait_for(task, 10)
    assert got_it.is_set()


async def test_a_stream_of_shared_holders_does_not_starve_an_exclusive_waiter(pair: Pair) -> None:
    """Three readers that hold in turns which always overlap: without writer preference (or FIFO)
    the lock is never free of shared holders and the exclusive waiter times out."""
    stop = asyncio.Event()
    readers_inside = 0
    overlap_seen = False

    async def reader(i: int) -> None:
        nonlocal readers_inside, overlap_seen
        await asyncio.sleep(0.02 * i)
        while not stop.is_set():
            async with pair.first.hold("gc", shared=True, wait=30):
                readers_inside += 1
                overlap_seen = overlap_seen or readers_inside > 1
                await asyncio.sleep(0.06)
                readers_inside -= 1

    readers = [asyncio.ensure_future(reader(i)) for i in range(3)]
    try:
        await asyncio.sleep(0.2)
        assert overlap_seen
        async with pair.second.hold("gc", wait=10):
            assert readers_inside == 0
            await asyncio.sleep(0.05)
            assert readers_inside == 0
        assert all(not task.done() for task in readers)  # the readers were still streaming
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*readers), 30)


async def test_wait_elapses_with_lock_timeout(pair: Pair) -> None:
    async with pair.first.hold("tag:ns:v1"):
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            async with pair.second.hold("tag:ns:v1", wait=0.3):
                pytest.fail("granted while held")
        assert time.monotonic() - started >= 0.25
    assert issubclass(LockTimeout, TimeoutError)  # what `Locks.hold` callers already catch
    assert await can_hold(pair.second, "tag:ns:v1")  # the waiter that gave up left nothing behind


async def test_only_the_owner_releases(pair: Pair) -> None:
    async with pair.first.hold("manifest:ns:d") as lease:
        await pair.release_with("manifest:ns:d", "a-stale-token")
        assert not await can_hold(pair.second, "manifest:ns:d")
        lease.check()
    async with pair.first.hold("gc", shared=True):
        await pair.release_with("gc", "a-stale-token")
        assert not await can_hold(pair.second, "gc")
    assert await can_hold(pair.second, "manifest:ns:d") and await can_hold(pair.second, "gc")


async def test_names_are_independent(pair: Pair) -> None:
    async with pair.first.hold("tag:ns:a"), pair.first.hold("blob:z", shared=True):
        assert await can_hold(pair.second, "tag:ns:b")
        assert await can_hold(pair.second, "tag:other:a")
        assert await can_hold(pair.second, "blob:z", shared=True)


async def test_a_lease_held_for_several_ttl_stays_held(pair: Pair) -> None:
    for shared in (False, True):
        async with pair.first.hold("upload:u1", ttl=0.3, shared=shared) as lease:
            # Four times the ttl (renewed every 0.1 s); in-process and file locks do not expire.
            await asyncio.sleep(1.2 if pair.redis is not None else 0.05)
            lease.check()
            assert not lease.lost.is_set()
            assert not await can_hold(pair.second, "upload:u1", wait=0.05)
            if pair.redis is not None:
                lock, readers, _ = pair.first.keys("upload:u1")  # type: ignore[attr-defined]
                if shared:
                    assert pair.redis.cli("ZSCORE", readers, lease.token) is not None
                else:
                    assert pair.redis.cli("GET", lock) == lease.token
        assert await can_hold(pair.second, "upload:u1")


async def test_a_cancelled_waiter_leaves_nothing_behind(pair: Pair) -> None:
    async with pair.first.hold("blob:c"):
        waiter = asyncio.ensure_future(can_hold(pair.second, "blob:c", wait=10))
        await asyncio.sleep(0.1)
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    assert await can_hold(pair.second, "blob:c")
    assert await can_hold(pair.second, "blob:c", shared=True)


async def test_the_lock_actor_grants_in_arrival_order_shared_waiters_together() -> None:
    actor = ActorHandle(LockActor.start())
    try:
        assert await actor.call("acquire", "n", "x1") is None
        s1, s2 = [await actor.call("acquire", "n", t, True) for t in ("s1", "s2")]
        x2 = await actor.call("acquire", "n", "x2")
        s3 = await actor.call("acquire", "n", "s3", True)  # arrived after x2: waits behind it
        assert await actor.call("release", "n", "x1") is True
        assert s1.result(1) and s2.result(1)
        assert not x2.done() and not s3.done()
        assert await actor.call("holders", "n") == ["s1", "s2"]
        assert await actor.call("release", "n", "s1") and await actor.call("release", "n", "s2")
        assert x2.result(1) and not s3.done()
        assert await actor.call("owner", "n") == "x2"
        assert await actor.call("release", "n", "x2")
        assert s3.result(1)
        assert await actor.call("release", "n", "s3")
        assert await actor.call("holders", "n") == []
    finally:
        actor.stop()


# --- Redis only: lost leases and outages ----------------------------------------------------------

async def test_redis_lease_is_lost_when_its_key_is_deleted(redis_server: RedisServer) -> None:
    store = RedisLockStore(redis_config(redis_server, ttl=0.6))
    try:
        async with store.hold("tag:ns:v1") as lease:
            lease.check()
            redis_server.cli("DEL", store.keys("tag:ns:v1")[0])
            assert issubclass(LockLost, StorageError)  # an abandoned write answers 503
            await asyncio.wait_for(lease.lost.wait(), 3)
            with pytest.raises(LockLost):
                lease.check()
    finally:
        await store.close()


async def test_redis_lease_is_lost_when_another_owner_took_it(redis_server: RedisServer) -> None:
    store = RedisLockStore(redis_config(redis_server, ttl=0.6))
    try:
        async with store.hold("tag:ns:v1") as lease:
            key = store.keys("tag:ns:v1")[0]
            redis_server.cli("SET", key, "someone-else", "PX", "60000")
            await asyncio.wait_for(lease.lost.wait(), 3)
            with pytest.raises(LockLost):
                lease.check()
        # The lost lease's release did not delete the new owner's key (compare-and-delete).
        assert redis_server.cli("GET", key) == "someone-else"
    finally:
        await store.close()


async def test_redis_lease_is_lost_when_renewal_cannot_run_before_ttl(redis_server: RedisServer) -> None:
    store = RedisLockStore(redis_config(redis_server, ttl=0.6))
    try:
        for shared in (False, True):
            async with store.hold("gc", shared=shared) as lease:
                redis_server.cli("CLIENT", "PAUSE", "1500", "ALL")  # renewals hang beyond the ttl
                await asyncio.wait_for(lease.lost.wait(), 5)
                with pytest.raises(LockLost):
                    lease.check()
            await asyncio.sleep(1.0)  # the pause ends
    finally:
        await store.close()


async def test_redis_outage_answers_unavailable_fast_and_recovers(redis_server: RedisServer) -> None:
    store = RedisLockStore(redis_config(redis_server))
    try:
        assert await can_hold(store, "blob:x")
        redis_server.stop()
        for shared in (False, True):
            started = time.monotonic()
            with pytest.raises(LockStoreUnavailable):
                async with store.hold("blob:x", shared=shared, wait=30):
                    pytest.fail("granted with Redis down")
            assert time.monotonic() - started < 3
        assert issubclass(LockStoreUnavailable, StorageError)  # the error middleware answers 503

        redis_server.start()  # same port, empty
        assert await can_hold(store, "blob:x")
        assert await can_hold(store, "blob:x", shared=True)
        async with store.hold("blob:x"):
            assert not await can_hold(store, "blob:x")
    finally:
        await store.close()


async def test_a_hanging_redis_answers_unavailable_fast_too(redis_server: RedisServer) -> None:
    """Not refused but silent (a stopped process, a dropped network): the client's timeouts end it."""
    store = RedisLockStore(redis_config(redis_server))
    assert redis_server.process is not None
    try:
        assert await can_hold(store, "blob:x")
        redis_server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(LockStoreUnavailable):
                async with store.hold("blob:x", wait=30):
                    pytest.fail("granted with Redis hanging")
            assert time.monotonic() - started < 3
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        assert await can_hold(store, "blob:x", wait=5)
    finally:
        await store.close()


async def test_a_lease_held_through_an_outage_is_lost(redis_server: RedisServer) -> None:
    store = RedisLockStore(redis_config(redis_server, ttl=0.6))
    try:
        async with store.hold("upload:u1") as lease:
            redis_server.stop()
            await asyncio.wait_for(lease.lost.wait(), 5)
            with pytest.raises(LockLost):
                lease.check()
    finally:
        await store.close()


# --- several processes ----------------------------------------------------------------------------

_HOLDER = """
import asyncio, sys
from app.config import RedisLockConfig
from app.locks.files import FileLockStore
from app.locks.redis import RedisLockStore

async def main():
    files = FileLockStore(sys.argv[1])
    redis = RedisLockStore(RedisLockConfig(url=sys.argv[2], ttl=float(sys.argv[3]), key_prefix="test:"))
    async with files.hold("blob:x"), files.hold("gc", shared=True), redis.hold("blob:x"):
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
def holder_process(tmp_path: Path, redis_server: RedisServer) -> Iterator[subprocess.Popen[str]]:
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "data"), redis_server.url, "2"],
                               stdout=subprocess.PIPE, text=True, cwd=root)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


async def test_a_killed_process_holds_no_file_lock_and_its_redis_lock_expires(
        tmp_path: Path, redis_server: RedisServer, holder_process: subprocess.Popen[str]) -> None:
    files = FileLockStore(tmp_path / "data")
    redis = RedisLockStore(redis_config(redis_server, ttl=2.0))
    try:
        assert not await can_hold(files, "blob:x")
        assert not await can_hold(files, "gc")
        assert await can_hold(files, "gc", shared=True)
        assert not await can_hold(redis, "blob:x")

        os.kill(holder_process.pid, signal.SIGKILL)
        holder_process.wait(10)
        killed = time.monotonic()
        assert await can_hold(files, "blob:x", wait=0.5)  # released by the OS with the process
        assert await can_hold(files, "gc", wait=0.5)
        assert not await can_hold(redis, "blob:x", wait=0.05)  # still there until its ttl runs out
        async with redis.hold("blob:x", wait=10):
            expired_after = time.monotonic() - killed
        assert 0.1 < expired_after < 4.0
    finally:
        await files.close()
        await redis.close()


# --- the file store's files, the factory ----------------------------------------------------------

async def test_lock_files_live_beside_the_layout_and_do_not_pile_up(tmp_path: Path) -> None:
    store = FileLockStore(tmp_path / "data")
    try:
        name = "manifest:" + "a/" * 200 + ":sha256:" + "0" * 64  # long, with unsafe characters
        async with store.hold(name):
            lock_path, _ = store.paths(name)
            assert os.path.dirname(lock_path) == str(tmp_path / "data" / "locks")
            assert len(os.path.basename(lock_path)) < 120
            assert await asyncio.to_thread(os.path.exists, lock_path)
        for i in range(20):
            async with store.hold(f"blob:{i}"):
                pass
    finally:
        await store.close()  # after the releases queued on the store's thread
    if sys.platform != "win32":
        assert os.listdir(tmp_path / "data" / "locks") == []


@pytest.mark.skipif(sys.platform == "win32", reason="lock files are not unlinked on Windows")
async def test_a_lock_won_on_an_unlinked_lock_file_does_not_count(tmp_path: Path) -> None:
    """Another process opened the lock file while we held it; we unlink it on release, so its lock
    on the old file must not count, or it and a newcomer on the new file would both hold the lock."""
    import fcntl

    from app.locks.files import _lock_path, _still_linked

    first, newcomer = FileLockStore(tmp_path / "data"), FileLockStore(tmp_path / "data")
    try:
        async with first.hold("tag:ns:v1"):
            lock_path, _ = first.paths("tag:ns:v1")
            stale = os.open(lock_path, os.O_RDWR)
        await first.close()  # the release (unlink, then unlock) has run
        try:
            async with newcomer.hold("tag:ns:v1", wait=0.5):  # on a new file at the same path
                fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old file is free to lock...
                assert not _still_linked(stale, lock_path)  # ...and is not the lock any more
                assert _lock_path(lock_path, shared=False) is None  # the path's file is held
        finally:
            os.close(stale)
    finally:
        await newcomer.close()


def _stores(tmp_path: Path, redis: str | None = None, s3: bool = False) -> StoreConfig:
    lock = {"redis": RedisLockConfig(url=redis)} if redis else {}
    if s3:
        return StoreConfig(s3=S3StoreConfig(access_key_id="a", secret_key="b", bucket="c", **lock))
    return StoreConfig(fs=FsStoreConfig(root_dir=tmp_path, **lock))


async def test_open_lock_store_picks_by_configuration(tmp_path: Path, redis_server: RedisServer) -> None:
    assert lock_store_kind(_stores(tmp_path)) == "files"
    assert lock_store_kind(_stores(tmp_path, s3=True)) == "memory"
    assert lock_store_kind(_stores(tmp_path, s3=True), _stores(tmp_path, redis=redis_server.url)) == "redis"
    assert lock_store_kind(_stores(tmp_path, redis=redis_server.url, s3=True)) == "redis"
    for blobs, metadata, kind in [(_stores(tmp_path), None, FileLockStore),
                                  (_stores(tmp_path, s3=True), None, MemoryLockStore),
                                  (_stores(tmp_path, redis=redis_server.url), None, RedisLockStore)]:
        store = open_lock_store(blobs, metadata)
        try:
            assert isinstance(store, kind)
            async with store.hold("blob:x") as lease:
                lease.check()
        finally:
            await store.close()


def test_a_store_without_redis_does_not_load_it(tmp_path: Path) -> None:
    probe = ("import asyncio, sys\nfrom pathlib import Path\n"
             "from app.config import FsStoreConfig, StoreConfig\nfrom app.locks import open_lock_store\n"
             "async def main():\n"
             "    store = open_lock_store(StoreConfig(fs=FsStoreConfig(root_dir=Path(sys.argv[1]))))\n"
             "    async with store.hold('x'):\n        pass\n    await store.close()\n"
             "asyncio.run(main())\nprint('redis' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True,
                            timeout=60, check=True, cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip().splitlines()[-1] == "False"
