"""A storage that records a span around every call of the one it wraps (only built with tracing on).

The decorator is generated from the interface itself (`Storage`, and the writers and bodies it hands
out): every public method of the abstract class becomes a delegating method with a span, so a driver
and the interface can change without this module changing with them, and a registry without tracing
never goes through it at all. Reads that stream (`read`, `walk`) get one span for the whole stream,
ended when the stream is; writers get spans for `close`, `commit` and `cancel` but not per `write`
(one span per chunk of a large upload would be thousands). `NotFound` is an answer, not a failure.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from app import tracing
from app.storage import Body, NotFound, SpoolWriter, Storage, UploadWriter

_UNTRACED = frozenset({"write"})  # per chunk: see above


def traced(storage: Storage) -> Storage:
    """`storage` with a span around each call (tracing must be started)."""
    return cast(Storage, _TRACED[Storage](storage))


def _wrap_result(result: Any) -> Any:
    for interface, wrapper in _TRACED.items():
        if interface is not Storage and isinstance(result, interface):
            return wrapper(result)
    return result


def _attributes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, tracing.AttributeValue]:
    """The call's key (or prefix/destination): the first string arguments, which name objects."""
    found: dict[str, tracing.AttributeValue] = {}
    strings = [a for a in args if isinstance(a, str)]
    if strings:
        found["storage.key"] = strings[0][:500]
    if len(strings) > 1:
        found["storage.destination"] = strings[1][:500]
    for name in ("offset", "length"):
        value = kwargs.get(name)
        if isinstance(value, int):
            found[f"storage.{name}"] = value
    return found


def _coroutine(name: str, prefix: str) -> Callable[..., Any]:
    async def call(self: _Traced, *args: Any, **kwargs: Any) -> Any:
        with tracing.quiet_span(f"{prefix}.{name}", _attributes(args, kwargs), expected=(NotFound,)):
            result = await getattr(self._inner, name)(*args, **kwargs)
        return _wrap_result(result)

    return call


def _plain(name: str, prefix: str) -> Callable[..., Any]:
    def call(self: _Traced, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self._inner, name)(*args, **kwargs)
        if hasattr(result, "__aiter__"):
            return _stream(result, f"{prefix}.{name}", _attributes(args, kwargs))
        return result

    return call


async def _stream(inner: AsyncIterator[Any], name: str,
                  attributes: dict[str, tracing.AttributeValue]) -> AsyncIterator[Any]:
    """Iterate `inner` under one span that is not made current: an async generator shares its caller's
    context, so a span attached here would leak into the caller between two items."""
    tracer = tracing.tracer()
    if tracer is None:
        async for item in inner:
            yield item
        return
    from opentelemetry.trace import Status, StatusCode

    span = tracer.start_span(name, attributes=attributes)
    items = size = 0
    try:
        async for item in inner:
            items += 1
            size += len(item) if isinstance(item, bytes | bytearray | memoryview) else 0
            yield item
    except NotFound as exc:
        span.set_attribute("outcome", type(exc).__name__)
        raise
    except GeneratorExit:  # the caller stopped reading early: not a failure
        span.set_attribute("outcome", "closed")
        raise
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
        raise
    finally:
        span.set_attribute("storage.items", items)
        if size:
            span.set_attribute("storage.bytes", size)
        span.end()


class _Traced:
    """The delegation every generated class shares: anything not in the interface goes to the inner."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:  # data attributes (`size`, `checkpoint`), driver extras
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"traced({self._inner!r})"


def _generate(interface: type, prefix: str) -> type:
    namespace: dict[str, Any] = {}
    for name, member in inspect.getmembers(interface, inspect.isfunction):
        if name.startswith("_"):
            continue
        if inspect.iscoroutinefunction(member) and name not in _UNTRACED:
            method = _coroutine(name, prefix)
        elif inspect.iscoroutinefunction(member):
            method = _delegate_coroutine(name)
        else:
            method = _plain(name, prefix)
        # Name and docstring only: the member's __dict__ holds `__isabstractmethod__`.
        namespace[name] = functools.update_wrapper(method, member, assigned=("__name__", "__qualname__",
                                                                            "__doc__"), updated=())
    return type(f"Traced{interface.__name__}", (_Traced, interface), namespace)


def _delegate_coroutine(name: str) -> Callable[..., Any]:
    async def call(self: _Traced, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self._inner, name)(*args, **kwargs)

    return call


_TRACED: dict[type, Any] = {
    Storage: _generate(Storage, "storage"),
    UploadWriter: _generate(UploadWriter, "storage.upload"),
    SpoolWriter: _generate(SpoolWriter, "storage.spool"),
    Body: _generate(Body, "storage.body"),
}
