"""UploadActor: owns the upload sessions (namespace, size, running hash, start time, lease).

Bytes never pass through here: a handler leases the session, streams the body to storage while it
updates the running hash it was handed, then releases the session with the new size and hash.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from app import errors
from app.actors.bridge import AsyncActor


class UploadBusy(errors.RegistryError):
    code = "BLOB_UPLOAD_INVALID"
    status = 409
    default_message = "another request is already writing to this upload session"


@dataclass
class Session:
    namespace: str
    size: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    started_at: float = field(default_factory=time.time)
    leased: bool = False


@dataclass(frozen=True)
class Lease:
    size: int
    hasher: Any
    started_at: float


class UploadActor(AsyncActor):
    def __init__(self) -> None:
        super().__init__()
        self._sessions: dict[str, Session] = {}

    def create(self, namespace: str, upload_id: str, started_at: float) -> None:
        self._sessions[upload_id] = Session(namespace, started_at=started_at)

    def lease(self, namespace: str, upload_id: str) -> Lease | None:
        """Exclusive use of a session; None when this process does not hold it (restart, replica)."""
        session = self._sessions.get(upload_id)
        if session is None:
            return None
        if session.namespace != namespace:
            raise errors.BlobUploadUnknown()
        if session.leased:
            raise UploadBusy()
        session.leased = True
        return Lease(session.size, session.hasher, session.started_at)

    def adopt(self, namespace: str, upload_id: str, size: int, hasher: Any, started_at: float) -> Lease:
        """Take over a session rebuilt from storage, leased to the caller that rebuilt it."""
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

    def forget(self, upload_id: str) -> None:
        """The session completed or was cancelled."""
        self._sessions.pop(upload_id, None)

    def status(self, namespace: str, upload_id: str) -> int | None:
        session = self._sessions.get(upload_id)
        if session is None or session.namespace != namespace:
            return None
        return session.size

    def count(self) -> int:
        return len(self._sessions)
