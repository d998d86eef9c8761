"""Immutable tags (SPEC 7): once pushed, a tag may not be moved to another manifest.

Effective when `immutable_tags` is true for the repository a namespace belongs to (nested namespaces
included) or, when the repository does not say, globally. A tag is exempt when one of the exclusion
regexes matches it (searched anywhere in the tag, as regex engines do: anchor with `^…$` for a whole
tag): the repository's list when it is not empty, else the global list.
"""

from __future__ import annotations

import re

from app.config import Config
from app.repositories import RepositoryMap


def compile_exclusions(patterns: list[str]) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"exclusion {pattern!r} is not a valid regular expression: {exc}") from None
    return compiled


class ImmutableTags:
    def __init__(self, config: Config) -> None:
        self._repositories = RepositoryMap(config.repository)
        self._global = config.global_.immutable_tags
        self._global_exclusions = compile_exclusions(config.global_.immutable_tags_exclusions)
        self._exclusions = {prefix: compile_exclusions(r.immutable_tags_exclusions)
                            for prefix, r in config.repository.items()}
        self.enabled_anywhere = self._global or any(r.immutable_tags for r in config.repository.values())

    def applies(self, namespace: str, tag: str) -> bool:
        """Whether `tag` in `namespace` may not be overwritten with a different manifest."""
        if not self.enabled_anywhere:
            return False
        enabled, exclusions = self._global, self._global_exclusions
        membership = self._repositories.find(namespace)
        if membership is not None:
            prefix, repository = membership
            if repository.immutable_tags is not None:
                enabled = repository.immutable_tags
            exclusions = self._exclusions[prefix] or exclusions
        return enabled and not any(pattern.search(tag) for pattern in exclusions)
