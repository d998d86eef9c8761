"""What can go wrong talking to an upstream, and how it is answered to our clients."""

from __future__ import annotations

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


class UpstreamUnavailable(errors.RegistryError):
    """Every upstream failed and nothing cached can answer: 502 (504 when they timed out), naming them."""

    code = "UNAVAILABLE"
    status = 502
    default_message = "the upstream registry is unavailable"

    @classmethod
    def from_failures(cls, what: str, failures: list[UpstreamFailure]) -> UpstreamUnavailable:
        reasons = "; ".join(str(f) for f in failures) or "no upstream is configured"
        timed_out = bool(failures) and all(f.timeout for f in failures)
        return cls(f"cannot fetch {what} from upstream: {reasons}",
                   status=504 if timed_out else 502,
                   detail={"upstreams": [f.url for f in failures]})


class UpstreamInvalid(errors.RegistryError):
    """The upstream answered with something unusable (wrong digest, oversized or invalid manifest)."""

    code = "UNAVAILABLE"
    status = 502
    default_message = "the upstream registry sent invalid content"
