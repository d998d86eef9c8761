"""Which configuration keys can change while the server runs, and which need a restart.

A reloaded configuration is applied as a whole, except for the keys below: those are bound to things
built once at start (the listening socket, the storage driver, middlewares sized at start, the tracer),
so their running values are kept and the change is reported as needing a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from app.config import Config

# (attribute path, key name for operators, why it needs a restart)
RESTART_KEYS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("server", "bind_address"), "server.bind_address", "the listening socket is bound at start"),
    (("server", "port"), "server.port", "the listening socket is bound at start"),
    (("server", "query_timeout"), "server.query_timeout", "the request timeout is set at start"),
    (("server", "query_timeout_grace_period"), "server.query_timeout_grace_period",
     "the shutdown grace period is set at start"),
    (("global_", "max_concurrent_requests"), "global.max_concurrent_requests",
     "the request limit is sized at start"),
    (("global_", "limits", "header_read_timeout"), "global.limits.header_read_timeout",
     "connection timeouts are set when the listener starts"),
    (("global_", "limits", "keepalive_timeout"), "global.limits.keepalive_timeout",
     "connection timeouts are set when the listener starts"),
    (("blob_store",), "blob_store", "the storage is opened at start"),
    (("metadata_store",), "metadata_store", "the storage is opened at start"),
)


@dataclass(frozen=True)
class RestartRequired:
    key: str
    reason: str


def _get(model: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        model = getattr(model, name)
    return model


def _set(model: BaseModel, path: tuple[str, ...], value: Any) -> Any:
    """A copy of `model` with the value at `path` replaced (values come from validated configs)."""
    head, rest = path[0], path[1:]
    if not rest:
        return model.model_copy(update={head: value})
    return model.model_copy(update={head: _set(getattr(model, head), rest, value)})


def split_restart_keys(running: Config, loaded: Config) -> tuple[Config, list[RestartRequired]]:
    """The configuration to apply live (`loaded` with restart-only keys kept at their running values)
    and the keys whose change was not applied."""
    result = loaded
    kept: list[RestartRequired] = []
    for path, key, reason in RESTART_KEYS:
        if _get(running, path) != _get(loaded, path):
            result = _set(result, path, _get(running, path))
            kept.append(RestartRequired(key, reason))
    if (running.server.tls is None) != (loaded.server.tls is None):
        result = _set(result, ("server", "tls"), running.server.tls)
        kept.append(RestartRequired("server.tls", "switching TLS on or off changes the listener"))
    if running.observability.tracing != loaded.observability.tracing:
        result = _set(result, ("observability", "tracing"), running.observability.tracing)
        kept.append(RestartRequired("observability.tracing", "the tracer is built at start"))
    return result, kept


def changed_sections(old: Config, new: Config) -> list[str]:
    """Top-level sections that differ (for the reload log line)."""
    return [("global" if name == "global_" else name) for name in type(new).model_fields
            if getattr(old, name) != getattr(new, name)]
