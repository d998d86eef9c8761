"""FetchCoordinator: one flight per upstream digest (or manifest reference), whatever the number of clients.

The actor only decides and remembers: who leads a flight, where its spool object is, how many bytes are
safely spooled so far, whether it is done or failed and why. Bytes never pass through here: the leader
(a task on the event loop) writes the upstream body to the spool and reports its size; readers read the
spool object up to that size, woken by a loop-side signal (app/services/flights.py).

A flight leaves the table of active keys as soon as it is done or failed, so the next request for the
key starts afresh (a failed fetch is retried by the next client; a finished one is found in storage).
Its record lives on until its last reader has left, because readers still ask for its final state.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.actors.bridge import AsyncActor

STARTING, STREAMING, DONE, FAILED = "starting", "streaming", "done", "failed"


@dataclass(frozen=True)
class FlightError:
    """Why a flight failed, as an OCI error to answer (before the first byte) or a reason to abort."""

    status: int
    code: str
    message: str
    # Headers the answer carries (an upstream's rate limit passes its `Retry-After` on to the client).
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Ticket:
    flight_id: str
    leader: bool
    namespace: str  # the namespace of the request that started the flight
    spool: str  # the storage key the leader writes to


@dataclass(frozen=True)
class Progress:
    state: str
    size: int  # bytes safely in the spool (or, once done, the committed blob)
    total: int | None  # the upstream's Content-Length, once known
    error: FlightError | None = None

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED)


@dataclass
class Flight:
    flight_id: str
    key: str
    namespace: str
    spool: str
    state: str = STARTING
    size: int = 0
    total: int | None = None
    error: FlightError | None = None
    readers: int = 0


class FetchCoordinator(AsyncActor):
    def __init__(self) -> None:
        super().__init__()
        self._active: dict[str, str] = {}  # key -> flight id
        self._flights: dict[str, Flight] = {}  # flight id -> flight

    def join(self, key: str, namespace: str, flight_id: str, spool: str, reader: bool = True) -> Ticket:
        """Join the active flight for `key`, or start one (the caller then leads it with its proposal)."""
        active = self._active.get(key)
        if active is not None:
            flight = self._flights[active]
            flight.readers += int(reader)
            return Ticket(flight.flight_id, False, flight.namespace, flight.spool)
        flight = Flight(flight_id, key, namespace, spool, readers=int(reader))
        self._active[key] = flight_id
        self._flights[flight_id] = flight
        return Ticket(flight_id, True, namespace, spool)

    def started(self, flight_id: str, total: int | None) -> None:
        flight = self._flights.get(flight_id)
        if flight is not None and flight.state == STARTING:
            flight.state = STREAMING
            flight.total = total

    def progress(self, flight_id: str, size: int) -> None:
        flight = self._flights.get(flight_id)
        if flight is not None and not self._finished(flight):
            flight.size = size

    def finish(self, flight_id: str, size: int) -> None:
        flight = self._flights.get(flight_id)
        if flight is None or self._finished(flight):
            return
        flight.state, flight.size = DONE, size
        if flight.total is None:
            flight.total = size
        self._end(flight)

    def fail(self, flight_id: str, error: FlightError) -> None:
        flight = self._flights.get(flight_id)
        if flight is None or self._finished(flight):
            return
        flight.state, flight.error = FAILED, error
        self._end(flight)

    def status(self, flight_id: str) -> Progress:
        flight = self._flights.get(flight_id)
        if flight is None:  # only after every reader left: never asked by a reader in practice
            return Progress(FAILED, 0, None, FlightError(500, "UNKNOWN", "the fetch is no longer known"))
        return Progress(flight.state, flight.size, flight.total, flight.error)

    def leave(self, flight_id: str) -> None:
        flight = self._flights.get(flight_id)
        if flight is None:
            return
        flight.readers = max(flight.readers - 1, 0)
        if self._finished(flight) and flight.readers == 0:
            del self._flights[flight_id]

    def active(self) -> dict[str, str]:
        """Key -> state of every flight in progress (for tests and diagnostics)."""
        return {key: self._flights[fid].state for key, fid in self._active.items()}

    def known(self) -> int:
        return len(self._flights)

    @staticmethod
    def _finished(flight: Flight) -> bool:
        return flight.state in (DONE, FAILED)

    def _end(self, flight: Flight) -> None:
        if self._active.get(flight.key) == flight.flight_id:
            del self._active[flight.key]
        if flight.readers == 0:
            del self._flights[flight.flight_id]
