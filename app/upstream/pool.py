"""A repository's upstreams tried in order (failover), over clients shared by the whole process."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import aiohttp

from app import errors, registry_hosts
from app.cache import CacheStore
from app.config import UpstreamConfig
from app.upstream import metrics
from app.upstream.client import UpstreamClient
from app.upstream.errors import UpstreamFailure, UpstreamRateLimited, UpstreamUnavailable
from app.upstream.ratelimit import Cooldowns

log = logging.getLogger("registry.upstream")


def _key(config: UpstreamConfig) -> str:
    return config.model_dump_json()


class UpstreamPool:
    """One client (connection pool, TLS context) per distinct upstream configuration.

    Configurations may be swapped by a hot reload at any time; a client is keyed by its whole
    configuration, so a changed upstream gets a new client and `retain` closes the ones no longer used.
    """

    def __init__(self, cache: CacheStore) -> None:
        self.cache = cache
        self._clients: dict[str, UpstreamClient] = {}
        # Kept apart from the clients: a reload that rebuilds a client keeps its upstream's window.
        self.cooldowns = Cooldowns()

    def client(self, config: UpstreamConfig) -> UpstreamClient:
        key = _key(config)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = UpstreamClient(config, self.cache)
        return client

    def rate_limited(self, client: UpstreamClient) -> UpstreamRateLimited | None:
        """A failure standing for the upstream, without asking it, while its Retry-After window runs."""
        wait = self.cooldowns.remaining(client.rate_limit_key)
        if wait is None:
            return None
        return UpstreamRateLimited(client.name, "rate-limited us earlier; not asked again for another "
                                   f"{math.ceil(wait)} s (its Retry-After)", wait)

    def failed(self, client: UpstreamClient, failure: UpstreamFailure) -> None:
        if isinstance(failure, UpstreamRateLimited) and failure.retry_after:
            self.cooldowns.hold(client.rate_limit_key, failure.retry_after)

    async def retain(self, configs: Iterable[UpstreamConfig]) -> None:
        keep = {_key(c) for c in configs}
        for key in [k for k in self._clients if k not in keep]:
            await self._clients.pop(key).retire()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


@dataclass(frozen=True)
class Mirror:
    """The upstreams of one repository (`prefix`): `<prefix>/<rest>` is `<url>/v2/<rest>/...` upstream.

    In mirror-any-registry mode the upstream is derived from the name: `root` is `<prefix>/<host
    component>`, `host` the registry it names, and `<root>/<rest>` is `<rest>` there (Docker Hub's
    official images below `library/`). `host` is None when the name names no registry host.
    Metrics and messages use `prefix`, the configured repository, either way.
    """

    prefix: str
    upstreams: tuple[UpstreamConfig, ...]
    pool: UpstreamPool
    any_registry: bool = False
    host: str | None = None
    root: str | None = None

    def remote_name(self, namespace: str) -> str:
        if self.any_registry:
            return self._derived_name(namespace)
        if not namespace.startswith(self.prefix + "/"):
            raise errors.NameUnknown(
                f"{namespace} is the pull-through repository itself; name an image below it, "
                f"e.g. {self.prefix}/library/alpine")
        return namespace[len(self.prefix) + 1:]

    def _derived_name(self, namespace: str) -> str:
        if self.host is None or self.root is None or not namespace.startswith(self.root + "/"):
            raise errors.NameUnknown(
                f"{namespace} names no image of a registry: {self.prefix} mirrors any registry as "
                f"{self.prefix}/<registry host>/<image> (host:port written host__port), e.g. "
                f"{self.prefix}/docker.io/library/alpine")
        return registry_hosts.remote_name(self.host, namespace[len(self.root) + 1:])

    @property
    def check_interval(self) -> float:
        """How long a cached mutable tag is served before upstream is asked (the first upstream's)."""
        return self.upstreams[0].manifest_check_interval if self.upstreams else 0.0

    def describe(self) -> str:
        if not self.upstreams:
            return "any registry (mirror_any_registry)"
        return ", ".join(u.url for u in self.upstreams)

    @contextlib.asynccontextmanager
    async def open(self, method: str, namespace: str, suffix: str, what: str,
                   headers: dict[str, str] | None = None
                   ) -> AsyncIterator[tuple[UpstreamClient, aiohttp.ClientResponse]]:
        """The first upstream's answer to `method /v2/<rest>/<suffix>`; the next on failure.

        Raises UpstreamUnavailable naming every upstream when none could answer. Once an answer is
        yielded, a failure while reading it is the caller's (no failover in the middle of a body).
        """
        rest = self.remote_name(namespace)
        failures: list[UpstreamFailure] = []
        for config in self.upstreams:
            client = self.pool.client(config)
            cooling = self.pool.rate_limited(client)
            if cooling is not None:  # not asked at all: the next upstream, a stale copy, or a 503
                failures.append(cooling)
                log.debug("upstream skipped inside its Retry-After window", extra={"fields": {
                    "repository": self.prefix, "upstream": client.name, "seconds": cooling.retry_after}})
                continue
            stack = contextlib.AsyncExitStack()
            try:
                response = await stack.enter_async_context(client.open(method, rest, suffix, headers))
            except UpstreamFailure as failure:
                failures.append(failure)
                self.pool.failed(client, failure)
                metrics.upstream_error(self.prefix)
                log.warning("upstream failed, trying the next one", extra={"fields": {
                    "repository": self.prefix, "upstream": failure.url, "reason": failure.reason}})
                continue
            async with stack:
                yield client, response
            return
        raise UpstreamUnavailable.from_failures(what, failures)
