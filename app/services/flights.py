"""The event-loop side of single-flight fetches: leader tasks, and the wake-ups readers wait on.

The FetchCoordinator actor decides who leads a flight and keeps its state. The leader is a task on the
event loop, detached from the request that started it (a client that gives up does not cancel the fetch
the others wait for). It reports progress to the actor with tells and then wakes the readers through a
per-flight signal kept here; a reader that wakes asks the actor for the state. One actor mailbox keeps
the order: a tell sent before the wake-up is processed before the reader's ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from app import errors
from app.actors.bridge import ActorHandle
from app.actors.fetch_coordinator import FlightError, Progress, Ticket
from app.storage import SpoolWriter

log = logging.getLogger("registry.upstream")


class _Signal:
    """Wakes every reader waiting for the next change of one flight."""

    def __init__(self) -> None:
        self.users = 0
        self._event = asyncio.Event()
        # The leader's spool while it writes (this process's readers follow it); None before and after.
        self.spool: SpoolWriter | None = None

    def next_change(self) -> asyncio.Event:
        """Take this *before* asking for the state: any change after that sets it."""
        return self._event

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()


def error_of(exc: BaseException) -> FlightError:
    if isinstance(exc, errors.RegistryError):
        return FlightError(exc.status, exc.code, exc.message, tuple(exc.headers.items()))
    if isinstance(exc, asyncio.CancelledError):
        return FlightError(503, "UNAVAILABLE", "the fetch was cancelled (server shutting down)")
    return FlightError(502, "UNAVAILABLE", f"upstream fetch failed: {type(exc).__name__}: {exc}")


def raise_error(error: FlightError | None) -> None:
    error = error or FlightError(502, "UNAVAILABLE", "upstream fetch failed")
    exc = errors.RegistryError(error.message, status=error.status, headers=dict(error.headers))
    exc.code = error.code
    raise exc


class Leader:
    """What a leader task reports; every report wakes the readers."""

    def __init__(self, flights: Flights, ticket: Ticket) -> None:
        self._flights = flights
        self.ticket = ticket
        self.ended = False

    def spooling(self, spool: SpoolWriter | None) -> None:
        """Readers of this process follow `spool` while it grows (None: it is gone)."""
        self._flights.signal(self.ticket.flight_id).spool = spool
        self._flights.notify(self.ticket.flight_id)

    def started(self, total: int | None) -> None:
        self._flights.coordinator.tell("started", self.ticket.flight_id, total)
        self._flights.notify(self.ticket.flight_id)

    def progress(self, size: int) -> None:
        self._flights.coordinator.tell("progress", self.ticket.flight_id, size)
        self._flights.notify(self.ticket.flight_id)

    def finish(self, size: int) -> None:
        self.ended = True
        self._flights.coordinator.tell("finish", self.ticket.flight_id, size)
        self._flights.notify(self.ticket.flight_id)

    def fail(self, error: FlightError) -> None:
        if self.ended:
            return
        self.ended = True
        self._flights.coordinator.tell("fail", self.ticket.flight_id, error)
        self._flights.notify(self.ticket.flight_id)


LeadFunction = Callable[[Leader], Awaitable[None]]


class Reader:
    """One client following a flight. `leave()` is idempotent."""

    def __init__(self, flights: Flights, ticket: Ticket) -> None:
        self._flights = flights
        self.ticket = ticket
        self._left = False

    def next_change(self) -> asyncio.Event:
        return self._flights.signal(self.ticket.flight_id).next_change()

    def spool(self) -> SpoolWriter | None:
        """The leader's spool, while it writes it (an object store cannot be read while written)."""
        return self._flights.signal(self.ticket.flight_id).spool

    async def status(self) -> Progress:
        progress: Progress = await self._flights.coordinator.call("status", self.ticket.flight_id)
        return progress

    async def wait_until(self, ready: Callable[[Progress], bool]) -> Progress:
        """The flight's state once `ready(state)` holds or the flight has ended."""
        while True:
            change = self.next_change()
            progress = await self.status()
            if progress.finished or ready(progress):
                return progress
            await change.wait()

    def leave(self) -> None:
        if not self._left:
            self._left = True
            self._flights.coordinator.tell("leave", self.ticket.flight_id)
            self._flights.release(self.ticket.flight_id)


class Flights:
    def __init__(self, coordinator: ActorHandle) -> None:
        self.coordinator = coordinator
        self._signals: dict[str, _Signal] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def signal(self, flight_id: str) -> _Signal:
        signal = self._signals.get(flight_id)
        if signal is None:
            signal = self._signals[flight_id] = _Signal()
        return signal

    def _acquire(self, flight_id: str) -> None:
        self.signal(flight_id).users += 1

    def release(self, flight_id: str) -> None:
        signal = self._signals.get(flight_id)
        if signal is not None:
            signal.users -= 1
            if signal.users <= 0:
                del self._signals[flight_id]

    def notify(self, flight_id: str) -> None:
        signal = self._signals.get(flight_id)
        if signal is not None:
            signal.notify()

    async def join(self, key: str, namespace: str, spool_for: Callable[[str], str],
                   lead: LeadFunction) -> Reader:
        """Follow the flight for `key`, starting it (with `lead` as a detached task) when there is none."""
        proposal = uuid.uuid4().hex
        ticket: Ticket = await self.coordinator.call("join", key, namespace, proposal, spool_for(proposal))
        self._acquire(ticket.flight_id)
        if ticket.leader:
            self._acquire(ticket.flight_id)  # the leader's own hold on the signal
            task = asyncio.create_task(self._run(Leader(self, ticket), lead), name=f"fetch {key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return Reader(self, ticket)

    async def _run(self, leader: Leader, lead: LeadFunction) -> None:
        try:
            await lead(leader)
        except asyncio.CancelledError as exc:
            leader.fail(error_of(exc))
            raise
        except Exception as exc:
            if not isinstance(exc, errors.RegistryError):
                log.exception("upstream fetch %s failed", leader.ticket.flight_id)
            leader.fail(error_of(exc))
        finally:
            if not leader.ended:  # a lead function that returned without reporting its end
                leader.fail(FlightError(500, "UNKNOWN", "the fetch ended without a result"))
            self.release(leader.ticket.flight_id)

    async def run_once(self, key: str, namespace: str, lead: LeadFunction) -> None:
        """Single flight for work without a spool (manifests): wait for the leader's end, raise its error."""
        reader = await self.join(key, namespace, lambda _: "", lead)
        try:
            progress = await reader.wait_until(lambda _: False)
        finally:
            reader.leave()
        if progress.state != "done":
            raise_error(progress.error)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
