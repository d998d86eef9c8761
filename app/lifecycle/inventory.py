"""What every repository holds, read in one paginated walk of `repositories/` (on S3: one listing
request per 1,000 keys, rather than one per folder).

A key `repositories/<name>/<_part>/...` belongs to the namespace `<name>`: the path components before
the first one starting with `_` (a namespace component never does). Objects a driver keeps beside a
writer's key (`.checkpoint`, `.state`, `.tail-…`) are seen here only as files of an upload session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.grammar import DIGEST_RE, Digest
from app.storage import Storage, layout


@dataclass
class Repository:
    name: str
    # Revision folders, and whether each has its `link` (a folder without one: a push killed halfway,
    # or a link lost) and a stored media type.
    revisions: dict[Digest, bool] = field(default_factory=dict)
    media_types: set[Digest] = field(default_factory=set)
    layers: set[Digest] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)  # tags with a `current/link`
    tag_history: set[Digest] = field(default_factory=set)  # digests the tags' `index/` links name
    referrers: set[tuple[Digest, Digest]] = field(default_factory=set)  # (subject, referrer)
    uploads: dict[str, set[str]] = field(default_factory=dict)  # session id -> its files


@dataclass
class Inventory:
    repositories: dict[str, Repository] = field(default_factory=dict)
    keys: int = 0

    def repository(self, name: str) -> Repository:
        found = self.repositories.get(name)
        if found is None:
            found = self.repositories[name] = Repository(name)
        return found

    def upload_sessions(self) -> list[tuple[str, str]]:
        return [(repo.name, upload_id) for repo in self.repositories.values() for upload_id in repo.uploads]


def _digest(algorithm: str, encoded: str) -> Digest | None:
    text = f"{algorithm}:{encoded}"
    return Digest.parse(text) if DIGEST_RE.fullmatch(text) else None


async def take(storage: Storage, progress: Callable[[int], None] | None = None) -> Inventory:
    inventory = Inventory()
    prefix = layout.REPOSITORIES + "/"
    async for key in storage.walk(layout.REPOSITORIES):
        inventory.keys += 1
        if progress is not None and inventory.keys % 1000 == 0:
            progress(1000)
        parts = key[len(prefix):].split("/")
        at = next((i for i, part in enumerate(parts) if part.startswith("_")), None)
        if not at:  # None (no `_` folder) or 0 (no namespace): not ours
            continue
        repo = inventory.repository("/".join(parts[:at]))
        section, rest = parts[at], parts[at + 1:]
        if section == "_uploads" and len(rest) >= 2:
            repo.uploads.setdefault(rest[0], set()).add("/".join(rest[1:]))
        elif section == "_layers" and len(rest) == 3 and rest[2] == "link":
            if (digest := _digest(rest[0], rest[1])) is not None:
                repo.layers.add(digest)
        elif section == "_manifests" and rest:
            _manifest_key(repo, rest)
    return inventory


def _manifest_key(repo: Repository, rest: list[str]) -> None:
    what = rest[0]
    if what == "revisions" and len(rest) == 4:
        digest = _digest(rest[1], rest[2])
        if digest is None:
            return
        if rest[3] == "link":
            repo.revisions[digest] = True
        else:
            repo.revisions.setdefault(digest, False)
            if rest[3] == "mediatype":
                repo.media_types.add(digest)
    elif what == "tags" and len(rest) == 4 and rest[2:] == ["current", "link"]:
        repo.tags.add(rest[1])
    elif what == "tags" and len(rest) == 6 and rest[2] == "index" and rest[5] == "link":
        if (digest := _digest(rest[3], rest[4])) is not None:
            repo.tag_history.add(digest)
    elif what == "referrers" and len(rest) == 6 and rest[5] == "link":
        subject, referrer = _digest(rest[1], rest[2]), _digest(rest[3], rest[4])
        if subject is not None and referrer is not None:
            repo.referrers.add((subject, referrer))


async def namespaces(storage: Storage) -> list[str]:
    """Every folder below `repositories/` holding a `_manifests` or `_layers` folder, listed now."""
    found: list[str] = []

    async def visit(name: str) -> None:
        children = await storage.list_dir(layout.repository(name) if name else layout.REPOSITORIES)
        if name and ("_manifests" in children or "_layers" in children):
            found.append(name)
        for child in children:
            if not child.startswith("_"):
                await visit(f"{name}/{child}" if name else child)

    await visit("")
    return found
