"""A repository's upstreams tried in order (failover), over clients shared by the whole process."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import aiohttp

from app import errors
from app.cache import CacheStore
from app.config import UpstreamConfig
from app.upstream import metrics
from app.upstream.client import UpstreamClient
from app.upstream.errors import UpstreamFailure, UpstreamUnavailable

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

    def client(self, config: UpstreamConfig) -> UpstreamClient:
        key = _key(config)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = UpstreamClient(config, self.cache)
        return client

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
    """The upstreams of one repository (`prefix`): `<prefix>/<rest>` is `<url>/v2/<rest>/...` upstream."""

    prefix: str
    upstreams: tuple[UpstreamConfig, ...]
    pool: UpstreamPool

    def remote_name(self, namespace: str) -> str:
        if not namespace.startswith(self.prefix + "/"):
            raise errors.NameUnknown(
                f"{namespace} is the pull-through repository itself; name an image below it, "
                f"e.g. {self.prefix}/library/alpine")
        return namespace[len(self.prefix) + 1:]

    def describe(self) -> str:
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
            stack = contextlib.AsyncExitStack()
            try:
                response = await stack.enter_async_context(client.open(method, rest, suffix, headers))
            except UpstreamFailure as failure:
                failures.append(failure)
                metrics.upstream_error(self.prefix)
                log.warning("upstream failed, trying the next one", extra={"fields": {
                    "repository": self.prefix, "upstream": failure.url, "reason": failure.reason}})
                continue
            async with stack:
                yield client, response
            return
        raise UpstreamUnavailable.from_failures(what, failures)
