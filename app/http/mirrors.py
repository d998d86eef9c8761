"""containerd mirror requests: `?ns=<registry host>` names the registry a request is really for.

containerd sends `/v2/library/alpine/manifests/latest?ns=docker.io` to a mirror. The rewrite happens
once, in routing, before authorization, so policies and handlers only ever see the rewritten namespace:

1. the repository whose `namespace` is that host serves it as `<prefix>/library/alpine`;
2. an `ns` naming this registry itself (the request's Host) is a plain local request;
3. a `mirror_any_registry` repository serves it as `<prefix>/<host>/library/alpine` (`host:port`
   written `host__port`, app/registry_hosts.py);
4. otherwise it is answered 404 (MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN): serving the local
   namespace of the same path would hand out a local image as another registry's, while a 404 makes
   containerd fall back to the next host, the real registry.

A name that already starts with the repository's namespace (a containerd host with `override_path`,
or cri-o's path-style mirror `/v2/<prefix>/<image>`) is left as it is.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from app import errors
from app.config import RepositoryConfig
from app.grammar import validate_name
from app.http.router import Route
from app.registry_hosts import encode_host, parse_host


def mirror_route(route: Route, request: web.BaseRequest, repositories: dict[str, RepositoryConfig]) -> Route:
    """The route of `request` once its `?ns=` is applied (see the module docstring)."""
    return route_for_ns(route, request.query.get("ns"), request.host, repositories)


def route_for_ns(route: Route, ns: str | None, own_host: str | None,
                 repositories: dict[str, RepositoryConfig]) -> Route:
    if ns is None or not ns.strip() or route.namespace is None:
        return route
    wanted = ns.strip().lower()
    for prefix, repository in repositories.items():
        if repository.namespace is not None and repository.namespace.lower() == wanted:
            return _below(route, prefix)
    if own_host is not None and own_host.strip().lower() == wanted:
        return route
    try:
        host = parse_host(wanted)
    except ValueError:
        host = None
    if host is not None:
        for prefix, repository in repositories.items():
            if repository.mirror_any_registry:  # the first one, in configuration order
                return _below(route, f"{prefix}/{encode_host(host)}")
    raise _unclaimed(route, ns)


def _below(route: Route, base: str) -> Route:
    assert route.namespace is not None
    if route.namespace == base or route.namespace.startswith(base + "/"):
        return route
    return dataclasses.replace(route, namespace=validate_name(f"{base}/{route.namespace}"))


def _unclaimed(route: Route, ns: str) -> errors.RegistryError:
    message = (f"this registry mirrors no registry {ns[:200]!r} (containerd ?ns=): {route.namespace} is "
               "not served from the local repository of that name; use the registry itself")
    if route.kind == "manifest":
        return errors.ManifestUnknown(message)
    if route.kind == "blob":
        return errors.BlobUnknown(message)
    return errors.NameUnknown(message)
