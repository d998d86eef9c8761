"""Two `registry server` processes on one store (one folder, or one S3 bucket): an upload session is
the store's, not a process's memory (issue 12, step 1).

The session below is written by both servers in turn; a server that trusted what it last saw of the
session (its size and running hash) would append at the wrong place or answer DIGEST_INVALID for the
client's correct blob.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.moto import MotoServer
from tests.helpers.server import RegistryProcess, toml_value
from tests.helpers.stores import new_s3_store, s3_section


@pytest.fixture(params=["fs", "s3"])
def two_servers(request: pytest.FixtureRequest,
                tmp_path: Path) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    if request.param == "fs":
        section = f"[blob_store.fs]\nroot_dir = {toml_value(tmp_path / 'shared')}\n"
    else:
        moto: MotoServer = request.getfixturevalue("moto_server")
        section = s3_section(new_s3_store(moto.endpoint), multipart_part_size=5 * 1024 * 1024)
    servers = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        servers.append(RegistryProcess(workdir, section).start())
    yield servers[0], servers[1]
    for server in servers:
        server.kill()


def _patch(server: RegistryProcess, location: str, data: bytes, start: int) -> str:
    response = server.request("PATCH", location, data=data, headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{start + len(data) - 1}",
        "Content-Length": str(len(data))})
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == f"0-{start + len(data) - 1}"
    return str(response.headers["Location"])


def test_a_session_continues_on_whichever_server_gets_the_next_request(
        two_servers: tuple[RegistryProcess, RegistryProcess]) -> None:
    a, b = two_servers
    # Three parts, each past the S3 minimum part size: every server writes real parts.
    parts = [os.urandom(6 * 1024 * 1024), os.urandom(6 * 1024 * 1024), os.urandom(1234)]
    blob = b"".join(parts)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    started = a.post("/v2/shared/app/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    location = _patch(a, location, parts[0], 0)           # A writes, and remembers the session
    location = _patch(b, location, parts[1], len(parts[0]))  # B continues it from the store
    status = a.get(location)                               # A must see what B wrote
    assert status.status_code == 204 and status.headers["Range"] == f"0-{len(parts[0]) + len(parts[1]) - 1}"
    location = _patch(a, location, parts[2], len(parts[0]) + len(parts[1]))
    separator = "&" if "?" in location else "?"
    done = a.put(f"{location}{separator}digest={digest}")
    assert done.status_code == 201, done.text
    for server in (a, b):
        fetched = server.get(f"/v2/shared/app/blobs/{digest}")
        assert fetched.status_code == 200 and fetched.content == blob


def test_a_range_the_other_server_already_wrote_is_refused_and_nothing_is_lost(
        two_servers: tuple[RegistryProcess, RegistryProcess]) -> None:
    a, b = two_servers
    first, second = os.urandom(300_000), os.urandom(200_000)
    location = a.post("/v2/shared/app/blobs/uploads/").headers["Location"]
    location = _patch(a, location, first, 0)
    location = _patch(b, location, second, len(first))
    # A client retrying its second part on A, as if B's write had not happened: refused (416) with
    # where the session stands, never appended again.
    end = len(first) + len(second) - 1
    again = a.request("PATCH", location, data=second, headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"{len(first)}-{end}",
        "Content-Length": str(len(second))})
    assert again.status_code == 416, again.text
    assert again.headers["Range"] == f"0-{len(first) + len(second) - 1}"
    digest = "sha256:" + hashlib.sha256(first + second).hexdigest()
    separator = "&" if "?" in location else "?"
    done = b.put(f"{location}{separator}digest={digest}")
    assert done.status_code == 201, done.text
    assert a.get(f"/v2/shared/app/blobs/{digest}").content == first + second
