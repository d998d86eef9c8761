"""Upstream rate limits without a network: `Retry-After` in both forms (capped), the windows kept per
upstream, and the 503 + Retry-After answered when every upstream rate-limited us."""

from __future__ import annotations

import email.utils

import pytest

from app.upstream.errors import UpstreamFailure, UpstreamRateLimited, UpstreamUnavailable
from app.upstream.ratelimit import MAX_WAIT, Cooldowns, parse_retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("value", "seconds"), [
    ("30", 30.0),
    (" 0 ", 0.0),
    ("86400", MAX_WAIT),  # a day: capped at an hour
    (email.utils.formatdate(NOW + 42, usegmt=True), 42.0),
    (email.utils.formatdate(NOW - 10, usegmt=True), 0.0),  # already past
    (email.utils.formatdate(NOW + 7200, usegmt=True), MAX_WAIT),
    ("Fri, 15 Jan 2027 08:00:42 -0000", 1800000042.0 - NOW),  # a zone-less date is GMT
    (None, None),
    ("", None),
    ("soon", None),
    ("-5", None),
    ("1.5", None),
])
def test_retry_after_seconds_or_http_date(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_cooldowns_last_the_window_and_keep_the_longest() -> None:
    clock = [100.0]
    windows = Cooldowns(clock=lambda: clock[0])
    assert windows.remaining("a") is None
    windows.hold("a", 10)
    windows.hold("a", 2)  # a shorter window does not shorten the running one
    windows.hold("b", 0)  # nothing to wait for
    assert windows.remaining("a") == 10 and windows.remaining("b") is None
    clock[0] = 109.5
    assert windows.remaining("a") == 0.5
    clock[0] = 110.0
    assert windows.remaining("a") is None
    windows.hold("c", 10 * MAX_WAIT)
    assert windows.remaining("c") == MAX_WAIT


def test_every_upstream_rate_limited_is_a_503_with_the_earliest_retry_after() -> None:
    failures: list[UpstreamFailure] = [
        UpstreamRateLimited("https://one.example", "GET /v2/x answered 429 Too Many Requests", 30.2),
        UpstreamRateLimited("https://two.example", "GET /v2/x answered 429 Too Many Requests", 4.1),
    ]
    error = UpstreamUnavailable.from_failures("manifest x:1", failures)
    assert error.status == 503 and error.code == "UNAVAILABLE"
    assert error.headers == {"Retry-After": "5"}
    assert "rate-limited" in error.message
    assert "https://one.example" in error.message and "https://two.example" in error.message
    # Without a Retry-After upstream, none is made up.
    assert UpstreamUnavailable.from_failures("x", [UpstreamRateLimited("u", "429", None)]).headers == {}
    # One upstream down for another reason: the usual 502, the client may retry at once.
    mixed = UpstreamUnavailable.from_failures("x", [failures[0], UpstreamFailure("https://three", "503")])
    assert mixed.status == 502 and "Retry-After" not in mixed.headers
