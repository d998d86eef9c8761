"""FetchCoordinator: one leader per key, followers share its flight, state outlives the key until the
last reader leaves; the loop side (Flights) runs leaders detached and wakes readers on every change."""

from __future__ import annotations

import asyncio

import pytest

from app import errors
from app.actors.bridge import ActorHandle
from app.actors.fetch_coordinator import DONE, FAILED, STARTING, STREAMING, FetchCoordinator, FlightError
from app.services.flights import Flights, Leader


@pytest.fixture
def coordinator() -> ActorHandle:
    return ActorHandle(FetchCoordinator.start())


async def test_one_leader_per_key_and_followers_share_the_flight(coordinator: ActorHandle) -> None:
    first = await coordinator.call("join", "blob:a", "ns/one", "f1", "spool-1")
    second = await coordinator.call("join", "blob:a", "ns/two", "f2", "spool-2")
    other = await coordinator.call("join", "blob:b", "ns/one", "f3", "spool-3")
    assert (first.leader, first.flight_id, first.spool) == (True, "f1", "spool-1")
    assert (second.leader, second.flight_id, second.spool) == (False, "f1", "spool-1")
    assert second.namespace == "ns/one"  # the namespace that started the flight
    assert other.leader and other.flight_id == "f3"
    assert await coordinator.call("active") == {"blob:a": STARTING, "blob:b": STARTING}

    coordinator.tell("started", "f1", 100)
    coordinator.tell("progress", "f1", 40)
    progress = await coordinator.call("status", "f1")
    assert (progress.state, progress.size, progress.total, progress.finished) == (STREAMING, 40, 100, False)
    coordinator.tell("finish", "f1", 100)
    assert (await coordinator.call("status", "f1")).state == DONE
    # Done: the key is free again (the next request finds the blob in storage) ...
    assert "blob:a" not in await coordinator.call("active")
    again = await coordinator.call("join", "blob:a", "ns/one", "f4", "spool-4")
    assert again.leader and again.flight_id == "f4"
    # ... but the record stays while readers still ask for it.
    assert (await coordinator.call("status", "f1")).state == DONE
    coordinator.tell("leave", "f1")
    coordinator.tell("leave", "f1")
    assert (await coordinator.call("status", "f1")).error is not None  # forgotten


async def test_failures_carry_the_error_and_late_reports_are_ignored(coordinator: ActorHandle) -> None:
    await coordinator.call("join", "blob:a", "ns", "f1", "spool")
    coordinator.tell("fail", "f1", FlightError(502, "UNAVAILABLE", "upstream down"))
    coordinator.tell("progress", "f1", 10)
    coordinator.tell("finish", "f1", 10)
    progress = await coordinator.call("status", "f1")
    assert progress.state == FAILED and progress.error == FlightError(502, "UNAVAILABLE", "upstream down")
    coordinator.tell("leave", "f1")
    assert await coordinator.call("known") == 0


async def test_flights_run_one_leader_and_wake_every_reader(coordinator: ActorHandle) -> None:
    flights = Flights(coordinator)
    runs = 0
    release = asyncio.Event()

    async def lead(leader: Leader) -> None:
        nonlocal runs
        runs += 1
        leader.started(3)
        for size in (1, 2, 3):
            await release.wait()
            leader.progress(size)
        leader.finish(3)

    readers = [await flights.join("blob:x", "ns", lambda fid: f"spool-{fid}", lead) for _ in range(5)]
    assert [r.ticket.leader for r in readers] == [True, False, False, False, False]
    seen = await asyncio.gather(*(r.wait_until(lambda p: p.state == STREAMING) for r in readers))
    assert all(p.total == 3 for p in seen)
    release.set()
    done = await asyncio.gather(*(r.wait_until(lambda p: False) for r in readers))
    assert runs == 1 and all(p.state == DONE and p.size == 3 for p in done)
    for reader in readers:
        reader.leave()
        reader.leave()  # idempotent
    await asyncio.sleep(0.05)
    assert await coordinator.call("known") == 0
    await flights.close()


async def test_run_once_raises_the_leaders_error_to_every_caller(coordinator: ActorHandle) -> None:
    flights = Flights(coordinator)
    calls = 0

    async def lead(leader: Leader) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise errors.ManifestUnknown("unknown upstream")

    results = await asyncio.gather(*(flights.run_once("manifest:x", "ns", lead) for _ in range(4)),
                                   return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, errors.RegistryError) and r.status == 404 and r.code == "MANIFEST_UNKNOWN"
               for r in results)
    # A failed flight frees its key: the next caller starts a new one.
    with pytest.raises(errors.RegistryError):
        await flights.run_once("manifest:x", "ns", lead)
    assert calls == 2
    await flights.close()


async def test_a_cancelled_leader_fails_its_flight(coordinator: ActorHandle) -> None:
    flights = Flights(coordinator)

    async def lead(leader: Leader) -> None:
        leader.started(None)
        await asyncio.sleep(3600)

    reader = await flights.join("blob:y", "ns", lambda fid: "spool", lead)
    await reader.wait_until(lambda p: p.state == STREAMING)
    await flights.close()  # server shutdown
    progress = await reader.wait_until(lambda p: False)
    assert progress.state == FAILED and progress.error is not None and progress.error.status == 503
    reader.leave()
