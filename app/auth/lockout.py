"""Backing off the attacker, not the user: wrong passwords are counted per client address and username.

After `THRESHOLD` wrong passwords for one username (or for unknown usernames) from one address within
`WINDOW`, that address may not try that username again for a while (429 with Retry-After): 30 s, then
doubling with each lockout up to 15 minutes. The same user logging in from anywhere else, and every
other user from this address, are not affected; credentials verified before (the success cache) keep
working. Counted verifications only: repeating one wrong password is answered from the failure cache
and counts once. Process-wide, bounded (least recently used entries go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from app import errors

THRESHOLD = 10
WINDOW = 300.0
FIRST_LOCKOUT = 30.0
MAX_LOCKOUT = 900.0
MAX_ENTRIES = 65_536


@dataclass
class _Record:
    failures: int = 0
    since: float = 0.0
    locked_until: float = 0.0
    lockouts: int = 0


SUSPECT_AFTER = 3  # wrong passwords from one address (any username) within WINDOW


class Lockouts:
    def __init__(self) -> None:
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()
        self._addresses: OrderedDict[str, _Record] = OrderedDict()

    def suspect(self, address: str) -> bool:
        """Whether this address sent several wrong passwords lately: its verifications wait behind
        those of other clients (app/auth/verification.py)."""
        record = self._addresses.get(address)
        return record is not None and record.failures >= SUSPECT_AFTER \
            and time.monotonic() - record.since <= WINDOW

    def check(self, address: str, lane: str) -> None:
        """429 while this address is locked out of this username."""
        record = self._records.get((address, lane))
        if record is None:
            return
        remaining = record.locked_until - time.monotonic()
        if remaining > 0:
            raise errors.TooManyRequests(
                "too many wrong passwords from this client for this user; retry later",
                headers={"Retry-After": str(int(remaining) + 1)})

    def failed(self, address: str, lane: str) -> None:
        key = (address, lane)
        now = time.monotonic()
        record = self._records.pop(key, None) or _Record(since=now)
        if now - record.since > WINDOW:
            record.failures, record.since = 0, now
        record.failures += 1
        if record.failures >= THRESHOLD:
            record.locked_until = now + min(FIRST_LOCKOUT * 2 ** record.lockouts, MAX_LOCKOUT)
            record.lockouts += 1
            record.failures, record.since = 0, now
        self._records[key] = record
        while len(self._records) > MAX_ENTRIES:
            self._records.popitem(last=False)
        seen = self._addresses.pop(address, None) or _Record(since=now)
        if now - seen.since > WINDOW:
            seen.failures, seen.since = 0, now
        seen.failures += 1
        self._addresses[address] = seen
        while len(self._addresses) > MAX_ENTRIES:
            self._addresses.popitem(last=False)

    def succeeded(self, address: str, lane: str) -> None:
        self._records.pop((address, lane), None)


_lockouts: Lockouts | None = None


def lockouts() -> Lockouts:
    global _lockouts
    if _lockouts is None:
        _lockouts = Lockouts()
    return _lockouts
