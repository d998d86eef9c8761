"""UploadActor: owns the upload sessions (namespace, size, running hash, start time, lease, client).

Bytes never pass through here: a handler leases the session, streams the body to storage while it
updates the running hash it was handed, then releases the session with the new size and hash.

It also owns what bounds them: the caps on open sessions (in all and per client), checked before a
session is created, and which sessions have been idle past `upload_timeout` (`expire_idle`). An expired
session stays refused (BLOB_UPLOAD_UNKNOWN) until its folder is gone (`expired`), so no request
revives it halfway through the removal.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app import errors
from app.actors.bridge import AsyncActor
from app.storage.resumable_hash import new_sha256

if TYPE_CHECKING:
    from app.config import GlobalConfig

# A client over its cap mostly waits for its own uploads to finish: a short, fixed hint.
RETRY_AFTER_SECONDS = 30


class UploadBusy(errors.RegistryError):
    code = "BLOB_UPLOAD_INVALID"
    status = 409
    default_message = "another request is already writing to this upload session"


@dataclass(frozen=True)
class UploadLimits:
    """How long an untouched session lives and how many may be open. Unconfigured: no limit."""

    timeout: float = math.inf
    max_sessions: int | None = None
    max_per_client: int | None = None

    @classmethod
    def of(cls, settings: GlobalConfig) -> UploadLimits:
        return cls(settings.upload_timeout, settings.max_upload_sessions,
                   settings.max_upload_sessions_per_client)


@dataclass
class Session:
    namespace: str
    size: int = 0
    hasher: Any = field(default_factory=new_sha256)
    started_at: float = field(default_factory=time.time)
    leased: bool = False
    client: str | None = None  # None: adopted from storage (restart, replica): counted in all only
    touched: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Lease:
    size: int
    hasher: Any
    started_at: float


class UploadActor(AsyncActor):
    def __init__(self, limits: UploadLimits | None = None) -> None:
        super().__init__()
        self._sessions: dict[str, Session] = {}
        self._per_client: dict[str, int] = {}  # open sessions of each client; no entry at zero
        self._expiring: set[str] = set()  # expired, their folders being removed
        self._limits = limits or UploadLimits()

    def configure(self, limits: UploadLimits) -> None:
        self._limits = limits

    # --- sessions -------------------------------------------------------------------------------
    def create(self, namespace: str, upload_id: str, started_at: float, client: str | None = None) -> None:
        """Admit a new session, before anything of it is stored: 429 when a cap is reached."""
        limits = self._limits
        if limits.max_sessions is not None and len(self._sessions) >= limits.max_sessions:
            raise errors.TooManyRequests(
                f"the registry has {len(self._sessions)} upload sessions open, its limit "
                "(max_upload_sessions); finish or cancel some, or retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if client is not None:
            open_sessions = self._per_client.get(client, 0)
            if limits.max_per_client is not None and open_sessions >= limits.max_per_client:
                raise errors.TooManyRequests(
                    f"this client has {open_sessions} upload sessions open, its limit "
                    "(max_upload_sessions_per_client); finish or cancel some, or retry later",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            self._per_client[client] = open_sessions + 1
        self._sessions[upload_id] = Session(namespace, started_at=started_at, client=client)

    def lease(self, namespace: str, upload_id: str) -> Lease | None:
        """Exclusive use of a session; None when this process does not hold it (restart, replica)."""
        self._refuse_expiring(upload_id)
        session = self._sessions.get(upload_id)
        if session is None:
            return None
        if session.namespace != namespace:
            raise errors.BlobUploadUnknown()
        if session.leased:
            raise UploadBusy()
        session.leased = True
        session.touched = time.monotonic()
        return Lease(session.size, session.hasher, session.started_at)

    def adopt(self, namespace: str, upload_id: str, size: int, hasher: Any, started_at: float) -> Lease:
        """Take over a session rebuilt from storage, leased to the caller that rebuilt it."""
        self._refuse_expiring(upload_id)
        if upload_id in self._sessions:
            raise UploadBusy()
        self._sessions[upload_id] = Session(namespace, size, hasher, started_at, leased=True)
        return Lease(size, hasher, started_at)

    def release(self, upload_id: str, size: int, hasher: Any) -> None:
        session = self._sessions.get(upload_id)
        if session is not None:
            session.size = size
            session.hasher = hasher
            session.leased = False
            session.touched = time.monotonic()

    def forget(self, upload_id: str) -> None:
        """The session completed or was cancelled (or its state is doubtful): its slot is free."""
        session = self._sessions.pop(upload_id, None)
        if session is not None:
            self._free(session)

    def status(self, namespace: str, upload_id: str) -> int | None:
        self._refuse_expiring(upload_id)
        session = self._sessions.get(upload_id)
        if session is None or session.namespace != namespace:
            return None
        return session.size

    def holds(self, upload_id: str) -> bool:
        """Whether this process has the session (open, or expired and being removed)."""
        return upload_id in self._sessions or upload_id in self._expiring

    def count(self) -> int:
        return len(self._sessions)

    # --- expiry ---------------------------------------------------------------------------------
    def expire_idle(self, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` sessions untouched for `upload_timeout` (never one being written to): they
        are refused from now on, and returned as (namespace, id) for their folders to be removed."""
        deadline = time.monotonic() - self._limits.timeout
        idle = [upload_id for upload_id, session in self._sessions.items()
                if not session.leased and session.touched < deadline][:limit]
        expired = []
        for upload_id in idle:
            session = self._sessions.pop(upload_id)
            self._free(session)
            self._expiring.add(upload_id)
            expired.append((session.namespace, upload_id))
        return expired

    def expired(self, upload_ids: list[str]) -> None:
        """Their folders are gone: an id asked for again is looked up in storage (and not found)."""
        self._expiring.difference_update(upload_ids)

    def _refuse_expiring(self, upload_id: str) -> None:
        if upload_id in self._expiring:
            raise errors.BlobUploadUnknown("the upload session expired (upload_timeout)")

    def _free(self, session: Session) -> None:
        if session.client is None:
            return
        left = self._per_client.get(session.client, 0) - 1
        if left > 0:
            self._per_client[session.client] = left
        else:
            self._per_client.pop(session.client, None)
