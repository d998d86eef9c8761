"""Upstreams that rate-limited us (429, Docker Hub's `TOOMANYREQUESTS`): how long to leave them alone.

An upstream that answers 429 with `Retry-After` (seconds or an HTTP-date) is not asked again until
then: asking earlier only spends the quota the window is meant to restore (Docker Hub counts even
refused pulls), and delays the failover. The window is capped so a wrong header cannot take an
upstream out for a day.
"""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Callable

MAX_WAIT = 3600.0
# Expired windows are dropped when the table grows past this (derived hosts come and go).
_PRUNE_AT = 1024


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), capped at MAX_WAIT;
    None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_WAIT)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # `-0000`: UTC, as every HTTP-date is
        when = when.replace(tzinfo=datetime.UTC)
    current = time.time() if now is None else now
    return min(max(when.timestamp() - current, 0.0), MAX_WAIT)


class Cooldowns:
    """Until when each rate-limited upstream is left alone (monotonic clock), by a key naming it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def hold(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        until = self._clock() + min(seconds, MAX_WAIT)
        self._until[key] = max(until, self._until.get(key, 0.0))
        if len(self._until) > _PRUNE_AT:
            now = self._clock()
            self._until = {k: v for k, v in self._until.items() if v > now}

    def remaining(self, key: str) -> float | None:
        """Seconds left in `key`'s window, or None when it may be asked."""
        until = self._until.get(key)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._until[key]
            return None
        return left
