"""Asking pykka actors from asyncio without ever blocking the event loop.

pykka's own `await future` blocks the loop while the actor works. Here the reply future is a pykka
`Future` whose `set`/`set_exception` resolve an asyncio future through `loop.call_soon_threadsafe`,
so a coroutine awaits the actor's answer while the loop keeps serving other requests. Stopped or dead
actors answer `ActorDeadError` through the same path instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from types import TracebackType
from typing import Any, TypeVar

import pykka
from pykka._envelope import Envelope
from pykka.messages import ProxyCall

T = TypeVar("T")

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _reject(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class LoopFuture(pykka.Future[Any]):
    """A pykka reply slot that completes an asyncio future on its own loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: asyncio.Future[Any]) -> None:
        super().__init__()
        self._loop = loop
        self._target = target

    def set(self, value: Any | None = None) -> None:
        self._call(_resolve, value)

    def set_exception(self, exc_info: Any = None) -> None:
        info: ExcInfo = exc_info if exc_info is not None else sys.exc_info()
        exc = info[1] if info[1] is not None else (info[0] or RuntimeError)()
        self._call(_reject, exc)

    def _call(self, func: Any, arg: Any) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(func, self._target, arg)

    def get(self, *, timeout: float | None = None) -> Any:  # pragma: no cover - never blocks
        raise RuntimeError("await the asyncio future instead of calling get()")


class AsyncActor(pykka.ThreadingActor):
    """A threading actor whose methods coroutines call with `await ref.ask_async(...)`."""

    use_daemon_thread = True


def ask(ref: pykka.ActorRef[Any], method: str, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
    """Call `method` on the actor and return an awaitable asyncio future for its result."""
    loop = asyncio.get_running_loop()
    target: asyncio.Future[Any] = loop.create_future()
    if not ref.is_alive():
        target.set_exception(pykka.ActorDeadError(f"{ref} not found"))
        return target
    message = ProxyCall(attr_path=(method,), args=args, kwargs=kwargs)
    ref.actor_inbox.put(Envelope(message, reply_to=LoopFuture(loop, target)))
    return target


def tell(ref: pykka.ActorRef[Any], method: str, *args: Any, **kwargs: Any) -> None:
    """Fire-and-forget call (events flowing upward are tells, never asks)."""
    if ref.is_alive():
        ref.actor_inbox.put(Envelope(ProxyCall(attr_path=(method,), args=args, kwargs=kwargs)))


class ActorHandle:
    """A typed-ish facade: `await handle.call("method", ...)`, `handle.tell("method", ...)`."""

    def __init__(self, ref: pykka.ActorRef[Any]) -> None:
        self.ref = ref

    def call(self, method: str, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        return ask(self.ref, method, *args, **kwargs)

    def tell(self, method: str, *args: Any, **kwargs: Any) -> None:
        tell(self.ref, method, *args, **kwargs)

    def stop(self) -> None:
        if self.ref.is_alive():
            self.ref.stop(block=True, timeout=5)
