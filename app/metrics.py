"""The registry's Prometheus metrics: declared at import, backed by prometheus_client from first use.

prometheus_client brings its exposition servers along (http.server, socketserver, wsgiref, gzip, mmap):
about 1 MiB of resident memory. A registry that nobody scrapes and that sees no credentials (a laptop)
never needs it. So the modules declare their counters here, and the library is imported the first time
a counter is incremented or `GET /metrics` is scraped. At that moment every declared counter is
registered at once, so a scrape always lists every declared family, and prometheus_client's default
registry adds its process, platform and GC collectors as it always does. A counter declared later (by a
module imported lazily, e.g. the pull-through counters) is registered as it is declared. Metrics that
are kept elsewhere and only read at scrape time (the HTTP request metrics, app/http/request_metrics.py)
are declared as collectors with `register_collector`, and registered the same way.

Values, label handling, thread safety and the text format are prometheus_client's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import prometheus_client
    from prometheus_client.metrics_core import Metric


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


_lock = threading.Lock()
_declared: list[Counter] = []
_collectors: list[Collector] = []
_loaded = False


class Counter:
    """A prometheus_client `Counter` with label names, created when metrics are first used."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._counter: prometheus_client.Counter | None = None
        with _lock:
            _declared.append(self)
            if _loaded:
                self._register()

    def _register(self) -> None:
        import prometheus_client

        self._counter = prometheus_client.Counter(self.name, self.documentation, self.labelnames)

    def labels(self, *values: str) -> prometheus_client.Counter:
        """The child for these label values (in the order of `labelnames`), as prometheus_client's."""
        counter = self._counter
        if counter is None:
            load()
            counter = self._counter
            assert counter is not None
        if not self.labelnames:  # a counter without labels is its own only child
            return counter
        return counter.labels(*values)


def register_collector(collector: Collector) -> None:
    """A collector (prometheus_client's protocol) for the default registry, once it is loaded."""
    with _lock:
        _collectors.append(collector)
        if _loaded:
            _register_collector(collector)


def _register_collector(collector: Collector) -> None:
    from prometheus_client import REGISTRY

    REGISTRY.register(collector)


def load() -> None:
    """Import prometheus_client and register every declared metric (once; safe from any thread)."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        for metric in _declared:
            metric._register()
        for collector in _collectors:
            _register_collector(collector)
        _loaded = True


def loaded() -> bool:
    return _loaded


def exposition() -> tuple[bytes, str]:
    """The default registry in the Prometheus text format, and its Content-Type."""
    load()
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(), CONTENT_TYPE_LATEST
