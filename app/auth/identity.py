"""The authenticated caller as policies, webhooks and decision caches see it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.auth.scopes import Grants


@dataclass(frozen=True)
class Identity:
    """Everything known about a caller. Absent values are None or empty, never missing.

    `grants` is set when the caller presented one of our bearer tokens: what that token allows. It is
    a cap on top of the policy, not part of who the caller is, so decision caches ignore it.
    """

    id: str | None = None
    username: str | None = None
    client_ip: str | None = None
    common_names: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    oidc_provider: str | None = None
    oidc_claims: dict[str, Any] = field(default_factory=dict)
    groups: tuple[str, ...] = ()
    grants: Grants | None = field(default=None, compare=False, repr=False)

    @property
    def anonymous(self) -> bool:
        """No credential of any kind was presented (a denial then asks for credentials: 401)."""
        return (self.id is None and self.username is None and self.oidc_provider is None
                and not self.common_names and not self.organizations)

    @property
    def oidc_subject(self) -> str | None:
        subject = self.oidc_claims.get("sub")
        return subject if isinstance(subject, str) else None

    @property
    def subject(self) -> str:
        """A readable name for logs and the token's `sub`: username, provider:subject, CN, or ''."""
        if self.username is not None:
            return self.username
        if self.oidc_provider is not None:
            return f"{self.oidc_provider}:{self.oidc_subject or ''}"
        if self.common_names:
            return self.common_names[0]
        return ""

    @cached_property
    def cache_key(self) -> str:
        """A stable text naming every field, for decision caches (claims included, sorted)."""
        return json.dumps([self.id, self.username, self.client_ip, self.common_names, self.organizations,
                           self.oidc_provider, self.oidc_claims, self.groups], sort_keys=True, default=str)

    def as_variables(self) -> dict[str, Any]:
        """The `identity` variable of access policies (SPEC 6.1)."""
        return {
            "id": self.id,
            "username": self.username,
            "groups": list(self.groups),
            "client_ip": self.client_ip,
            "certificate": {"common_names": list(self.common_names),
                            "organizations": list(self.organizations)},
            "oidc": {"provider_name": self.oidc_provider, "claims": self.oidc_claims},
        }
