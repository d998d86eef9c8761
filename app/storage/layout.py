"""The storage keys of CNCF distribution 2.x (so a `registry:2` data directory is served in place),
plus what this product adds where distribution does not look. Keys use `/` on every platform."""

from __future__ import annotations

from app.grammar import Digest

ROOT = "docker/registry/v2"
BLOBS = f"{ROOT}/blobs"
REPOSITORIES = f"{ROOT}/repositories"
# Temporary objects for atomic writes; outside distribution's tree so it never sees them.
TMP = "tmp"
# The token service's signing secret when no key file is configured: generated once, shared by every
# replica.
TOKEN_SIGNING_SECRET = "token/signing-secret"
# `registry scrub`: blobs whose bytes do not match their digest, moved out of distribution's tree (so
# clients get 404, not corrupt bytes) and kept for an operator to look at (docs/gc.md).
QUARANTINE = "quarantine"
# `registry server --admin`: the Argon2 hash of the generated admin password, kept from the first start.
ADMIN_PASSWORD_HASH = "auth/admin-password.phc"


def blob_data(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layer_link(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_layers/{digest.algorithm}/{digest.hex}/link"


def manifests_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests"


def revisions_dir(name: str, algorithm: str = "sha256") -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions/{algorithm}"


def revision_dir(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions/{digest.algorithm}/{digest.hex}"


def revision_link(name: str, digest: Digest) -> str:
    return f"{revision_dir(name, digest)}/link"


def revision_media_type(name: str, digest: Digest) -> str:
    """Ours: the media type the manifest was pushed with (distribution only reads `link` here)."""
    return f"{revision_dir(name, digest)}/mediatype"


def tags_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_link(name: str, tag: str, digest: Digest) -> str:
    return f"{tag_dir(name, tag)}/index/{digest.algorithm}/{digest.hex}/link"


def tag_fetched_at(name: str, tag: str) -> str:
    """Ours: when a pull-through tag was last fetched or revalidated upstream (distribution ignores it)."""
    return f"{tag_dir(name, tag)}/fetchedat"


def tag_pulled_at(name: str, tag: str) -> str:
    """Ours: when the tag was last pulled (a GET by tag), decimal seconds since the epoch (retention;
    written in batches by app/services/pull_times.py; distribution only reads `current/` and `index/`)."""
    return f"{tag_dir(name, tag)}/pulledat"


def revision_pulled_at(name: str, digest: Digest) -> str:
    """Ours: when the revision was last pulled by digest, decimal seconds since the epoch (a tag's last
    pull is the later of its own and its current revision's: containerd resolves a tag with HEAD and
    then GETs by digest)."""
    return f"{revision_dir(name, digest)}/pulledat"


def referrers_dir(name: str, subject: Digest) -> str:
    """Ours: `_manifests/referrers/<alg>/<subject>/<alg>/<referrer>/link`."""
    return f"{REPOSITORIES}/{name}/_manifests/referrers/{subject.algorithm}/{subject.hex}"


def referrer_link(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrers_dir(name, subject)}/{referrer.algorithm}/{referrer.hex}/link"


def uploads_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def upload_verify(name: str, upload_id: str) -> str:
    """Ours: a completed session's bytes, read back to verify a digest other than sha256."""
    return f"{upload_dir(name, upload_id)}/verify"


def upload_started_at(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


def quarantine_data(digest: Digest) -> str:
    return f"{QUARANTINE}/{digest.algorithm}/{digest.hex}/data"


def quarantine_note(digest: Digest) -> str:
    """Ours: why and when `registry scrub` moved the blob here (JSON)."""
    return f"{QUARANTINE}/{digest.algorithm}/{digest.hex}/note.json"
