"""Registry hosts written inside repository names (mirror-any-registry mode), and Docker Hub's naming.

A mirror-any-registry repository serves `<prefix>/<host>/<image>` from `<host>`. A name component
cannot hold `:`, so `host:port` is written `host__port` (`__` never occurs in a DNS hostname), in
lower case. IPv6 literals (`[::1]:5000`) cannot be written in a name component and are not supported.

Docker Hub answers at `registry-1.docker.io` for the names `docker.io`, `index.docker.io` and
`registry-1.docker.io`; all three are `docker.io` here, and a one-component name there is an official
image below `library/` (`alpine` is `library/alpine`), as docker itself resolves it.
"""

from __future__ import annotations

import re

from app.digits import decimal

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_URL = "https://registry-1.docker.io"
PORT_SEPARATOR = "__"

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_MAX_HOSTNAME = 253


def parse_host(value: str) -> str:
    """`host` or `host:port` (containerd's `?ns=`, a `mirror_hosts` key) in canonical form: lower case,
    the port without leading zeros, Docker Hub's aliases as `docker.io`. ValueError when it is not one."""
    host, sep, port = value.strip().lower().partition(":")
    if len(host) > _MAX_HOSTNAME or not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"{value[:100]!r} is not a registry host (`host` or `host:port`; IPv6 literals "
                         "are not supported)")
    if sep:
        number = decimal(port, max_digits=5)
        if number is None or not 0 < number < 65536:
            raise ValueError(f"{value[:100]!r} has no valid port (1-65535)")
        return f"{host}:{number}"
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def encode_host(host: str) -> str:
    """A canonical host as a name component: `127.0.0.1:5000` → `127.0.0.1__5000`."""
    return host.replace(":", PORT_SEPARATOR)


def decode_host(component: str) -> str | None:
    """The canonical host a name component names (`127.0.0.1__5000` → `127.0.0.1:5000`), or None."""
    name, sep, port = component.partition(PORT_SEPARATOR)
    try:
        return parse_host(f"{name}:{port}" if sep else name)
    except ValueError:
        return None


def default_url(host: str) -> str:
    """Where a host's registry answers when nothing is configured for it: https, Docker Hub's real host."""
    return DOCKER_HUB_URL if host == DOCKER_HUB else f"https://{host}"


def remote_name(host: str, name: str) -> str:
    """The repository name to ask `host` for: Docker Hub's official images live below `library/`."""
    if host == DOCKER_HUB and "/" not in name:
        return f"library/{name}"
    return name
