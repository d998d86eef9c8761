"""The body bytes one request sent, for its access-log line and the byte counters.

Everything aiohttp writes is reported by its writer's `on_body_write` hook; blob bodies sent with
`os.sendfile` (app/http/sendfile.py) bypass the writer, so the sender adds those itself. The sender
has no request at hand, only the task it runs in: the tally is found through a context variable that
the HTTP middleware sets for the request's task.
"""

from __future__ import annotations

import contextvars


class Traffic:
    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0

    def body_written(self, count: int, _output_size: int) -> None:
        """aiohttp's `AbstractStreamWriter.on_body_write` signature."""
        self.sent += count


current: contextvars.ContextVar[Traffic | None] = contextvars.ContextVar("traffic", default=None)


def sent(count: int) -> None:
    """`count` body bytes went out outside aiohttp's writer (sendfile)."""
    traffic = current.get()
    if traffic is not None:
        traffic.sent += count
