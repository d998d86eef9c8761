"""The server's garbage collector: `[global.gc]` on its interval, one sweeper at a time among replicas.

The design card's GCSweeper: the Sweeper actor (app/actors/sweeper.py) owns the schedule and runs
`GarbageCollector.run` on the event loop, as it does the upload expiry; this object holds what one
run hands to the next and to `/metrics` (the last run's time, duration and result). The configuration
is read at each run, so a reload changes the interval, the grace period or turns collection off.

A run first takes the leader lock (`gc:leader`, through the registry's lock store: Redis across
machines, file locks on one machine) without waiting: when another replica (or another process on the
same folder) is collecting, this one skips its turn. Retention rules, when configured, are enforced
first (app/lifecycle/retention.py). The mark and sweep itself is app/lifecycle/gc.py; what it
changes is announced like a write (the index forgets the namespace, other replicas hear of it through
app/coherence.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from app import metrics, tracing
from app.lifecycle.gc import GCOptions, GCResult, collect
from app.lifecycle.retention import enforce
from app.locks.base import LockTimeout
from app.retention import RetentionPolicies
from app.storage import StorageError
from app.storage import locks as lock_names

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from app.context import Registry

log = logging.getLogger("registry.gc")

RUNS = metrics.Counter("registry_gc_runs", "Garbage collection runs, by result (ok, failed, skipped: "
                       "another replica held the leader lock)", ["result"])
BLOBS_DELETED = metrics.Counter("registry_gc_blobs_deleted", "Blobs deleted by garbage collection", [])
BYTES_RECLAIMED = metrics.Counter("registry_gc_bytes_reclaimed",
                                  "Bytes of blobs deleted by garbage collection", [])
MANIFESTS_DELETED = metrics.Counter("registry_gc_manifests_deleted",
                                    "Untagged manifests deleted by garbage collection", [])


class GarbageCollector:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.last: GCResult | None = None
        self.last_finished: float | None = None
        metrics.register_collector(self)

    def first_delay(self) -> float:
        return float(self.registry.config.global_.gc.interval)

    async def run(self, state: Any) -> tuple[Any, float]:
        """One scheduled turn: (state, seconds until the next)."""
        config = self.registry.config.global_.gc
        if not config.enabled:
            return state, float(config.interval)
        try:
            async with self.registry.locks.hold(lock_names.gc_leader(), wait=0):
                await self.collect_now(GCOptions(config.grace_period, config.delete_untagged,
                                                 config.dry_run))
        except LockTimeout:
            RUNS.labels("skipped").inc()
            log.info("garbage collection skipped: another process is collecting")
            return state, float(config.interval)
        except (StorageError, TimeoutError) as exc:
            RUNS.labels("failed").inc()
            log.warning("garbage collection failed; tried again at the next interval: %s", exc)
            return state, float(config.interval)
        return state, float(self.registry.config.global_.gc.interval)

    async def collect_now(self, options: GCOptions) -> GCResult:
        # Retention first, when rules are configured (docs/gc.md): the tags it removes leave manifests
        # that this very run may collect (with delete_untagged) and blobs it then reclaims.
        policies = RetentionPolicies.from_config(self.registry.config)
        with tracing.span("gc.run"):  # housekeeping: its storage calls are this span's children
            if policies.configured:
                await enforce(self.registry.storage, self.registry.locks, policies, dry_run=options.dry_run,
                              now=time.time(), on_removed=self._tag_removed,
                              pull_times=self.registry.pull_times)
            result = await collect(self.registry.storage, self.registry.locks, options, self._changed)
        self.last, self.last_finished = result, time.time()
        RUNS.labels("ok").inc()
        if not options.dry_run:
            BLOBS_DELETED.labels().inc(result.blobs_deleted)
            BYTES_RECLAIMED.labels().inc(result.bytes_reclaimed)
            MANIFESTS_DELETED.labels().inc(result.manifests_deleted)
        log.info("garbage collection %s" % ("(dry run) done" if options.dry_run else "done"),
                 extra={"fields": result.as_fields()})
        return result

    async def _tag_removed(self, namespace: str, tag: str) -> None:
        self.registry.actors.index.tell("delete_tag", namespace, tag)
        await self.registry.manifests.announce(namespace)

    async def _changed(self, namespace: str) -> None:
        index = self.registry.actors.index
        index.tell("invalidate", namespace)
        index.tell("invalidate_catalog")  # the namespace may have gone with its last link
        await self.registry.manifests.coherence.changed(namespace, new_namespace=True)

    # --- /metrics: the last run ---------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        """prometheus_client's collector protocol (registered with app/metrics.py)."""
        from prometheus_client.core import GaugeMetricFamily

        if self.last is None or self.last_finished is None:
            return
        yield GaugeMetricFamily("registry_gc_last_run_timestamp_seconds",
                                "When the last garbage collection run of this process ended",
                                value=self.last_finished)
        yield GaugeMetricFamily("registry_gc_last_run_duration_seconds",
                                "How long the last garbage collection run of this process took",
                                value=self.last.seconds)
