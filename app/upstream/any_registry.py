"""The upstreams of mirror-any-registry repositories, derived from the registry host a name carries.

`<prefix>/<host>/<image>` in a `mirror_any_registry` repository is `<image>` at `<host>`: the upstream
configuration is that host's `mirror_hosts` table (credentials possibly from
`REGISTRY_UPSTREAM_CREDENTIALS`, folded in by app/config.py) with `url` defaulting to
`https://<host>`. It is an ordinary UpstreamConfig, so the same pool, clients, token cache, failover,
rate-limit windows and single flights serve it.

Derived configurations are kept per (repository, host) so a request does not rebuild (and re-validate)
one, and so the pool can be told which clients are still in use when a reload retires the others. The
table is bounded (LRU): names are chosen by clients, and each host holds a connection pool.
"""

from __future__ import annotations

from collections import OrderedDict

from app.config import RepositoryConfig, UpstreamConfig
from app.registry_hosts import default_url

MAX_HOSTS = 256


def derive(repository: RepositoryConfig, host: str) -> UpstreamConfig:
    """The upstream of `host` (canonical, see app/registry_hosts.py) in a mirror-any repository."""
    settings = repository.mirror_hosts.get(host)
    if settings is None:
        return UpstreamConfig(url=default_url(host))
    # The same keys and defaults as an `upstream` entry (both are UpstreamSettings), `url` aside.
    return UpstreamConfig(url=settings.url or default_url(host), **settings.model_dump(exclude={"url"}))


class DerivedUpstreams:
    """The derived upstream of each (repository prefix, host) in use, most recently used last."""

    def __init__(self, limit: int = MAX_HOSTS) -> None:
        self.limit = limit
        self._configs: OrderedDict[tuple[str, str], UpstreamConfig] = OrderedDict()

    def get(self, prefix: str, repository: RepositoryConfig, host: str) -> tuple[UpstreamConfig, bool]:
        """The upstream for `host`, and whether another host was dropped to make room for it."""
        key = (prefix, host)
        config = self._configs.get(key)
        if config is not None:
            self._configs.move_to_end(key)
            return config, False
        config = self._configs[key] = derive(repository, host)
        evicted = len(self._configs) > self.limit
        if evicted:
            self._configs.popitem(last=False)
        return config, evicted

    def adopt(self, repositories: dict[str, RepositoryConfig]) -> None:
        """A new configuration: the hosts in use derived again from it (a changed host gets its new
        settings at once), those of repositories no longer mirroring any registry dropped."""
        for (prefix, host) in list(self._configs):
            repository = repositories.get(prefix)
            if repository is None or not repository.mirror_any_registry:
                del self._configs[(prefix, host)]
            else:
                self._configs[(prefix, host)] = derive(repository, host)

    def configs(self) -> list[UpstreamConfig]:
        return list(self._configs.values())
