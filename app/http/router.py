"""Turns a request's raw path into a Route once: resource kind, policy action, name, reference.

Matching runs on the raw request target (before any percent-decoding or dot-segment folding), so
`%2F`, `%2e%2e`, `..` and backslashes reach the grammar checks as written and fail them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app import errors
from app.grammar import Digest, parse_reference, validate_name, validate_tag

_V2 = re.compile(r"/v2/?")
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("upload_start", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?")),
    ("upload", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<uuid>[^/]+)")),
    ("blob", re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)")),
    ("manifest", re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)")),
    ("tags", re.compile(r"/v2/(?P<name>.+)/tags/list")),
    ("referrers", re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)")),
    # Ours, in the OCI extensions' style (`/v2/<name>/_<namespace>/...`): no name component can start
    # with `_`, so no OCI route and no repository name can collide with it (docs/repositories.md).
    ("repository", re.compile(r"/v2/(?P<name>.+)/_registry/repository")),
]
_UUID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")

ACTIONS: dict[tuple[str, str], str] = {
    ("base", "GET"): "get-api-version",
    ("catalog", "GET"): "list-catalog",
    ("tags", "GET"): "list-tags",
    ("manifest", "GET"): "get-manifest",
    ("manifest", "PUT"): "put-manifest",
    ("manifest", "DELETE"): "delete-manifest",
    ("blob", "GET"): "get-blob",
    ("blob", "DELETE"): "delete-blob",
    ("upload_start", "POST"): "start-upload",
    ("upload", "GET"): "get-upload",
    ("upload", "PATCH"): "update-upload",
    ("upload", "PUT"): "complete-upload",
    ("upload", "DELETE"): "cancel-upload",
    ("referrers", "GET"): "get-referrers",
    ("repository", "DELETE"): "delete-repository",
    ("health", "GET"): "healthz",
    ("ready", "GET"): "healthz",
    ("metrics", "GET"): "metrics",
    # The token service: not a policy action (it answers everyone with what the policy grants them).
    ("token", "GET"): "get-token",
    ("token", "POST"): "get-token",
}

_PLAIN = {"/healthz": "health", "/health": "health", "/readyz": "ready", "/metrics": "metrics",
          "/token": "token"}


@dataclass(frozen=True, slots=True)
class Route:
    kind: str
    action: str
    namespace: str | None = None
    digest: Digest | None = None
    reference: Digest | str | None = None
    upload_id: str | None = None

    @property
    def tag(self) -> str | None:
        return self.reference if isinstance(self.reference, str) else None


def _match(path: str) -> tuple[str, dict[str, str]]:
    if path in _PLAIN:
        return _PLAIN[path], {}
    if _V2.fullmatch(path):
        return "base", {}
    if path == "/v2/_catalog":
        return "catalog", {}
    if path.startswith("/v2/"):
        for kind, pattern in _PATTERNS:
            match = pattern.fullmatch(path)
            if match:
                return kind, match.groupdict()
    raise errors.NotFound(f"no such endpoint: {path[:200]}")


_ABSOLUTE_FORM = re.compile(r"(?i)https?://[^/?#]*")


def origin_form(raw_target: str) -> str:
    """The path (and query) of a request target: RFC 9112 requires servers to accept the absolute form
    (`GET http://host/v2/ HTTP/1.1`, what some proxies send), whose authority says nothing here."""
    match = _ABSOLUTE_FORM.match(raw_target)
    if match is None:
        return raw_target
    rest = raw_target[match.end():]
    return rest if rest.startswith("/") else "/" + rest


def resolve(method: str, raw_path: str, mount: bool = False) -> Route:
    path = origin_form(raw_path).split("?", 1)[0]
    kind, parts = _match(path)
    verb = "GET" if method == "HEAD" else method
    action = ACTIONS.get((kind, verb))
    if action is None:
        raise errors.MethodNotAllowed(f"{method} is not allowed on this endpoint")
    if kind == "upload_start" and mount:
        action = "mount-blob"
    namespace = validate_name(parts["name"]) if "name" in parts else None
    digest = Digest.parse(parts["digest"]) if "digest" in parts else None
    reference = None
    if "reference" in parts:
        try:
            reference = parse_reference(parts["reference"])
        except errors.TagInvalid:
            if verb == "PUT":
                raise
            # No manifest can have this name, so reading or deleting it finds none (the OCI conformance
            # suite's ".INVALID_MANIFEST_NAME"); only a PUT is told that the tag itself is invalid.
            raise errors.ManifestUnknown(f"no manifest is named {parts['reference'][:200]!r}") from None
    upload_id = parts.get("uuid")
    if upload_id is not None and not _UUID_RE.fullmatch(upload_id):
        raise errors.BlobUploadUnknown(f"invalid upload id {upload_id[:100]!r}")
    return Route(kind, action, namespace, digest, reference, upload_id)


def validate_last_tag(value: str) -> str:
    return validate_tag(value)
