"""A blob answered from somewhere other than a committed local object (an upstream, a fetch in flight)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


class BlobStreamAborted(Exception):
    """The bytes already sent cannot be completed (digest mismatch, upstream failure mid-body).

    The connection is then dropped so the client sees a truncated response, never a complete wrong one.
    """


@dataclass
class RemoteBlob:
    status: int
    headers: dict[str, str]
    length: int | None  # Content-Length; None streams with chunked encoding
    body: AsyncIterator[bytes] | None = None  # None for HEAD
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        """Release what the answer holds (flight membership, an upstream connection); idempotent."""
        body, self.body = self.body, None
        if body is not None and hasattr(body, "aclose"):
            await body.aclose()
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            await callback()
