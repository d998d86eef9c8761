"""The names of the locks that guard the storage layout, built in one place beside it (app/storage/layout.py).

Every writer of a key takes the lock named here for it, whatever process or replica it runs in, so
the names are part of the storage format: change them only together with every lock store.
"""

from __future__ import annotations

from app.grammar import Digest


def blob(digest: Digest) -> str:
    """Committing a blob's data (an upload or a pull-through fetch)."""
    return f"blob:{digest}"


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
