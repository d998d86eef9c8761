"""containerd mirror requests: `?ns=<registry host>` names the registry a request is really for.

containerd sends `/v2/library/alpine/manifests/latest?ns=docker.io` to a mirror; the repository whose
`namespace` is that host serves it as `<prefix>/library/alpine`. The rewrite happens once, in routing,
before authorization, so policies and handlers only ever see the rewritten namespace. A request whose
name already starts with the prefix (a containerd host with `override_path`, or cri-o's path-style
mirror `/v2/<prefix>/<image>`) is left as it is.
"""

from __future__ import annotations

import dataclasses

from app.config import RepositoryConfig
from app.grammar import validate_name
from app.http.router import Route


def mirror_route(route: Route, ns: str | None, repositories: dict[str, RepositoryConfig]) -> Route:
    if not ns or route.namespace is None:
        return route
    host = ns.strip().lower()
    for prefix, repository in repositories.items():
        if repository.namespace is None or repository.namespace.lower() != host:
            continue
        if route.namespace == prefix or route.namespace.startswith(prefix + "/"):
            return route
        return dataclasses.replace(route, namespace=validate_name(f"{prefix}/{route.namespace}"))
    return route
