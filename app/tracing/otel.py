"""The OpenTelemetry SDK set up from `[observability.tracing]`: imported only when that section is set."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from app import __version__
from app.config import TracingConfig

TRACES_PATH = "/v1/traces"


def traces_url(endpoint: str) -> str:
    """`http://collector:4318` → `http://collector:4318/v1/traces`; a URL with a path is kept as it is
    (a collector behind a proxy prefix, or the full traces URL)."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        parts = parts._replace(path=TRACES_PATH)
    return urlunsplit(parts)


def setup(config: TracingConfig) -> tuple[TracerProvider, Tracer]:
    # Only what the configuration says: the OTEL_* resource detectors and environment variables still
    # apply (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS for a collector's credentials).
    resource = Resource.create({SERVICE_NAME: config.service_name, SERVICE_VERSION: __version__})
    # A trace is sampled as a whole: the ratio decides for the request span, its children follow it.
    sampler = ParentBased(TraceIdRatioBased(config.sampling_rate))
    provider = TracerProvider(resource=resource, sampler=sampler)
    # The batch processor exports from its own thread: a slow or absent collector never holds up a
    # request (spans beyond its queue are dropped, and it logs that).
    # A stop waits for the last export: 5 s at most, whatever the collector does.
    exporter = OTLPSpanExporter(endpoint=traces_url(config.endpoint), timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, provider.get_tracer("simple-registry", __version__)
