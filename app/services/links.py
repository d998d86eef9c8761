"""Reading and writing distribution's link files (each holds a bare digest)."""

from __future__ import annotations

from app.grammar import DIGEST_RE, Digest
from app.storage import NotFound, Storage


async def read_link(storage: Storage, key: str) -> Digest | None:
    """The digest a link file names; None when absent or unreadable garbage."""
    try:
        text = (await storage.get(key)).decode("ascii", "replace").strip()
    except NotFound:
        return None
    if DIGEST_RE.fullmatch(text) is None:
        return None
    return Digest.parse(text)


async def write_link(storage: Storage, key: str, digest: Digest) -> None:
    await storage.put(key, str(digest).encode("ascii"))
