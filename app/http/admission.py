"""Admission: request slots that limit the server's work, never its waiting on slow peers.

`max_concurrent_requests` slots are taken before authentication (so a flood of requests cannot make
the server work on all of them at once) and given back as soon as a request starts moving a body:
streaming an upload or a download is waiting on a client, and a handful of stalled clients must not
hold every slot (they are governed by the transfer limits of app/http/transfers.py instead). A request
that waits too long for a slot is answered 503 TOOMANYREQUESTS with Retry-After.

One client may have at most `max_requests_per_client` requests in progress (by address: the peer, or
the forwarded address from a trusted proxy) and `max_transfers_per_client` bodies moving (by identity
when it has one, else by address); beyond that it gets 429 TOOMANYREQUESTS at once while everyone else
is served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from aiohttp import web

from app import errors
from app.config import LimitsConfig

TICKET_KEY = "admission_ticket"
# How long a request waits for a slot when max_concurrent_requests are in flight, before 503.
QUEUE_WAIT_SECONDS = 30.0
RETRY_AFTER = {"Retry-After": "1"}


class Admission:
    def __init__(self, max_requests: int, limits: LimitsConfig) -> None:
        self._slots = asyncio.Semaphore(max_requests)
        self.limits = limits  # replaced on a live reload (the slot count needs a restart)
        self._requests: Counter[str] = Counter()
        self._transfers: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def request(self, request: web.Request, client: str) -> AsyncIterator[Ticket]:
        if self._requests[client] >= self.limits.max_requests_per_client:
            raise errors.TooManyRequests(
                f"more than {self.limits.max_requests_per_client} requests in progress from this client; "
                "retry later", headers=dict(RETRY_AFTER))
        self._requests[client] += 1
        ticket = Ticket(self, client)
        request[TICKET_KEY] = ticket
        try:
            await ticket.acquire()
            yield ticket
        finally:
            ticket.release()
            self._requests[client] -= 1
            if not self._requests[client]:
                del self._requests[client]

    @property
    def clients(self) -> int:
        return len(self._requests)


class Ticket:
    """One request's place: its slot while the server works for it, and its transfer while it streams."""

    def __init__(self, admission: Admission, client: str) -> None:
        self._admission = admission
        self.client = client
        self._held = False
        self._transfer_key: str | None = None

    async def acquire(self) -> None:
        try:
            await asyncio.wait_for(self._admission._slots.acquire(), QUEUE_WAIT_SECONDS)
        except TimeoutError:
            raise errors.TooManyRequests("too many concurrent requests; retry later", status=503,
                                         headers=dict(RETRY_AFTER)) from None
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._slots.release()
        self.end_transfer()

    def begin_transfer(self, identity: str | None) -> None:
        """The request starts moving a body: its slot goes back, its transfer is counted."""
        if self._transfer_key is not None:
            return
        key = identity or self.client
        transfers = self._admission._transfers
        if transfers[key] >= self._admission.limits.max_transfers_per_client:
            raise errors.TooManyRequests(
                f"more than {self._admission.limits.max_transfers_per_client} transfers in progress for "
                "this client; retry later", headers=dict(RETRY_AFTER))
        transfers[key] += 1
        self._transfer_key = key
        if self._held:
            self._held = False
            self._admission._slots.release()

    def end_transfer(self) -> None:
        key, self._transfer_key = self._transfer_key, None
        if key is not None:
            transfers = self._admission._transfers
            transfers[key] -= 1
            if not transfers[key]:
                del transfers[key]


def begin_transfer(request: web.BaseRequest) -> None:
    """Mark the request as moving a body (no-op outside the admission middleware, e.g. in tests)."""
    ticket = request.get(TICKET_KEY)
    if isinstance(ticket, Ticket):
        from app.http.access import IDENTITY_KEY

        identity = request.get(IDENTITY_KEY)
        subject = getattr(identity, "subject", "") if identity is not None else ""
        ticket.begin_transfer(f"identity:{subject}" if subject else None)


def limits_of(request: web.BaseRequest) -> LimitsConfig:
    """The transfer limits in force for this request (the defaults outside the middleware)."""
    ticket = request.get(TICKET_KEY)
    return ticket._admission.limits if isinstance(ticket, Ticket) else LimitsConfig()
