"""Tracing: OpenTelemetry spans exported over OTLP/HTTP when `[observability.tracing]` is set.

Without that section nothing of OpenTelemetry is imported (the SDK, protobuf and the exporter's HTTP
stack cost several MiB of resident memory) and every helper here is a check of one global: `span()`
hands back one shared no-op context manager, `trace_id()` None. With it, `start()` builds the tracer
(`app/tracing/otel.py`) before the registry is built, so the storage is wrapped in spans too
(`app/tracing/storage.py`), and `shutdown()` flushes what is still queued when the server stops.

Spans: one per request (named after the router's kind, e.g. `manifest`, made current by the HTTP
middleware) with children for authentication, policy, each storage call and each upstream request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from app.config import TracingConfig

AttributeValue = str | bool | int | float

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_NOOP: contextlib.nullcontext[None] = contextlib.nullcontext()


def start(config: TracingConfig | None) -> None:
    """Build the tracer for this configuration (nothing when None)."""
    global _tracer, _provider
    if config is None:
        return
    from app.tracing import otel

    _provider, _tracer = otel.setup(config)


def enabled() -> bool:
    return _tracer is not None


def tracer() -> Tracer | None:
    return _tracer


def shutdown() -> None:
    """Export what is queued and stop the exporter (blocking: at most the exporter's timeout)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def span(name: str, attributes: Mapping[str, AttributeValue] | None = None
         ) -> contextlib.AbstractContextManager[Span | None]:
    """A child span of the current one (the request's), or a no-op when tracing is off."""
    current = _tracer
    if current is None:
        return _NOOP
    return current.start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def quiet_span(name: str, attributes: Mapping[str, AttributeValue] | None = None,
               expected: tuple[type[BaseException], ...] = ()) -> Iterator[Span | None]:
    """Like `span()`, but the exceptions in `expected` are answers (a key that is absent, a refusal),
    recorded as the `outcome` attribute instead of marking the span failed."""
    current = _tracer
    if current is None:
        yield None
        return
    with current.start_as_current_span(name, attributes=attributes, record_exception=False,
                                       set_status_on_exception=False) as opened:
        try:
            yield opened
        except expected as exc:
            opened.set_attribute("outcome", type(exc).__name__)
            raise
        except BaseException as exc:
            from opentelemetry.trace import Status, StatusCode

            opened.record_exception(exc)
            opened.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
            raise


def trace_id() -> str | None:
    """The current trace's id as 32 hex digits (what tracing backends search by), or None."""
    if _tracer is None:
        return None
    from opentelemetry.trace import get_current_span

    context = get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def set_attributes(target: Any, attributes: Mapping[str, AttributeValue | None]) -> None:
    """Set the attributes that have a value (OpenTelemetry refuses None)."""
    if target is None:
        return
    for key, value in attributes.items():
        if value is not None:
            target.set_attribute(key, value)
