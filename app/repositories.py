"""Which configured repository (policy unit) a namespace belongs to: the longest matching prefix."""

from __future__ import annotations

from app.config import RepositoryConfig


class RepositoryMap:
    def __init__(self, repositories: dict[str, RepositoryConfig]) -> None:
        # Longest prefix first, so the first match wins.
        self._ordered = sorted(repositories.items(), key=lambda item: len(item[0]), reverse=True)

    def find(self, namespace: str) -> tuple[str, RepositoryConfig] | None:
        for prefix, repository in self._ordered:
            if namespace == prefix or namespace.startswith(prefix + "/"):
                return prefix, repository
        return None
