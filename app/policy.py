"""Access decisions for a routed, authenticated request (SPEC 6).

Zero-config (no policy, repository, identity or webhook configured anywhere): everything is allowed.
Otherwise the global policy applies when configured, then the policy of the repository the namespace
belongs to (a repository without one denies), then the authorization webhook. A namespace outside
every repository with no global policy is refused as NAME_UNKNOWN for reads and writes alike.

CEL decisions are cached for `DECISION_TTL` seconds per (identity, action, namespace) when the
policies involved read nothing else of the request. A denied anonymous caller gets 401 with a
challenge (so that clients send credentials), an authenticated one 403 DENIED.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict, CIMultiDictProxy

from app import errors
from app.auth.identity import Identity
from app.config import Config
from app.repositories import RepositoryMap
from app.ttlcache import TTLCache
from app.webhook import WebhookClient

log = logging.getLogger("registry.policy")

DECISION_TTL = 5.0
DECISION_CACHE_SIZE = 10_000
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """What a policy and a webhook may look at (SPEC 6.1 `request.*`, plus the HTTP details)."""

    action: str
    namespace: str | None = None
    digest: str | None = None
    reference: str | None = None
    uuid: str | None = None
    n: int | None = None
    last: str | None = None
    artifact_type: str | None = None
    from_: str | None = None
    method: str = "GET"
    scheme: str = "http"
    host: str = ""
    uri: str = ""
    headers: CIMultiDictProxy[str] = field(default_factory=lambda: _NO_HEADERS)

    def variables(self) -> dict[str, Any]:
        return {"action": self.action, "namespace": self.namespace, "digest": self.digest,
                "reference": self.reference, "uuid": self.uuid, "n": self.n, "last": self.last,
                "artifact_type": self.artifact_type, "from": self.from_}


if TYPE_CHECKING:
    from app.auth.scopes import Scope
    from app.cel_policy import CompiledPolicy


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    NAME_UNKNOWN = "name-unknown"


class Authorizer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.repositories = RepositoryMap(config.repository)
        self.accepts_credentials = bool(config.auth.identity or config.auth.oidc)
        global_policy = config.global_.access_policy
        if global_policy is not None or any(r.access_policy for r in config.repository.values()):
            # The policy classes; cel-python itself is imported only once some policy has rules.
            from app.cel_policy import CompiledPolicy
        self.global_policy = CompiledPolicy(global_policy, "global.access_policy") if global_policy else None
        self.policies = {
            prefix: CompiledPolicy(repository.access_policy, f'repository."{prefix}".access_policy')
            for prefix, repository in config.repository.items() if repository.access_policy is not None}
        self.webhooks = {name: WebhookClient(name, webhook) for name, webhook in config.auth.webhook.items()}
        self.decisions: TTLCache[Decision] = TTLCache(DECISION_CACHE_SIZE, DECISION_TTL)
        if not config.zero_config_access and global_policy is None and not config.repository:
            log.warning("identities, OIDC providers or a webhook are configured but no access policy: every "
                        "namespace is refused (404 NAME_UNKNOWN); add [global.access_policy] or repositories")
        global_cacheable = self.global_policy is None or self.global_policy.cacheable
        self._cacheable = {prefix: global_cacheable and all(p.cacheable for p in self._policies_of(prefix))
                           for prefix in config.repository}
        self._global_cacheable = global_cacheable

    def _policies_of(self, prefix: str) -> list[CompiledPolicy]:
        policy = self.policies.get(prefix)
        return [policy] if policy is not None else []

    @property
    def namespace_independent(self) -> bool:
        """Whether a decision can never depend on the namespace (mount without `from` relies on it)."""
        if self.config.zero_config_access:
            return True
        return (not self.config.repository and self.global_policy is not None
                and not self.global_policy.reads_namespace and not self.config.global_.authorization_webhook)

    # --- deciding -----------------------------------------------------------------------------
    async def authorize(self, identity: Identity, access: AccessRequest) -> None:
        """Return when allowed; raise 401 (anonymous), 403 DENIED or 404 NAME_UNKNOWN otherwise."""
        if self.config.zero_config_access or self._superuser(identity):
            return
        membership = self.repositories.find(access.namespace) if access.namespace is not None else None
        decision = self._decide(identity, access, membership)
        if decision is Decision.NAME_UNKNOWN:
            raise errors.NameUnknown(f"repository {access.namespace} is not known to the registry")
        if decision is Decision.DENY:
            raise self.denied(identity)
        webhook = self._webhook_for(membership)
        if webhook is not None and not await webhook.allows(identity, access):
            raise self.denied(identity)

    async def permits(self, identity: Identity, access: AccessRequest) -> bool:
        try:
            await self.authorize(identity, access)
        except errors.RegistryError:
            return False
        return True

    def denied(self, identity: Identity) -> errors.RegistryError:
        if identity.anonymous:
            return errors.Unauthorized("authentication required")  # the challenge is added per request
        return errors.Denied("requested access to the resource is denied")

    # --- what a token may carry ----------------------------------------------------------------
    def granted(self, identity: Identity, scope: Scope) -> tuple[str, ...]:
        """The actions of `scope` the access policies grant this identity (the token service's answer).

        A token action is granted when the policies allow any of the registry actions it stands for,
        judged on identity, action and namespace alone; every request bearing the token is decided
        again with all its variables, and by the webhook, so the token only ever narrows access.
        """
        from app.auth.scopes import POLICY_ACTIONS, REGISTRY, TOKEN_ACTIONS

        if scope.type == REGISTRY:
            return ("*",) if "*" in scope.actions and self.allows(identity, "list-catalog", None) else ()
        everything = "*" in scope.actions
        wanted = [action for action in TOKEN_ACTIONS if everything or action in scope.actions]
        granted = [action for action in wanted
                   if any(self.allows(identity, fine, scope.name) for fine in POLICY_ACTIONS[action])]
        if everything and len(granted) == len(TOKEN_ACTIONS):
            granted.append("*")
        return tuple(granted)

    def allows(self, identity: Identity, action: str, namespace: str | None) -> bool:
        """The CEL decision alone (no webhook) for this identity, action and namespace."""
        if self.config.zero_config_access or self._superuser(identity):
            return True
        membership = self.repositories.find(namespace) if namespace is not None else None
        return self._decide(identity, AccessRequest(action=action, namespace=namespace),
                            membership) is Decision.ALLOW

    def _decide(self, identity: Identity, access: AccessRequest,
                membership: tuple[str, Any] | None) -> Decision:
        cacheable = self._cacheable[membership[0]] if membership is not None else self._global_cacheable
        if not cacheable:
            return self._evaluate(identity, access, membership)
        key = (identity.cache_key, access.action, access.namespace)
        cached = self.decisions.get(key)
        if cached is None:
            cached = self._evaluate(identity, access, membership)
            self.decisions.put(key, cached)
        return cached

    def _evaluate(self, identity: Identity, access: AccessRequest,
                  membership: tuple[str, Any] | None) -> Decision:
        variables: dict[str, Any] | None = None

        def allows(policy: CompiledPolicy) -> bool:
            nonlocal variables
            if not policy.rules:
                return policy.default_allow
            if variables is None:
                from app.cel_policy import activation

                variables = activation(identity.as_variables(), access.variables())
            return policy.allows(variables)

        if self.global_policy is not None and not allows(self.global_policy):
            return Decision.DENY
        if access.namespace is None:
            if self.global_policy is not None:
                return Decision.ALLOW
            return self._without_global_policy(identity, access.action)
        if membership is None:
            return Decision.ALLOW if self.global_policy is not None else Decision.NAME_UNKNOWN
        policy = self.policies.get(membership[0])
        return Decision.ALLOW if policy is not None and allows(policy) else Decision.DENY

    def _without_global_policy(self, identity: Identity, action: str) -> Decision:
        """Actions outside any namespace when only repositories have policies.

        `GET /v2/` is answered to everyone, except that an anonymous caller is asked for credentials
        when the registry has identities or OIDC providers (that challenge is what makes `docker login`
        and `docker push` send them). The catalog and metrics need a global policy.
        """
        if action == "get-api-version":
            return Decision.DENY if identity.anonymous and self.accepts_credentials else Decision.ALLOW
        return Decision.DENY

    def _superuser(self, identity: Identity) -> bool:
        return identity.id is not None and identity.username is not None \
            and identity.id in self.config.auth.superusers

    def _webhook_for(self, membership: tuple[str, Any] | None) -> WebhookClient | None:
        name = self.config.global_.authorization_webhook
        if membership is not None and membership[1].authorization_webhook is not None:
            name = membership[1].authorization_webhook  # "" disables the global webhook here
        return self.webhooks.get(name) if name else None

    async def close(self) -> None:
        for webhook in self.webhooks.values():
            await webhook.close()

