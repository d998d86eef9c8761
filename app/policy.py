"""Access decisions for a routed request.

Zero-config (no policy, repository, identity or webhook configured anywhere): everything is allowed.
Otherwise the global policy applies when configured, then the policy of the repository the namespace
belongs to (a repository without one denies); a namespace outside every repository with no global
policy is refused as NAME_UNKNOWN for reads and writes alike.
"""

from __future__ import annotations

from app import errors
from app.config import AccessPolicy, Config
from app.http.router import Route
from app.repositories import RepositoryMap


class Authorizer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.repositories = RepositoryMap(config.repository)
        for policy in self._policies():
            if policy.rules:
                raise ValueError("access_policy rules (CEL) are not supported by this build yet; "
                                 "use default_allow only")

    def _policies(self) -> list[AccessPolicy]:
        found = [r.access_policy for r in self.config.repository.values() if r.access_policy]
        if self.config.global_.access_policy:
            found.append(self.config.global_.access_policy)
        return found

    def authorize(self, route: Route) -> None:
        if self.config.zero_config_access or route.kind in {"health", "ready"}:
            return
        global_policy = self.config.global_.access_policy
        if global_policy is not None and not self._allows(global_policy):
            raise errors.Denied()
        if route.namespace is None:
            if global_policy is None:
                raise errors.Denied()
            return
        membership = self.repositories.find(route.namespace)
        if membership is None:
            if global_policy is None:
                raise errors.NameUnknown(f"repository {route.namespace} is not known to the registry")
            return
        _prefix, repository = membership
        if repository.access_policy is None or not self._allows(repository.access_policy):
            raise errors.Denied()

    @staticmethod
    def _allows(policy: AccessPolicy) -> bool:
        return policy.default_allow
