"""What can go wrong talking to an upstream, and how it is answered to our clients."""

from __future__ import annotations

import math

from app import errors


class UpstreamFailure(Exception):
    """One upstream could not answer: transport error, timeout, 5xx, refused credentials, redirect loop.

    The next upstream is tried. A 404 is an answer, never a failure.
    """

    def __init__(self, url: str, reason: str, *, timeout: bool = False) -> None:
        self.url = url
        self.reason = reason
        self.timeout = timeout
        super().__init__(f"{url}: {reason}")


class UpstreamRateLimited(UpstreamFailure):
    """The upstream answered 429 (or is still inside the `Retry-After` window of an earlier one)."""

    def __init__(self, url: str, reason: str, retry_after: float | None) -> None:
        super().__init__(url, reason)
        self.retry_after = retry_after


class UpstreamUnavailable(errors.RegistryError):
    """Every upstream failed and nothing cached can answer: 502 (504 when they timed out), naming them."""

    code = "UNAVAILABLE"
    status = 502
    default_message = "the upstream registry is unavailable"

    @classmethod
    def from_failures(cls, what: str, failures: list[UpstreamFailure]) -> UpstreamUnavailable:
        """502; 504 when every upstream timed out; 503 with `Retry-After` when every one rate-limited us
        (the client can come back then; until then asking again only hits the same limit)."""
        reasons = "; ".join(str(f) for f in failures) or "no upstream is configured"
        detail = {"upstreams": [f.url for f in failures]}
        limited = [f for f in failures if isinstance(f, UpstreamRateLimited)]
        if failures and len(limited) == len(failures):
            waits = [f.retry_after for f in limited if f.retry_after is not None]
            headers = {"Retry-After": str(max(1, math.ceil(min(waits))))} if waits else None
            return cls(f"cannot fetch {what}: rate-limited by the upstream registry: {reasons}",
                       status=503, detail=detail, headers=headers)
        timed_out = bool(failures) and all(f.timeout for f in failures)
        return cls(f"cannot fetch {what} from upstream: {reasons}",
                   status=504 if timed_out else 502, detail=detail)


class UpstreamInvalid(errors.RegistryError):
    """The upstream answered with something unusable (wrong digest, oversized or invalid manifest)."""

    code = "UNAVAILABLE"
    status = 502
    default_message = "the upstream registry sent invalid content"
