"""The HTTP metrics: requests, latency, requests in flight and body bytes, per method and route kind.

Every request updates them, so they are kept in plain Python on the event loop (the only thread that
handles requests): a dict increment and a bisect into fixed buckets, well under a microsecond, where
prometheus_client's own objects take a lock per update and would import the library at the first
request (app/metrics.py keeps it out of a registry nobody scrapes). At scrape time `collect()` hands
prometheus_client metric families built from the current values, in its text format like every other
metric. Labels are bounded: `route` is the router's kind (never the path), `method` one of the HTTP
methods (else `other`), `status` the status code.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING

from app import metrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# Milliseconds: from a cached manifest read (~1 ms) to a large blob transfer (minutes).
BUCKETS_MS: tuple[float, ...] = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                                 60000, 300000)
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # a request the router could not resolve (404/405 before any handler)


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS_MS) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0


class RequestMetrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self.in_flight = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def observe(self, method: str, route: str, status: int, milliseconds: float, bytes_in: int,
                bytes_out: int) -> None:
        """One finished request (called on the event loop)."""
        if method not in METHODS:
            method = "other"
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get((method, route))
        if histogram is None:
            histogram = self.durations[(method, route)] = _Histogram()
        histogram.buckets[bisect.bisect_left(BUCKETS_MS, milliseconds)] += 1
        histogram.count += 1
        histogram.sum += milliseconds
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector protocol (the default registry calls it at each scrape)."""
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        requests = CounterMetricFamily("http_requests", "HTTP requests answered",
                                       labels=["method", "route", "status"])
        for (method, route, status), count in list(self.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        durations = HistogramMetricFamily("http_request_duration_milliseconds",
                                          "Time from the request's arrival to its answer (the body sent "
                                          "for streamed answers), in milliseconds",
                                          labels=["method", "route"])
        for (method, route), histogram in list(self.durations.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*BUCKETS_MS, float("inf")), histogram.buckets, strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            durations.add_metric([method, route], buckets, histogram.sum)
        yield durations
        yield GaugeMetricFamily("http_requests_in_flight", "HTTP requests being handled now",
                                value=self.in_flight)
        storage = CounterMetricFamily("registry_storage_bytes", "Body bytes received from clients (in) "
                                      "and sent to them (out)", labels=["direction"])
        storage.add_metric(["in"], self.bytes_in)
        storage.add_metric(["out"], self.bytes_out)
        yield storage


def _bound(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(float(value))


REQUESTS = RequestMetrics()
metrics.register_collector(REQUESTS)
