"""`registry scrub` as a real process on what a real server stored, on fs and on S3 (moto).

Images are pushed over HTTP, then faults are injected key by key (a flipped byte in a layer, a
missing layer link, a missing referrer link, a tag naming a missing manifest, a stale upload session,
an orphan S3 multipart upload, an unreferenced old blob); `scrub --dry-run` must find every one and
change nothing, `scrub` must repair and report each, and the next run must report a clean store.
Scrub running beside pushes must lose no image.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from app.locks.files import LOCKS_DIR, lock_file_stem
from app.storage import locks as lock_names
from tests.helpers import auth, stores
from tests.helpers.drivers import DriverSpec
from tests.helpers.oci import (
    OCI_MANIFEST,
    digest_of,
    make_image,
    push_blob,
    push_image,
    random_layer,
)
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import REPO_ROOT, RegistryProcess, toml_value

V2 = "docker/registry/v2"
GRACE = 2.0  # the grace period and upload age of the fault runs (seconds)
# `--uploads AGE` selects the uploads check: the others are named too to run them all with that age.
EVERY_CHECK_WITH_SHORT_AGE = ("--uploads", f"{GRACE}s", "--tags", "--revisions", "--blobs")


# --- helpers --------------------------------------------------------------------------------------
@pytest.fixture(params=["fs", "s3"])
def server(request: pytest.FixtureRequest, start_registry: Callable[..., RegistryProcess],
           tmp_path: Path) -> RegistryProcess:
    """A server on a store of each kind; `server.store` reads and writes that store by key."""
    section, spec = stores.section_of_each_kind(request, tmp_path)
    started = start_registry(section)
    started.store = stores.StoreView(spec)
    return started


def run_scrub(server: RegistryProcess, *args: str,
              grace: float | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m app -c <the server's config> scrub ARGS` (the grace period from the config unless
    given, through the environment override)."""
    env = {k: v for k, v in server.env.items() if not k.startswith("REGISTRY__")}
    if grace is not None:
        env["REGISTRY__GLOBAL__GC__GRACE_PERIOD"] = str(grace)
    return subprocess.run([sys.executable, "-m", "app", "-c", str(server.config_path), "scrub", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)


def scrub_json(server: RegistryProcess, *args: str, grace: float | None = None) -> tuple[int, dict[str, Any]]:
    result = run_scrub(server, "--json", *args, grace=grace)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"scrub printed no JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    assert report["exit_status"] == result.returncode
    return result.returncode, report


def _totals(report: dict[str, Any], column: str) -> dict[str, int]:
    """Counts per finding kind over every check, of the report's `found` or `repaired` column."""
    totals: dict[str, int] = {}
    for check in report["checks"]:
        for kind, count in check[column].items():
            totals[kind] = totals.get(kind, 0) + count
    return totals


def found(report: dict[str, Any]) -> dict[str, int]:
    return _totals(report, "found")


def repaired(report: dict[str, Any]) -> dict[str, int]:
    return _totals(report, "repaired")


def findings(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for check in report["checks"] for f in check["findings"] if f["kind"] == kind]


async def _on_driver(spec: DriverSpec, action: str, *args: Any) -> Any:
    driver: Any = spec.open()
    try:
        if action == "delete":
            return await driver.delete(args[0])
        if action == "snapshot":
            keys = [key async for key in driver.walk("")]
            return {key: await driver.get(key) for key in keys}
        if action == "create_multipart":
            return await driver.create_multipart_upload(args[0])
        if action == "multipart":
            return {(key, upload_id) for key, upload_id, _ in await driver.multipart_uploads("")}
        raise AssertionError(action)
    finally:
        await driver.close()


def on_store(server: RegistryProcess, action: str, *args: Any) -> Any:
    return asyncio.run(_on_driver(server.store.spec, action, *args))


def blob_key(digest: str) -> str:
    hex_ = digest.split(":", 1)[1]
    return f"{V2}/blobs/sha256/{hex_[:2]}/{hex_}/data"


def pull_complete(server: RegistryProcess, name: str, reference: str) -> bool:
    """The manifest and every blob it references come back, each matching its digest."""
    response = server.get(f"/v2/{name}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
    if response.status_code != 200:
        return False
    manifest = response.json()
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = server.get(f"/v2/{name}/blobs/{descriptor['digest']}", allow_redirects=True)
        if blob.status_code != 200 or digest_of(blob.content) != descriptor["digest"]:
            return False
    return True


def location(response: requests.Response) -> str:
    found = urlsplit(response.headers["Location"])
    return found.path + (f"?{found.query}" if found.query else "")


def start_upload(server: RegistryProcess, name: str, data: bytes) -> tuple[str, str]:
    """A session with `data` in it, left open: its path, and its folder in the store."""
    started = server.post(f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 202, started.text
    patched = server.patch(location(started), data=data, headers={"Content-Type": "application/octet-stream"})
    assert patched.status_code == 202, patched.text
    upload_id = started.headers["Docker-Upload-UUID"]
    return location(patched), f"{V2}/repositories/{name}/_uploads/{upload_id}"


# --- every fault, found, repaired, reported; then a clean store -----------------------------------
def test_each_fault_is_found_repaired_and_reported(server: RegistryProcess) -> None:
    session = server.session
    images = {name: make_image([random_layer(2048), random_layer(3072)]) for name in ("scrub/a", "scrub/b")}
    for name, image in images.items():
        assert push_image(session, server.url, name, image, tag="v1").status_code == 201
    subject = images["scrub/b"]
    signature = make_image([random_layer(512)], artifact_type="application/vnd.example.sig",
                           subject={"mediaType": OCI_MANIFEST, "digest": subject.digest,
                                    "size": len(subject.manifest)})
    assert push_image(session, server.url, "scrub/b", signature).status_code == 201
    unreferenced = random_layer(1024)
    assert push_blob(session, server.url, "scrub/c", unreferenced).status_code == 201
    stale_upload, stale_folder = start_upload(server, "scrub/c", os.urandom(6 * 1024 * 1024))
    assert server.store.keys(stale_folder)
    if server.store.spec.kind == "s3":  # one full part went up: the session has a multipart upload
        assert any(key.startswith(stale_folder) for key, _ in on_store(server, "multipart"))
    injected_at = time.monotonic()

    # The faults.
    image_a, image_b = images["scrub/a"], images["scrub/b"]
    corrupt = digest_of(image_a.layers[0])
    flipped = bytearray(image_a.layers[0])
    flipped[100] ^= 0x01
    server.store.write(blob_key(corrupt), bytes(flipped))
    unlinked = digest_of(image_b.layers[1])
    assert on_store(server, "delete", f"{V2}/repositories/scrub/b/_layers/sha256/{unlinked[7:]}/link")
    assert on_store(server, "delete", f"{V2}/repositories/scrub/b/_manifests/referrers/sha256/"
                                      f"{subject.digest[7:]}/sha256/{signature.digest[7:]}/link")
    ghost = digest_of(b"a manifest nobody stored")
    server.store.write(f"{V2}/repositories/scrub/a/_manifests/tags/ghost/current/link", ghost.encode())
    orphan_key = f"{V2}/repositories/scrub/c/_uploads/{uuid.uuid4()}/data"
    if server.store.spec.kind == "s3":
        orphan_id = on_store(server, "create_multipart", orphan_key)
        assert (orphan_key, orphan_id) in on_store(server, "multipart")
    time.sleep(max(0.0, GRACE + 0.5 - (time.monotonic() - injected_at)))

    # --dry-run: everything found, nothing changed, exit 1.
    before = on_store(server, "snapshot")
    multipart_before = on_store(server, "multipart") if server.store.spec.kind == "s3" else set()
    code, report = scrub_json(server, "--dry-run", *EVERY_CHECK_WITH_SHORT_AGE, grace=GRACE)
    expected = {"corrupt_blob": 1, "missing_layer_link": 1, "missing_referrer_link": 1, "dangling_tag": 1,
                "stale_upload": 1, "unreferenced_blob": 1}
    if server.store.spec.kind == "s3":
        expected["orphan_multipart_upload"] = 1
    assert code == 1, report
    assert found(report) == expected, report
    assert repaired(report) == {}
    assert on_store(server, "snapshot") == before
    if server.store.spec.kind == "s3":
        assert on_store(server, "multipart") == multipart_before

    # The repair.
    code, report = scrub_json(server, *EVERY_CHECK_WITH_SHORT_AGE, grace=GRACE)
    assert found(report) == {**expected, "missing_referenced_blob": 1}, report
    assert repaired(report) == expected, report
    # Image a lost a layer to the quarantine: scrub says so, and cannot repair that (exit 1).
    assert code == 1
    [broken] = findings(report, "missing_referenced_blob")
    assert broken["namespace"] == "scrub/a" and broken["digest"] == image_a.digest
    assert corrupt in broken["detail"]
    [quarantined] = findings(report, "corrupt_blob")
    assert quarantined["digest"] == corrupt and quarantined["repaired"]
    [removed] = findings(report, "unreferenced_blob")
    assert removed["digest"] == digest_of(unreferenced)

    # Each repair is what it says.
    assert server.store.read(blob_key(corrupt)) is None
    assert server.store.read(f"quarantine/sha256/{corrupt[7:]}/data") == bytes(flipped)
    note = json.loads(server.store.read(f"quarantine/sha256/{corrupt[7:]}/note.json") or b"{}")
    assert note["digest"] == corrupt and note["actual"] == digest_of(bytes(flipped))
    assert server.head(f"/v2/scrub/a/blobs/{corrupt}").status_code == 404  # no corrupt bytes served
    assert pull_complete(server, "scrub/b", "v1")  # its layer link is back
    referrers = server.get(f"/v2/scrub/b/referrers/{subject.digest}").json()
    assert [m["digest"] for m in referrers["manifests"]] == [signature.digest]
    assert server.get("/v2/scrub/a/manifests/ghost").status_code == 404
    assert "ghost" not in server.get("/v2/scrub/a/tags/list").json()["tags"]
    assert server.store.keys(stale_folder) == []
    assert server.patch(stale_upload, data=b"more").status_code == 404
    assert server.store.read(blob_key(digest_of(unreferenced))) is None
    if server.store.spec.kind == "s3":
        assert on_store(server, "multipart") == set()  # the orphan's, and the stale session's

    # The text report: one line per check, then the verdict.
    pushed_again = push_image(session, server.url, "scrub/a", image_a, tag="v1")  # the operator's fix
    assert pushed_again.status_code == 201
    assert pull_complete(server, "scrub/a", "v1")
    result = run_scrub(server, *EVERY_CHECK_WITH_SHORT_AGE, grace=GRACE)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["uploads", "blobs", "tags", "revisions", "scrub"]
    assert all(line.endswith(": consistent") for line in lines[:4]), lines
    assert "the store is consistent" in lines[-1]
    assert result.stderr == ""  # not a terminal: no progress bar, nothing but the summary

    # Default grace period and upload age: a fresh unreferenced blob and an open session are kept.
    fresh = random_layer(256)
    assert push_blob(session, server.url, "scrub/c", fresh).status_code == 201
    live_upload, live_folder = start_upload(server, "scrub/c", b"in progress")
    code, report = scrub_json(server)
    assert code == 0 and found(report) == {}, report
    assert server.store.read(blob_key(digest_of(fresh))) == fresh
    assert server.store.keys(live_folder)
    assert server.get(live_upload).status_code == 204


def test_selected_checks_run_alone(server: RegistryProcess) -> None:
    image = make_image([random_layer(1024)])
    assert push_image(server.session, server.url, "only/tags", image, tag="v1").status_code == 201
    server.store.write(f"{V2}/repositories/only/tags/_manifests/tags/gone/current/link",
                       digest_of(b"nothing").encode())
    layer = digest_of(image.layers[0])
    assert on_store(server, "delete", f"{V2}/repositories/only/tags/_layers/sha256/{layer[7:]}/link")
    code, report = scrub_json(server, "--tags")
    assert [check["name"] for check in report["checks"]] == ["tags"]
    assert code == 0 and repaired(report) == {"dangling_tag": 1}
    code, report = scrub_json(server, "--revisions", "--dry-run")
    assert [check["name"] for check in report["checks"]] == ["revisions"]
    assert code == 1 and found(report) == {"missing_layer_link": 1}
    code, report = scrub_json(server, "--revisions")
    assert code == 0 and repaired(report) == {"missing_layer_link": 1}
    assert pull_complete(server, "only/tags", "v1")


def test_repairs_reach_servers_that_share_redis(start_registry: Callable[..., RegistryProcess],
                                                tmp_path: Path) -> None:
    """A server keeps tag lists and tags in memory; with Redis shared, the namespaces scrub's checks
    repaired are announced as a server announces its writes, and the server answers the repaired
    state on its next request. Without the announcement it listed the removed tag on."""
    redis = RedisServer(tmp_path / "redis").start()
    try:
        server = start_registry(f"[cache.redis]\nurl = {toml_value(redis.url)}\n")
        image, lost = make_image([random_layer(1024)]), make_image([random_layer(1024)])
        for tag, pushed in (("v1", image), ("gone", lost)):
            assert push_image(server.session, server.url, "team/app", pushed, tag=tag).status_code == 201
        assert server.get("/v2/team/app/tags/list").json()["tags"] == ["gone", "v1"]  # cached now
        # Behind the server's back, the manifest "gone" names is lost: a dangling tag for scrub.
        on_store(server, "delete", blob_key(lost.digest))
        revision = f"{V2}/repositories/team/app/_manifests/revisions/sha256/{lost.digest[7:]}/link"
        on_store(server, "delete", revision)
        code, report = scrub_json(server, "--tags")
        assert code == 0 and repaired(report) == {"dangling_tag": 1}, report
        assert server.get("/v2/team/app/tags/list").json()["tags"] == ["v1"]
        assert pull_complete(server, "team/app", "v1")
    finally:
        redis.stop()


def test_split_stores_keep_the_quarantine_with_the_blobs(start_registry: Callable[..., RegistryProcess],
                                                         tmp_path: Path) -> None:
    """With `[metadata_store]` apart, links are repaired in the metadata store and the quarantine is a
    move within the blob store."""
    blobs, metadata = tmp_path / "blobs", tmp_path / "metadata"
    server = start_registry(f'[blob_store.fs]\nroot_dir = "{blobs.as_posix()}"\n'
                            f'[metadata_store.fs]\nroot_dir = "{metadata.as_posix()}"\n')
    blob_store = stores.StoreView(DriverSpec("fs", root=str(blobs)))
    metadata_store = stores.StoreView(DriverSpec("fs", root=str(metadata)))
    image = make_image([random_layer(1024), random_layer(1024)])
    assert push_image(server.session, server.url, "split/img", image, tag="v1").status_code == 201
    corrupt, unlinked = digest_of(image.layers[0]), digest_of(image.layers[1])
    blob_store.write(blob_key(corrupt), b"not the layer")
    link = f"{V2}/repositories/split/img/_layers/sha256/{unlinked[7:]}/link"
    assert asyncio.run(_on_driver(metadata_store.spec, "delete", link))
    code, report = scrub_json(server)
    assert repaired(report) == {"corrupt_blob": 1, "missing_layer_link": 1}, report
    assert code == 1  # the image lost a layer: reported
    assert blob_store.read(f"quarantine/sha256/{corrupt[7:]}/data") == b"not the layer"
    assert metadata_store.keys("quarantine") == []
    assert metadata_store.read(link) == unlinked.encode()


# --- beside a server under push load --------------------------------------------------------------
def test_scrub_beside_pushes_loses_no_image(server: RegistryProcess) -> None:
    pushed: list[tuple[str, str]] = []
    errors: list[str] = []
    stop = threading.Event()
    shared = random_layer(4096)  # in every image: layers deduplicated across repositories

    def pusher(worker: int) -> None:
        with requests.Session() as session:
            session.auth = server.session.auth
            session.headers.update(server.session.headers)
            for i in range(60):  # bounded; stopped once scrub ran a few times beside the pushes
                if stop.is_set() and i >= 3:
                    return
                name = f"load/w{worker}"
                image = make_image([shared, random_layer(2048 + i)])
                response = push_image(session, server.url, name, image, tag=f"t{i}")
                if response.status_code != 201:
                    errors.append(f"{name}:t{i}: {response.status_code} {response.text}")
                else:
                    pushed.append((name, f"t{i}"))

    threads = [threading.Thread(target=pusher, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    reports, overlapped = [], 0
    try:
        for _ in range(3):
            before = len(pushed)
            reports.append(scrub_json(server))
            overlapped += len(pushed) > before and any(thread.is_alive() for thread in threads)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert overlapped >= 2, "scrub did not run beside the pushes"
    for code, report in reports:  # nothing a push wrote is taken for garbage or damage
        assert code == 0, report
        kinds = found(report)
        for destructive in ("unreferenced_blob", "dangling_tag", "corrupt_blob", "stale_upload"):
            assert destructive not in kinds, report
    assert len(pushed) >= 12
    for name, tag in pushed:
        assert pull_complete(server, name, tag), (name, tag)
    code, report = scrub_json(server)
    assert code == 0 and found(report) == {}, report


# --- usage --------------------------------------------------------------------------------------
def test_usage_errors_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[blob_store.fs]\nroot_dir = "{(tmp_path / "data").as_posix()}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY__")}

    def scrub(*args: str, config_file: Path = config) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app", "-c", str(config_file), "scrub", *args],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)

    bad_age = scrub("--uploads", "soon")
    assert bad_age.returncode == 2 and "--uploads" in bad_age.stderr
    assert scrub("--no-such-flag").returncode == 2
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[global.gc]\ngrace_period = 'forever'\n")
    assert scrub(config_file=bad_config).returncode == 2
    empty = scrub()  # an empty store is consistent
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.splitlines()[-1].startswith("scrub: the store is consistent")


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal (a pseudo-terminal here) tqdm draws a bar per phase on stderr."""
    import fcntl
    import pty
    import struct
    import termios

    config = tmp_path / "config.toml"
    config.write_text(f'[blob_store.fs]\nroot_dir = "{(tmp_path / "data").as_posix()}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY__")}
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # a terminal's size
    try:
        process = subprocess.Popen([sys.executable, "-m", "app", "-c", str(config), "scrub", "--blobs"],
                                   cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=terminal,
                                   stderr=terminal)
        os.close(terminal)
        shown = bytearray()
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the process exited
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(60) == 0
    finally:
        os.close(controller)
    text = shown.decode(errors="replace")
    assert "listing repositories" in text and "blobs:" in text, text
    assert "\r" in text  # the bar redraws in place


# --- scrub and the server share one lock store -----------------------------------------------------
def _lock_files(root: Path, name: str) -> tuple[str, str]:
    """The lock file and the gate file of the file lock `name` of a store at `root`."""
    stem = os.path.join(root, LOCKS_DIR, lock_file_stem(name))
    return f"{stem}.lock", f"{stem}.gate"


def _held(lock_file: str) -> bool:
    """Whether another process holds the flock of `lock_file` exclusively."""
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it a shared lock it may have taken
    return False


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no sign of {what} in {timeout:g}s"
        time.sleep(0.02)


def test_scrub_waits_for_a_patch_in_progress_and_keeps_its_session(
        start_registry: Callable[..., RegistryProcess], tmp_path: Path) -> None:
    """With `--uploads 0s` every session is stale, but one a PATCH is writing to right now is held by
    that request's session lock (files in the data folder, app/locks/files.py): scrub waits for it,
    looks again, sees it was just touched, and keeps it. With locks of its own process only, scrub
    removed the session under the PATCH and the client's blob was lost."""
    import socket

    section = f'[blob_store.fs]\nroot_dir = "{(tmp_path / "store").as_posix()}"\n'
    server = start_registry(section)
    first, second = os.urandom(300_000), os.urandom(200_000)
    started = server.post("/v2/team/app/blobs/uploads/")
    assert started.status_code == 202, started.text
    path = location(started)
    session_lock = lock_names.upload(started.headers["Docker-Upload-UUID"])
    lock_file, gate_file = _lock_files(tmp_path / "store", session_lock)
    headers = (f"PATCH {path} HTTP/1.1\r\nHost: {server.host}\r\n{auth.header_lines(server)}"
               "Content-Type: application/octet-stream\r\n"
               f"Content-Length: {len(first) + len(second)}\r\n\r\n")
    answer: list[bytes] = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(headers.encode() + first)
        _wait_for(lambda: _held(lock_file), "the PATCH holding the session's lock")
        scrub = threading.Thread(target=lambda: answer.append(
            run_scrub(server, "--json", "--uploads", "0s").stdout.encode()))
        scrub.start()
        # An exclusive waiter raises the lock's gate (app/locks/files.py): scrub waits for the PATCH.
        _wait_for(lambda: os.path.exists(gate_file), "scrub waiting for the session's lock")
        sock.sendall(second)
        response = sock.recv(65536)
        assert response.startswith(b"HTTP/1.1 202"), response[:300]
    scrub.join(120)
    assert not scrub.is_alive()
    report = json.loads(answer[0])
    assert repaired(report).get("stale_upload", 0) == 0, report
    digest = "sha256:" + hashlib.sha256(first + second).hexdigest()
    done = server.put(f"{path}{'&' if '?' in path else '?'}digest={digest}")
    assert done.status_code == 201, done.text
    assert server.get(f"/v2/team/app/blobs/{digest}").content == first + second
