"""Actors and the asyncio bridge: asks never block the loop; locks, uploads and the index keep state."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pykka
import pytest

from app import errors
from app.actors.bridge import ActorHandle, AsyncActor, ask
from app.actors.locks import LockActor, Locks
from app.actors.manifest_index import ManifestIndexActor, page
from app.actors.uploads import UploadActor, UploadBusy, UploadLimits


class Sleeper(AsyncActor):
    def slow(self, value: int) -> int:
        time.sleep(0.2)
        return value * 2

    def fail(self) -> None:
        raise ValueError("boom")


async def test_ask_does_not_block_the_loop() -> None:
    ref = Sleeper.start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    results = await asyncio.gather(*(ask(ref, "slow", i) for i in range(5)))
    task.cancel()
    assert results == [0, 2, 4, 6, 8]
    # Five 0.2 s asks run in sequence on the actor (~1 s) while the loop keeps ticking every 10 ms.
    assert ticks >= 50


async def test_exceptions_and_dead_actors_reach_the_caller() -> None:
    ref = Sleeper.start()
    with pytest.raises(ValueError, match="boom"):
        await ask(ref, "fail")
    ref.stop()
    with pytest.raises(pykka.ActorDeadError):
        await asyncio.wait_for(ask(ref, "slow", 1), 2)


async def test_locks_are_exclusive_and_fifo() -> None:
    locks = Locks(ActorHandle(LockActor.start()))
    order: list[int] = []
    inside = 0

    async def worker(i: int) -> None:
        nonlocal inside
        async with locks.hold("blob:x"):
            inside += 1
            assert inside == 1
            order.append(i)
            await asyncio.sleep(0.005)
            inside -= 1

    await asyncio.gather(*(worker(i) for i in range(10)))
    assert sorted(order) == list(range(10))


async def test_lock_released_only_by_owner_and_after_timeout() -> None:
    handle = ActorHandle(LockActor.start())
    locks = Locks(handle)
    async with locks.hold("name") as token:
        assert await handle.call("release", "name", "someone-else") is False
        assert await handle.call("owner", "name") == token
        with pytest.raises(TimeoutError):
            async with locks.hold("name", wait=0.05):
                pass
    await asyncio.sleep(0.05)
    assert await handle.call("owner", "name") is None
    async with locks.hold("name", wait=1):  # the abandoned waiter was never granted
        pass


async def test_upload_actor_leases_are_exclusive() -> None:
    uploads = ActorHandle(UploadActor.start())
    await uploads.call("create", "ns", "u1", time.time())
    lease = await uploads.call("lease", "ns", "u1")
    assert lease.size == 0
    with pytest.raises(UploadBusy):
        await uploads.call("lease", "ns", "u1")
    with pytest.raises(errors.BlobUploadUnknown):
        await uploads.call("lease", "other", "u1")
    lease.hasher.update(b"abc")
    uploads.tell("release", "u1", 3, lease.hasher)
    again = await uploads.call("lease", "ns", "u1")
    assert again.size == 3 and again.hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    assert await uploads.call("lease", "ns", "unknown") is None
    assert await uploads.call("status", "ns", "u1") == 3
    uploads.tell("forget", "u1")
    assert await uploads.call("status", "ns", "u1") is None


async def test_manifest_index_tags_and_generation() -> None:
    index = ActorHandle(ManifestIndexActor.start())
    assert await index.call("list_tags", "ns", None, None) is None
    generation = await index.call("generation", "ns")
    index.tell("set_tag", "ns", "b", "sha256:1")  # a push races with a listing
    assert await index.call("load_tags", "ns", {"a": "sha256:0"}, generation) is False
    generation = await index.call("generation", "ns")
    assert await index.call("load_tags", "ns", {"a": "sha256:0", "b": "sha256:1"}, generation) is True
    index.tell("set_tag", "ns", "c", "sha256:1")
    assert await index.call("list_tags", "ns", None, None) == (["a", "b", "c"], False)
    assert await index.call("list_tags", "ns", 1, "a") == (["b"], True)
    index.tell("drop_revision", "ns", "sha256:1")
    assert await index.call("list_tags", "ns", None, None) == (["a"], False)
    assert await index.call("resolve", "ns", "b") is None


async def test_manifest_index_body_cache_is_bounded() -> None:
    index = ActorHandle(ManifestIndexActor.start())
    big = b"x" * (3 * 1024 * 1024)
    for i in range(40):
        index.tell("keep_body", f"sha256:{i}", big)
    assert await index.call("body", "sha256:39") == big
    assert await index.call("body", "sha256:0") is None


def test_page() -> None:
    items = ["a", "b", "c", "d"]
    assert page(items, None, None) == (items, False)
    assert page(items, 2, None) == (["a", "b"], True)
    assert page(items, 2, "b") == (["c", "d"], False)
    assert page(items, 10, "bb") == (["c", "d"], False)
    assert page(items, 0, None) == ([], True)


async def test_manifest_index_push_times() -> None:
    index = ActorHandle(ManifestIndexActor.start())
    index.tell("set_tag", "ns", "read-from-storage", "sha256:1")
    assert await index.call("pushed_at", "ns", "read-from-storage") is None
    index.tell("set_tag", "ns", "pushed", "sha256:1", 1234.5)
    assert await index.call("pushed_at", "ns", "pushed") == 1234.5
    index.tell("remember_pushed_at", "ns", "pushed", 1.0)  # never overrides a known push time
    assert await index.call("pushed_at", "ns", "pushed") == 1234.5
    index.tell("delete_tag", "ns", "pushed")
    assert await index.call("pushed_at", "ns", "pushed") is None


async def test_manifest_index_keeps_nothing_for_unknown_names_and_digests() -> None:
    index = ActorHandle(ManifestIndexActor.start())
    for i in range(100):
        generation = await index.call("generation", f"unknown{i}")
        assert await index.call("load_tags", f"unknown{i}", {}, generation) is False
        assert await index.call("load_referrers", "ns", f"sha256:{i}", [], generation) is False
        assert await index.call("list_tags", f"unknown{i}", None, None) is None
    assert await index.call("cached_namespaces") == 0


async def test_manifest_index_drops_least_recently_used_namespaces() -> None:
    index = ActorHandle(ManifestIndexActor.start(2))
    for name in ("a", "b"):
        index.tell("set_tag", name, "v1", f"sha256:{name}")
    assert await index.call("resolve", "a", "v1") == "sha256:a"  # a is now the most recent
    index.tell("set_tag", "c", "v1", "sha256:c")  # drops b
    assert await index.call("cached_namespaces") == 2
    assert await index.call("resolve", "b", "v1") is None
    assert await index.call("resolve", "a", "v1") == "sha256:a"
    index.tell("configure", 1)
    assert await index.call("cached_namespaces") == 1


async def test_manifest_index_fill_read_before_a_change_is_dropped_even_after_eviction() -> None:
    index = ActorHandle(ManifestIndexActor.start(1))
    before = await index.call("generation", "a")  # a listing of `a` starts reading storage
    index.tell("set_tag", "a", "new", "sha256:1")  # a push lands meanwhile
    index.tell("set_tag", "b", "v1", "sha256:2")  # and `a` is dropped from the cache
    assert await index.call("cached_namespaces") == 1
    assert await index.call("load_tags", "a", {"old": "sha256:0"}, before) is False
    assert await index.call("fill_tag", "a", "old", "sha256:0", before) is False
    descriptor = {"digest": "sha256:3"}
    assert await index.call("load_referrers", "a", "sha256:9", [descriptor], before) is False
    after = await index.call("generation", "a")  # read after the change: applies
    assert await index.call("load_tags", "a", {"new": "sha256:1"}, after) is True
    assert await index.call("list_tags", "a", None, None) == (["new"], False)


async def test_upload_actor_caps_sessions_in_all_and_per_client() -> None:
    uploads = ActorHandle(UploadActor.start(UploadLimits(max_sessions=3, max_per_client=2)))
    await uploads.call("create", "ns", "a1", time.time(), "alice")
    await uploads.call("create", "ns", "a2", time.time(), "alice")
    with pytest.raises(errors.RegistryError) as refused:
        await uploads.call("create", "ns", "a3", time.time(), "alice")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"]
    await uploads.call("create", "ns", "b1", time.time(), "bob")
    with pytest.raises(errors.RegistryError, match="max_upload_sessions"):
        await uploads.call("create", "ns", "c1", time.time(), "carol")
    uploads.tell("forget", "a1")
    await uploads.call("create", "ns", "a3", time.time(), "alice")
    assert await uploads.call("count") == 3


async def test_upload_actor_expires_idle_sessions_but_not_leased_ones() -> None:
    uploads = ActorHandle(UploadActor.start(UploadLimits(timeout=0.2, max_sessions=2)))
    await uploads.call("create", "ns", "idle", time.time(), "alice")
    await uploads.call("create", "ns", "busy", time.time(), "alice")
    await uploads.call("lease", "ns", "busy")
    await asyncio.sleep(0.3)
    assert await uploads.call("expire_idle", 100) == [("ns", "idle")]
    for method in ("lease", "status"):  # refused while its folder is being removed
        with pytest.raises(errors.BlobUploadUnknown):
            await uploads.call(method, "ns", "idle")
    assert await uploads.call("holds", "idle") is True
    uploads.tell("expired", ["idle"])
    assert await uploads.call("holds", "idle") is False
    assert await uploads.call("lease", "ns", "idle") is None  # now looked up in storage
    await uploads.call("create", "ns", "new", time.time(), "alice")  # its slot is free
