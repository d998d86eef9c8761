"""Pull-through counters, per repository (the configured prefix), in one place.

Exposed by `GET /metrics` through prometheus_client's default registry (see app/metrics.py).
"""

from __future__ import annotations

from app.metrics import Counter

HITS = Counter("registry_pull_through_hits", "Pull-through requests answered from the local cache",
               ["repository"])
MISSES = Counter("registry_pull_through_misses", "Pull-through requests that needed the upstream",
                 ["repository"])
UPSTREAM_BYTES = Counter("registry_pull_through_upstream_bytes",
                         "Bytes received from upstream registries (blobs and manifests)", ["repository"])
UPSTREAM_ERRORS = Counter("registry_pull_through_upstream_errors",
                          "Upstream requests that failed (transport, timeout, 5xx, refused, bad content)",
                          ["repository"])


def hit(repository: str) -> None:
    HITS.labels(repository).inc()


def miss(repository: str) -> None:
    MISSES.labels(repository).inc()


def upstream_bytes(repository: str, count: int) -> None:
    if count:
        UPSTREAM_BYTES.labels(repository).inc(count)


def upstream_error(repository: str) -> None:
    UPSTREAM_ERRORS.labels(repository).inc()
