"""The names of the locks that guard the storage layout, built in one place beside it (app/storage/layout.py).

Every writer of a key takes the lock named here for it, whatever process or replica it runs in, so
the names are part of the storage format: change them only together with every lock store.
"""

from __future__ import annotations

from app.grammar import Digest


def blob(digest: Digest) -> str:
    """Committing a blob's data (an upload or a pull-through fetch)."""
    return f"blob:{digest}"


# A manifest PUT that references more distinct digests than this holds their stripes (below) rather
# than one lock each: a bounded number of locks, however many layers (up to max_manifest_references).
PER_DIGEST_REFERENCES = 32
STRIPES = 256


def blob_stripe(digest: Digest) -> str:
    """The stripe of blobs a digest belongs to (the first two hex digits of its hash): held shared by a
    manifest PUT with many references instead of each blob's lock, exclusive by the GC sweeper with
    the blob's own lock. Sorts before every `blob:` name (`-` < `:`), which fixes the order of the two."""
    return f"blob-stripe:{digest.hex[:2]}"


def references(digests: set[Digest]) -> list[str]:
    """The locks a manifest PUT holds shared while it checks and writes what it references."""
    if len(digests) <= PER_DIGEST_REFERENCES:
        return [blob(digest) for digest in digests]
    return sorted({blob_stripe(digest) for digest in digests})


def sweeping(digests: list[Digest]) -> list[str]:
    """The locks the GC sweeper holds exclusive while it re-checks and deletes `digests`: each one's
    blob lock and stripe, so that it excludes PUTs of both kinds and commits of the blob."""
    return sorted({blob(digest) for digest in digests} | {blob_stripe(digest) for digest in digests})


def gc_leader() -> str:
    """The collector's: one GC sweep at a time among every replica (and `registry scrub`'s blob sweep)."""
    return "gc:leader"


def fetch(digest: Digest) -> str:
    """Fetching a blob from upstream (pull-through): held by the one process, of every replica sharing
    the lock store, that makes the upstream GET of this digest."""
    return f"fetch:{digest}"


def manifest(namespace: str, digest: Digest) -> str:
    """A manifest revision of a namespace: committing it (and the tags a PUT names) or deleting it."""
    return f"manifest:{namespace}:{digest}"


def tag(namespace: str, name: str) -> str:
    """Moving or deleting one tag."""
    return f"tag:{namespace}:{name}"


def upload(upload_id: str) -> str:
    """Appending to or completing one upload session."""
    return f"upload:{upload_id}"
