"""Bounded memory and disk (issue 10), against real server processes.

Lookups of unknown names and digests leave nothing behind; upload sessions expire when untouched for
`upload_timeout` (also those only in storage after a restart) and are capped per client and in all;
an invalid POST creates no session; orphaned temporary files go at start; the manifest index drops
namespaces beyond `index_max_namespaces` and stays correct.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import requests
from argon2 import PasswordHasher

from tests.helpers.oci import digest_of, make_image, push_blob, push_image
from tests.helpers.server import RegistryProcess

MiB = 1024 * 1024
REPOSITORIES = "docker/registry/v2/repositories"


def rss(server: RegistryProcess) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


Exchange = tuple[str, str, dict[str, str], bytes]  # method, target, headers, body


async def _exchange_all(port: int, exchanges: Sequence[Exchange],
                        connections: int = 16) -> list[tuple[int, dict[str, str]]]:
    """Send every request over `connections` keep-alive connections (a lean client, so the server is
    what the time is spent on); returns each status and its headers (lower-case names), in order."""
    results: list[tuple[int, dict[str, str]]] = [(0, {})] * len(exchanges)
    pending = iter(enumerate(exchanges))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for index, (method, target, headers, body) in pending:
                head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                writer.write(f"{method} {target} HTTP/1.1\r\nHost: registry\r\n{head}"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                answer = {name.lower(): value.strip()
                          for name, _, value in (line.partition(":") for line in lines[1:] if line)}
                await reader.readexactly(int(answer.get("content-length", "0")))
                results[index] = (int(lines[0].split()[1]), answer)
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return results


def exchange_all(server: RegistryProcess, exchanges: Sequence[Exchange]) -> list[tuple[int, dict[str, str]]]:
    return asyncio.run(_exchange_all(server.port, exchanges))


def gets(targets: Iterator[str] | list[str]) -> list[Exchange]:
    return [("GET", target, {}, b"") for target in targets]


def upload_folders(root: Path) -> list[Path]:
    """Every `_uploads/<id>` folder (os.walk: it shrugs off folders removed while it looks)."""
    found: list[Path] = []
    for folder, children, _files in os.walk(root / REPOSITORIES):
        if os.path.basename(folder) == "_uploads":
            found.extend(Path(folder) / child for child in children)
            children.clear()
    return sorted(found)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def servers() -> Iterator[list[RegistryProcess]]:
    """Servers a test starts (appended by the test), killed afterwards."""
    started_servers: list[RegistryProcess] = []
    yield started_servers
    for server in started_servers:
        server.kill()


def start(servers: list[RegistryProcess], workdir: Path, config: str = "") -> RegistryProcess:
    """A server on `workdir` (its data kept across servers) with `config`; quiet logs: these tests
    send many requests."""
    workdir.mkdir(exist_ok=True)
    server = RegistryProcess(workdir, config, env={"REGISTRY_LOG": "warning"})
    servers.append(server)
    return server.start()


# --- the manifest index -----------------------------------------------------------------------------
def test_unknown_names_and_digests_leave_no_memory_behind(servers: list[RegistryProcess],
                                                          tmp_path: Path) -> None:
    server = start(servers, tmp_path / "server")
    random_digests = ("sha256:" + hashlib.sha256(os.urandom(16)).hexdigest() for _ in iter(int, 1))
    # Warm-up: buffers, bounded caches and the allocator reach their working size first.
    warm = gets(f"/v2/warm-{i}/tags/list" for i in range(3000))
    warm += gets(f"/v2/known/referrers/{next(random_digests)}" for _ in range(3000))
    exchange_all(server, warm)
    time.sleep(1)
    before = rss(server)

    tag_lists = exchange_all(server, gets(f"/v2/u{uuid.uuid4().hex[:16]}/tags/list" for _ in range(30_000)))
    assert {status for status, _ in tag_lists} == {404}
    time.sleep(1)
    after_tags = rss(server)

    lookups = exchange_all(server, gets(f"/v2/known/referrers/{next(random_digests)}" for _ in range(30_000)))
    assert {status for status, _ in lookups} == {200}
    time.sleep(1)
    after_referrers = rss(server)

    growth = ((after_tags - before) / MiB, (after_referrers - after_tags) / MiB)
    assert growth[0] < 3, f"30,000 unknown names grew the server by {growth[0]:.1f} MiB"
    assert growth[1] < 3, f"30,000 unknown digests grew the server by {growth[1]:.1f} MiB"


def test_index_beyond_its_namespace_cap_reads_storage_again_and_stays_correct(
        servers: list[RegistryProcess], tmp_path: Path) -> None:
    server = start(servers, tmp_path / "server", "[global]\nindex_max_namespaces = 2\n")
    names = ["cap/a", "cap/b", "cap/c", "cap/d"]  # read in turn through a cache of two namespaces
    first = {name: make_image(annotations={"v": "1", "n": name}) for name in names}
    second = {name: make_image(first[name].layers, annotations={"v": "2", "n": name}) for name in names}

    def check(tags: list[str], v1: dict[str, bytes]) -> None:
        for _ in range(2):
            for name in names:
                listed = server.get(f"/v2/{name}/tags/list")
                assert listed.status_code == 200 and listed.json()["tags"] == tags, (name, listed.text)
                got = server.get(f"/v2/{name}/manifests/v1")
                assert got.status_code == 200 and got.content == v1[name], name

    for name in names:
        assert push_image(server.session, server.url, name, first[name], "v1").status_code == 201
    check(["v1"], {name: first[name].manifest for name in names})
    for name in names:  # a new tag and a moved one, while most namespaces are not cached
        assert push_image(server.session, server.url, name, second[name], "v2").status_code == 201
        moved = server.put(f"/v2/{name}/manifests/v1", data=second[name].manifest,
                           headers={"Content-Type": second[name].media_type})
        assert moved.status_code == 201
    check(["v1", "v2"], {name: second[name].manifest for name in names})
    for name in names:  # the first manifest (no tag names it any more) goes; then the tag v2
        assert server.delete(f"/v2/{name}/manifests/{first[name].digest}").status_code == 202
        assert server.delete(f"/v2/{name}/manifests/v2").status_code == 202
    for name in names:
        assert server.get(f"/v2/{name}/manifests/{first[name].digest}").status_code == 404
        assert server.get(f"/v2/{name}/manifests/v2").status_code == 404
    check(["v1"], {name: second[name].manifest for name in names})


# --- upload sessions --------------------------------------------------------------------------------
def _start_sessions(server: RegistryProcess, count: int, name: str,
                    headers: dict[str, str] | None = None) -> list[str]:
    answers = exchange_all(server, [("POST", f"/v2/{name}/blobs/uploads/", headers or {}, b"")] * count)
    assert [status for status, _ in answers] == [202] * count
    return [answer["docker-upload-uuid"] for _, answer in answers]


def _assert_unknown(server: RegistryProcess, name: str, upload_id: str) -> None:
    for method in ("GET", "PATCH", "PUT"):
        response = server.request(method, f"/v2/{name}/blobs/uploads/{upload_id}",
                                  params={"digest": digest_of(b"x")} if method == "PUT" else None, data=b"x")
        assert response.status_code == 404, (method, response.status_code, response.text)
        assert response.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_abandoned_sessions_expire_their_folders_go_and_their_slots_free(
        servers: list[RegistryProcess], tmp_path: Path) -> None:
    count = 10_000
    server = start(servers, tmp_path / "server", "[global]\nupload_timeout = \"2s\"\n"
                   f"max_upload_sessions = {count}\nmax_upload_sessions_per_client = {count}\n")
    with_data = _start_sessions(server, 200, "abandoned/app")
    patched = exchange_all(server, [("PATCH", f"/v2/abandoned/app/blobs/uploads/{upload_id}",
                                     {"Content-Type": "application/octet-stream"}, os.urandom(1024))
                                    for upload_id in with_data])
    assert {status for status, _ in patched} == {202}
    ids = with_data + _start_sessions(server, count - len(with_data), "abandoned/app")
    wait_until(lambda: not upload_folders(server.root), 60, "every abandoned session folder removed")
    for upload_id in (ids[0], with_data[-1], ids[-1]):
        _assert_unknown(server, "abandoned/app", upload_id)
    # The UploadActor forgot them: the whole cap is free again.
    assert len(_start_sessions(server, count, "abandoned/again")) == count


def test_a_session_in_use_does_not_expire(servers: list[RegistryProcess], tmp_path: Path) -> None:
    server = start(servers, tmp_path / "server", "[global]\nupload_timeout = \"2s\"\n")
    blob = os.urandom(10 * 1024)
    location = server.post("/v2/busy/app/blobs/uploads/").headers["Location"]
    idle = server.post("/v2/busy/app/blobs/uploads/").headers["Location"]
    for offset in range(0, len(blob), 1024):  # 10 PATCHes 0.5 s apart: 5 s, the timeout is 2 s
        patched = server.patch(location, data=blob[offset:offset + 1024], headers={
            "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + 1023}"})
        assert patched.status_code == 202, patched.text
        location = patched.headers["Location"]
        time.sleep(0.5)
    assert server.put(location, params={"digest": digest_of(blob)}).status_code == 201
    assert server.get(f"/v2/busy/app/blobs/{digest_of(blob)}").content == blob
    assert server.get(idle).status_code == 404


def test_sessions_left_in_storage_expire_after_a_restart(servers: list[RegistryProcess],
                                                         tmp_path: Path) -> None:
    workdir = tmp_path / "server"
    first = start(servers, workdir)
    through_api = _start_sessions(first, 20, "left/app")
    assert first.patch(f"/v2/left/app/blobs/uploads/{through_api[0]}", data=b"abc",
                       headers={"Content-Type": "application/octet-stream"}).status_code == 202
    first.kill()  # SIGKILL: nothing is cleaned up on the way out
    root = first.root / REPOSITORIES
    an_hour_ago = time.time() - 3600
    # Many more, in nested namespaces, as a killed process or another replica leaves them.
    names = [f"left/ns{i}" for i in range(10)] + [f"left/ns{i}/sub/deeper" for i in range(10)]
    for index in range(10_000):
        folder = root / names[index % len(names)] / "_uploads" / str(uuid.uuid4())
        folder.mkdir(parents=True)
        (folder / "startedat").write_text("2020-01-01T00:00:00Z")
        if index % 10 == 0:
            (folder / "data").write_bytes(b"partial")
            os.utime(folder / "data", (an_hour_ago, an_hour_ago))
        os.utime(folder / "startedat", (an_hour_ago, an_hour_ago))
    for upload_id in through_api:
        for file in (root / "left/app/_uploads" / upload_id).iterdir():
            os.utime(file, (an_hour_ago, an_hour_ago))
    fresh = _fresh_session(root / "left/ns3/_uploads")
    touched = _fresh_session(root / "left/ns4/sub/deeper/_uploads", old_start=an_hour_ago)

    second = start(servers, workdir, "[global]\nupload_timeout = \"30m\"\n")
    wait_until(lambda: len(upload_folders(second.root)) == 2, 60, "the sessions untouched for 30m removed")
    assert upload_folders(second.root) == sorted([fresh, touched])
    assert second.get(f"/v2/left/ns3/blobs/uploads/{fresh.name}").status_code == 204
    _assert_unknown(second, "left/app", through_api[0])
    assert (root / "left/ns0/_uploads").is_dir() and (root / "left/app").is_dir()  # only sessions went


def _fresh_session(uploads: Path, old_start: float | None = None) -> Path:
    folder = uploads / str(uuid.uuid4())
    folder.mkdir(parents=True)
    (folder / "startedat").write_text("2020-01-01T00:00:00Z")
    (folder / "data").write_bytes(b"written just now")
    if old_start is not None:  # started long ago, but its data was written just now
        os.utime(folder / "startedat", (old_start, old_start))
    return folder


def _users_config(names: list[str]) -> str:
    phc = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("secret-password")
    identities = "".join(f'[auth.identity.{n}]\nusername = "{n}"\npassword = "{phc}"\n\n' for n in names)
    allowed = ", ".join(f'"{n}"' for n in names)
    return (f"{identities}[global.access_policy]\ndefault_allow = false\n"
            f"rules = ['identity.username in [{allowed}]']\n")


def test_session_caps_per_client_and_in_all(servers: list[RegistryProcess], tmp_path: Path) -> None:
    server = start(servers, tmp_path / "server", '[global]\ntrusted_proxies = ["127.0.0.1/32"]\n'
                   "max_upload_sessions_per_client = 3\nmax_upload_sessions = 6\n")

    def post(client: str, name: str = "caps/app") -> requests.Response:
        return server.post(f"/v2/{name}/blobs/uploads/", headers={"X-Forwarded-For": client})

    first = [post("10.0.0.1") for _ in range(3)]
    assert [r.status_code for r in first] == [202] * 3
    refused = post("10.0.0.1", "caps/other")
    assert refused.status_code == 429, refused.text
    assert refused.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert int(refused.headers["Retry-After"]) > 0
    assert not (server.root / REPOSITORIES / "caps/other").exists()  # a refused session leaves nothing
    assert post("10.0.0.2").status_code == 202  # another client still can

    # A cancelled and a completed session free their slots.
    assert server.delete(first[0].headers["Location"]).status_code == 204
    assert post("10.0.0.1").status_code == 202
    assert post("10.0.0.1").status_code == 429
    blob = b"completed"
    done = server.put(first[1].headers["Location"], params={"digest": digest_of(blob)}, data=blob)
    assert done.status_code == 201
    assert post("10.0.0.1").status_code == 202

    # In all: 10.0.0.1 has 3 open, 10.0.0.2 one; two more fill the registry's six.
    assert [post("10.0.0.2").status_code for _ in range(3)] == [202, 202, 429]
    refused = post("10.0.0.3")
    assert refused.status_code == 429 and "(max_upload_sessions)" in refused.text
    assert len(upload_folders(server.root)) == 6


def test_session_caps_count_per_identity(servers: list[RegistryProcess], tmp_path: Path) -> None:
    server = start(servers, tmp_path / "server",
                   _users_config(["alice", "bob"]) + "[global]\nmax_upload_sessions_per_client = 2\n")

    def post(user: str) -> int:
        return server.post("/v2/team/app/blobs/uploads/", auth=(user, "secret-password")).status_code

    assert [post("alice") for _ in range(3)] == [202, 202, 429]
    assert [post("bob") for _ in range(3)] == [202, 202, 429]  # same address, another identity


INVALID_POSTS = [
    "digest=sha256:nothex", "digest=", "digest=md5:0123", "digest=sha256:" + "A" * 64,
    f"mount=sha256:{'0' * 64}&from=other&digest=sha256:short",  # a mount that falls back, then a bad digest
    "mount=sha256:bad&from=other", f"mount=sha256:{'0' * 64}&from=Not..A..Name",
]


def test_invalid_post_parameters_answer_400_and_create_nothing(servers: list[RegistryProcess],
                                                               tmp_path: Path) -> None:
    server = start(servers, tmp_path / "server")
    for query in INVALID_POSTS:
        response = server.post(f"/v2/invalid/app/blobs/uploads/?{query}", data=b"body",
                               headers={"Content-Type": "application/octet-stream"})
        assert response.status_code == 400, (query, response.text)
        assert response.json()["errors"][0]["code"] in ("DIGEST_INVALID", "NAME_INVALID"), query
        assert upload_folders(server.root) == [], f"?{query} left a session behind"


# --- temporary files --------------------------------------------------------------------------------
def test_old_temporary_files_are_removed_at_start_and_fresh_ones_kept(
        servers: list[RegistryProcess], tmp_path: Path) -> None:
    workdir = tmp_path / "server"
    first = start(servers, workdir)
    assert push_blob(first.session, first.url, "tmp/app", b"committed").status_code == 201
    first.kill()
    temporary = first.root / "tmp"
    temporary.mkdir(exist_ok=True)
    two_hours_ago = time.time() - 7200
    outside = workdir / "outside.bin"  # old, and named by a link inside tmp: must survive
    outside.write_bytes(b"not ours")
    os.utime(outside, (two_hours_ago, two_hours_ago))
    old = [temporary / uuid.uuid4().hex for _ in range(50)]
    for path in old:
        path.write_bytes(b"orphan")
        os.utime(path, (two_hours_ago, two_hours_ago))
    link = temporary / "link-to-outside"
    link.symlink_to(outside)
    os.utime(link, (two_hours_ago, two_hours_ago), follow_symlinks=False)
    fresh = [temporary / uuid.uuid4().hex for _ in range(5)]  # another process may be writing these
    for path in fresh:
        path.write_bytes(b"being written")
    folder = temporary / "a-folder"
    folder.mkdir()
    os.utime(folder, (two_hours_ago, two_hours_ago))
    old_elsewhere = first.root / "docker/registry/v2/old-file"
    old_elsewhere.write_bytes(b"not temporary")
    os.utime(old_elsewhere, (two_hours_ago, two_hours_ago))

    second = start(servers, workdir)
    assert sorted(temporary.iterdir()) == sorted([*fresh, folder])
    assert outside.read_bytes() == b"not ours" and old_elsewhere.exists()
    assert second.get(f"/v2/tmp/app/blobs/{digest_of(b'committed')}").content == b"committed"
