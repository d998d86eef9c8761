"""UploadExpiry's scan of stored sessions over real fs storage and real actors (no HTTP)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.actors.supervisor import start_actors
from app.actors.uploads import UploadLimits
from app.services.blobs import BlobService
from app.services.upload_expiry import UploadExpiry, sweep_interval
from app.services.uploads import UploadService
from app.storage.fs import FsStorage

REPOSITORIES = "docker/registry/v2/repositories"
# Nested namespaces, and names whose string order differs from the depth-first order ("a-x" < "a/b").
NAMESPACES = ["a", "a/b", "a/b/c", "a-x", "m", "z/y/x"]


@pytest.fixture
async def expiry(tmp_path: Path) -> AsyncIterator[UploadExpiry]:
    storage = FsStorage(tmp_path)
    actors = start_actors()
    uploads = UploadService(storage, actors.uploads, actors.locks, BlobService(storage), 64 * 1024)
    uploads.configure(UploadLimits(timeout=3600))
    try:
        yield UploadExpiry(uploads, budget=4)
    finally:
        await storage.close()


def _stored_sessions(root: Path, per_namespace: int) -> set[Path]:
    made = set()
    for name in NAMESPACES:
        for _ in range(per_namespace):
            folder = root / REPOSITORIES / name / "_uploads" / str(uuid.uuid4())
            folder.mkdir(parents=True)
            (folder / "startedat").write_text("2020-01-01T00:00:00Z")
            made.add(folder)
        (root / REPOSITORIES / name / "_manifests").mkdir(parents=True, exist_ok=True)
    return made


async def test_a_paginated_scan_visits_every_stored_session_once(tmp_path: Path,
                                                                 expiry: UploadExpiry) -> None:
    made = _stored_sessions(tmp_path, 5)
    held = await expiry.uploads.start("a/b")  # this process's own: never removed by the scan
    cursor, removed_total, runs = None, 0, 0
    later = time.time() + 10  # everything is older than this deadline
    while True:
        cursor, removed = await expiry.scan(cursor, expiry.budget, later)
        removed_total += removed
        runs += 1
        if cursor is None:
            break
    assert removed_total == len(made)
    assert runs > len(made) // expiry.budget  # each run stopped at its budget
    left = {p for p in (tmp_path / REPOSITORIES).glob("**/_uploads/*")}
    assert left == {tmp_path / REPOSITORIES / "a/b/_uploads" / held}
    assert all((tmp_path / REPOSITORIES / name / "_manifests").is_dir() for name in NAMESPACES)


async def test_a_scan_keeps_sessions_touched_since_the_deadline(tmp_path: Path, expiry: UploadExpiry) -> None:
    made = _stored_sessions(tmp_path, 2)
    cursor, removed = await expiry.scan(None, 1000, time.time() - 60)
    assert (cursor, removed) == (None, 0)
    assert {p for p in (tmp_path / REPOSITORIES).glob("**/_uploads/*")} == made


def test_sweep_interval_is_an_eighth_of_the_timeout_within_bounds() -> None:
    assert sweep_interval(2) == 1.0
    assert sweep_interval(80) == 10.0
    assert sweep_interval(86400) == 600.0
