"""Token scopes (`repository:<name>:pull,push`), what each registry action needs, and what a token grants.

The Docker token protocol speaks of coarse actions per resource: `pull`, `push`, `delete` and `*` on
`repository:<name>`, and `*` on `registry:catalog`. Our policies speak of the fine actions of SPEC 6.1.
This module maps one onto the other; it does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app import errors
from app.grammar import NAME_RE

REPOSITORY = "repository"
REGISTRY = "registry"
CATALOG = "catalog"
TOKEN_ACTIONS = ("pull", "push", "delete")
MAX_SCOPES = 32
MAX_SCOPE_LENGTH = 512

# The policy actions a token action stands for: a token action is granted when the policy allows any of
# them (each request is still decided by the policy with all its variables; the token is a cap).
POLICY_ACTIONS: dict[str, tuple[str, ...]] = {
    # As distribution: every GET is a pull, also the status of an upload session.
    "pull": ("get-manifest", "get-blob", "list-tags", "get-referrers", "get-upload"),
    "push": ("put-manifest", "start-upload", "update-upload", "complete-upload", "cancel-upload",
             "mount-blob"),
    "delete": ("delete-manifest", "delete-blob", "delete-repository"),
}
# What each registry action needs from a token, on the request's namespace.
REQUIRED: dict[str, str] = {action: token_action for token_action, actions in POLICY_ACTIONS.items()
                            for action in actions}
# What a 401 asks for: clients request these actions when they fetch a token for the challenge.
_CHALLENGE_ACTIONS = {"pull": "pull", "push": "pull,push", "delete": "delete"}


@dataclass(frozen=True, slots=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Every scope of the `scope` parameters (each may hold several, space-separated).

    Resource types other than `repository` and `registry:catalog` are ignored (a token server grants
    nothing it does not know). A malformed entry is a client error.
    """
    scopes: list[Scope] = []
    for value in values:
        for text in value.split():
            if len(text) > MAX_SCOPE_LENGTH:
                raise errors.RegistryError(f"scope longer than {MAX_SCOPE_LENGTH} characters", status=400)
            resource, sep, actions = text.rpartition(":")
            kind, sep2, name = resource.partition(":")
            if not sep or not sep2 or not kind or not name:
                raise errors.RegistryError(f"invalid scope {text[:100]!r}: expected <type>:<name>:<actions>",
                                           status=400)
            kind = kind.split("(", 1)[0]  # `repository(plugin)` is a repository
            wanted = tuple(dict.fromkeys(a for a in actions.split(",") if a))
            if kind == REPOSITORY and NAME_RE.fullmatch(name) and len(name) <= 255:
                scopes.append(Scope(REPOSITORY, name, wanted))
            elif kind == REGISTRY and name == CATALOG:
                scopes.append(Scope(REGISTRY, CATALOG, wanted))
            if len(scopes) > MAX_SCOPES:
                raise errors.RegistryError(f"more than {MAX_SCOPES} scopes in one token request", status=400)
    return scopes


def challenge_scope(action: str, namespace: str | None) -> str | None:
    """The `scope` of a 401 for a request with this policy action (None: any valid token will do)."""
    if action == "list-catalog":
        return f"{REGISTRY}:{CATALOG}:*"
    needed = REQUIRED.get(action)
    if needed is None or namespace is None:
        return None
    return f"{REPOSITORY}:{namespace}:{_CHALLENGE_ACTIONS[needed]}"


class Grants:
    """What one token allows: `(type, name) -> actions`, from its `access` claim."""

    def __init__(self, access: Iterable[dict[str, Any]]) -> None:
        self._actions: dict[tuple[str, str], frozenset[str]] = {}
        for entry in access:
            kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
            if isinstance(kind, str) and isinstance(name, str) and isinstance(actions, list):
                key = (kind, name)
                self._actions[key] = self._actions.get(key, frozenset()) | {
                    a for a in actions if isinstance(a, str)}

    def allows(self, kind: str, name: str, action: str) -> bool:
        actions = self._actions.get((kind, name), frozenset())
        return action in actions or "*" in actions

    def covers(self, action: str, namespace: str | None) -> bool:
        """Whether a request with this policy action on `namespace` is within the token."""
        if action == "list-catalog":
            return self.allows(REGISTRY, CATALOG, "*")
        needed = REQUIRED.get(action)
        if needed is None:
            return True  # get-api-version, healthz, metrics: any valid token (the policy decides)
        return namespace is not None and self.allows(REPOSITORY, namespace, needed)


def access_claim(scopes: Iterable[Scope], granted: dict[Scope, tuple[str, ...]]) -> list[dict[str, Any]]:
    """The token's `access` claim: per requested resource, the granted actions (none → left out)."""
    merged: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        actions = granted.get(scope, ())
        if actions:
            bucket = merged.setdefault((scope.type, scope.name), [])
            bucket.extend(a for a in actions if a not in bucket)
    return [{"type": kind, "name": name, "actions": actions} for (kind, name), actions in merged.items()]


def scope_text(access: list[dict[str, Any]]) -> str:
    """The OAuth2 `scope` of a token answer: the granted access as a space-separated scope list."""
    return " ".join(f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access)
