"""A loopback OTLP/HTTP collector: `POST /v1/traces` bodies decoded with OpenTelemetry's protobuf
messages, kept as plain spans for the tests to look at."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.helpers.upstreams import BackgroundApp


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    start: int
    end: int
    children: list[Span] = field(default_factory=list)

    def descendants(self) -> list[Span]:
        found: list[Span] = []
        for child in self.children:
            found += [child, *child.descendants()]
        return found


class OTLPReceiver(BackgroundApp):
    def __init__(self) -> None:
        super().__init__()
        self.spans: list[Span] = []
        self.requests = 0
        self.content_types: set[str] = set()
        self._lock = threading.Lock()

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        self.content_types.add(request.headers.get("Content-Type", ""))
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        found = []
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(Span(
                        span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                        span.kind,
                        {a.key: _value(a.value) for a in span.attributes}, resource, span.status.code,
                        span.start_time_unix_nano, span.end_time_unix_nano))
        with self._lock:
            self.requests += 1
            self.spans += found
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def roots(self) -> list[Span]:
        """Every span with its children linked; the roots (spans without a parent), by start time."""
        with self._lock:
            spans = [Span(**{k: v for k, v in vars(s).items() if k != "children"}) for s in self.spans]
        by_id = {s.span_id: s for s in spans}
        roots = []
        for span in sorted(spans, key=lambda s: s.start):
            parent = by_id.get(span.parent_id)
            if parent is None:
                roots.append(span)
            else:
                parent.children.append(span)
        return roots
