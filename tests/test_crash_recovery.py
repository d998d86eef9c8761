"""SIGKILL in the middle of writes: after a restart on the same data nothing partial or corrupt is visible."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers.oci import Image, digest_of, make_image, push_blob, random_layer
from tests.helpers.server import RegistryProcess

MB = 1024 * 1024


def blob_file(registry: RegistryProcess, digest: str) -> Path:
    hexdigest = digest.split(":", 1)[1]
    return registry.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


class SlowSender(threading.Thread):
    """Send an HTTP request over a raw socket: headers, then `sent_limit` body bytes trickled in pieces.

    The declared Content-Length is the whole body, so the server is still reading when it gets killed.
    """

    def __init__(self, registry: RegistryProcess, method: str, target: str, headers: dict[str, str],
                 body: bytes, sent_limit: int, piece: int = 64 * 1024, pause: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", registry.port), timeout=30)
        head = f"{method} {target} HTTP/1.1\r\nHost: {registry.host}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self.head = head.encode()
        self.body = body
        self.sent_limit = sent_limit
        self.piece = piece
        self.pause = pause
        self.sent = 0
        self.done_sending = threading.Event()

    def run(self) -> None:
        try:
            self.sock.sendall(self.head)
            while self.sent < self.sent_limit:
                piece = self.body[self.sent:min(self.sent + self.piece, self.sent_limit)]
                self.sock.sendall(piece)
                self.sent += len(piece)
                time.sleep(self.pause)
        except OSError:
            pass
        finally:
            self.done_sending.set()

    def close(self) -> None:
        self.sock.close()


def kill_while_streaming(registry: RegistryProcess, sender: SlowSender) -> None:
    sender.start()
    assert sender.done_sending.wait(30)
    time.sleep(0.3)  # let the server consume and write what it has received
    assert registry.process is not None and registry.process.poll() is None, registry.logs()[-2000:]
    registry.kill()
    sender.close()
    sender.join(5)


def target_of(registry: RegistryProcess, location: str) -> str:
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def assert_blob_absent(registry: RegistryProcess, name: str, digest: str) -> None:
    for method in ("HEAD", "GET"):
        response = registry.request(method, f"/v2/{name}/blobs/{digest}")
        assert response.status_code == 404, (method, response.status_code)
    assert not blob_file(registry, digest).exists(), "a partial blob was committed"


@pytest.mark.parametrize("in_flight", [0, 200_000, 3 * MB // 2])
def test_sigkill_during_streaming_patch(registry: RegistryProcess, in_flight: int) -> None:
    name = "crash/patch"
    blob = os.urandom(6 * MB)
    digest = digest_of(blob)
    first = 2 * MB
    started = registry.post(f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 202
    location = started.headers["Location"]
    patched = registry.patch(target_of(registry, location), data=blob[:first], headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"0-{first - 1}"})
    assert patched.status_code == 202, patched.text
    assert patched.headers["Range"] == f"0-{first - 1}"
    location = patched.headers["Location"]

    # The second PATCH declares the remaining 4 MB but only `in_flight` bytes arrive before the SIGKILL.
    sender = SlowSender(registry, "PATCH", target_of(registry, location),
                        {"Content-Type": "application/octet-stream",
                         "Content-Range": f"{first}-{len(blob) - 1}"},
                        blob[first:], sent_limit=in_flight)
    kill_while_streaming(registry, sender)
    registry.start()

    assert_blob_absent(registry, name, digest)
    status = registry.get(target_of(registry, location))
    if status.status_code == 404:
        assert status.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        return
    assert status.status_code == 204, (status.status_code, status.text)
    resume_and_verify(registry, name, blob, status, first, sender.sent)


def test_client_disconnect_mid_patch_keeps_session_usable(registry: RegistryProcess) -> None:
    """No kill: the client goes away in the middle of a PATCH; the session stays usable (SPEC 13)."""
    name = "crash/disconnect"
    blob = os.urandom(4 * MB)
    first = MB
    started = registry.post(f"/v2/{name}/blobs/uploads/")
    location = started.headers["Location"]
    patched = registry.patch(target_of(registry, location), data=blob[:first], headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"0-{first - 1}"})
    assert patched.status_code == 202, patched.text
    sender = SlowSender(registry, "PATCH", target_of(registry, location),
                        {"Content-Type": "application/octet-stream",
                         "Content-Range": f"{first}-{len(blob) - 1}"},
                        blob[first:], sent_limit=MB)
    sender.start()
    assert sender.done_sending.wait(30)
    time.sleep(0.2)
    sender.close()
    sender.join(5)
    time.sleep(0.5)  # let the server notice the disconnect
    status = registry.get(target_of(registry, location))
    assert status.status_code == 204, (status.status_code, status.text, registry.logs()[-2000:])
    resume_and_verify(registry, name, blob, status, first, sender.sent)
    assert registry.process is not None and registry.process.poll() is None


def resume_and_verify(registry: RegistryProcess, name: str, blob: bytes, status: requests.Response,
                      first: int, sent: int) -> None:
    """From a 204 session status after `first` acknowledged and `sent` in-flight bytes: the stored size is
    plausible, the upload finishes from there and the blob reads back exact."""
    digest = digest_of(blob)
    assert status.headers["Range"].startswith("0-")
    stored = int(status.headers["Range"].split("-", 1)[1]) + 1
    # What was acknowledged survives; at most what was sent since is kept.
    assert first <= stored <= first + sent, (stored, sent)

    resume = registry.patch(target_of(registry, status.headers["Location"]), data=blob[stored:], headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"{stored}-{len(blob) - 1}"})
    assert resume.status_code == 202, resume.text
    assert resume.headers["Range"] == f"0-{len(blob) - 1}"
    done = registry.put(target_of(registry, resume.headers["Location"]), params={"digest": digest})
    assert done.status_code == 201, (done.status_code, done.text, registry.logs()[-3000:])
    got = registry.get(f"/v2/{name}/blobs/{digest}")
    assert got.status_code == 200
    assert got.content == blob


def test_sigkill_during_monolithic_upload_commits_nothing(registry: RegistryProcess) -> None:
    name = "crash/mono"
    blob = os.urandom(5 * MB)
    digest = digest_of(blob)
    sender = SlowSender(registry, "POST", f"/v2/{name}/blobs/uploads/?digest={digest}",
                        {"Content-Type": "application/octet-stream"}, blob, sent_limit=3 * MB)
    kill_while_streaming(registry, sender)
    registry.start()
    assert_blob_absent(registry, name, digest)
    # The digest can still be pushed normally afterwards.
    assert push_blob(registry.session, registry.url, name, blob).status_code == 201
    assert registry.get(f"/v2/{name}/blobs/{digest}").content == blob


def test_sigkill_during_final_put_commits_nothing(registry: RegistryProcess) -> None:
    name = "crash/put"
    blob = os.urandom(5 * MB)
    digest = digest_of(blob)
    started = registry.post(f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 202
    location = started.headers["Location"]
    sender = SlowSender(registry, "PUT", target_of(registry, location) + f"?digest={digest}",
                        {"Content-Type": "application/octet-stream"}, blob, sent_limit=4 * MB)
    kill_while_streaming(registry, sender)
    registry.start()
    assert_blob_absent(registry, name, digest)
    status = registry.get(target_of(registry, location))
    assert status.status_code in (204, 404), (status.status_code, status.text)
    if status.status_code == 204:
        stored = int(status.headers["Range"].split("-", 1)[1]) + 1 if status.headers["Range"] != "0-0" else 0
        assert stored <= sender.sent
        done = registry.put(target_of(registry, status.headers["Location"]), params={"digest": digest},
                            data=blob[stored:], headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, (done.status_code, done.text)
        assert registry.get(f"/v2/{name}/blobs/{digest}").content == blob


def assert_tag_links_sound(registry: RegistryProcess, name: str, listed: list[str]) -> None:
    """On disk (the layout distribution reads): each tag link is the whole digest of a stored manifest."""
    repository = registry.root / "docker/registry/v2/repositories" / name / "_manifests"
    on_disk = sorted(p.name for p in (repository / "tags").iterdir()
                     if (p / "current" / "link").exists())
    assert on_disk == listed
    for tag in on_disk:
        link = (repository / "tags" / tag / "current" / "link").read_text()
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", link), (tag, link)
        hexdigest = link.split(":", 1)[1]
        assert (repository / "revisions/sha256" / hexdigest / "link").read_text() == link
        assert (repository / "tags" / tag / "index/sha256" / hexdigest / "link").read_text() == link
        assert digest_of(blob_file(registry, link).read_bytes()) == link


class ManifestPusher(threading.Thread):
    """Pushes a sequence of manifests onto its own tag (and a shared tag) until the server dies."""

    def __init__(self, registry: RegistryProcess, name: str, tag: str, manifests: list[Image]) -> None:
        super().__init__(daemon=True)
        self.url = registry.url
        self.name = name
        self.tag = tag
        self.manifests = manifests
        self.acked = -1  # index of the last manifest whose PUT on `tag` returned 201
        self.failure: str | None = None

    def run(self) -> None:
        with requests.Session() as session:
            for index, image in enumerate(self.manifests):
                try:
                    for reference in (self.tag, "shared"):
                        response = session.put(f"{self.url}/v2/{self.name}/manifests/{reference}",
                                               data=image.manifest, timeout=10,
                                               headers={"Content-Type": image.media_type})
                        if response.status_code != 201:
                            self.failure = f"{reference}: {response.status_code} {response.text}"
                            return
                        if reference == self.tag:
                            self.acked = index
                except requests.RequestException:
                    return


def test_sigkill_during_manifest_push_loop(registry: RegistryProcess) -> None:
    name = "crash/manifests"
    layer = random_layer(20_000)
    threads, rounds = 8, 3
    base = make_image([layer])
    for blob in base.blobs.values():
        assert push_blob(registry.session, registry.url, name, blob).status_code == 201
    known: dict[str, Image] = {}
    for round_ in range(rounds):
        pushers = []
        for t in range(threads):
            manifests = [make_image([layer], config=base.config, annotations={
                "round": str(round_), "thread": str(t), "seq": str(k)}) for k in range(150)]
            known.update({m.digest: m for m in manifests})
            pushers.append(ManifestPusher(registry, name, f"t{t}", manifests))
        for pusher in pushers:
            pusher.start()
        time.sleep(random.uniform(0.3, 0.8))
        registry.kill()
        for pusher in pushers:
            pusher.join(15)
        assert [p.failure for p in pushers] == [None] * threads
        assert all(p.acked >= 0 for p in pushers), "the loop did not get going before the kill"
        registry.start()

        tags = registry.get(f"/v2/{name}/tags/list")
        assert tags.status_code == 200, tags.text
        listed = tags.json()["tags"]
        assert listed == sorted(listed)
        for pusher in pushers:
            # An acknowledged tag write survives; the tag shows that manifest or the one in flight.
            assert pusher.tag in listed
            response = registry.get(f"/v2/{name}/manifests/{pusher.tag}")
            assert response.status_code == 200, (pusher.tag, response.status_code, response.text)
            allowed = {m.digest for m in pusher.manifests[pusher.acked:pusher.acked + 2]}
            assert digest_of(response.content) in allowed, pusher.tag
        for tag in listed:
            response = registry.get(f"/v2/{name}/manifests/{tag}")
            assert response.status_code == 200, (tag, response.status_code, response.text)
            digest = response.headers["Docker-Content-Digest"]
            assert digest == digest_of(response.content), tag
            assert digest in known, tag
            assert response.content == known[digest].manifest
            assert response.headers["Content-Type"].split(";")[0] == known[digest].media_type
            json.loads(response.content)
        # Every manifest pushed in this round is fully readable by digest, or (if in flight) absent.
        for pusher in pushers:
            for index, image in enumerate(pusher.manifests[:pusher.acked + 2]):
                response = registry.get(f"/v2/{name}/manifests/{image.digest}")
                assert response.status_code in ((200,) if index <= pusher.acked else (200, 404)), (
                    image.digest, response.status_code, response.text)
                if response.status_code == 200:
                    assert response.content == image.manifest
        assert_tag_links_sound(registry, name, listed)
    # And the repository keeps working: push and read a new tag.
    fresh = make_image([layer], annotations={"after": "crash"})
    response = registry.put(f"/v2/{name}/manifests/after", data=fresh.manifest,
                            headers={"Content-Type": fresh.media_type})
    assert response.status_code == 201
    assert registry.get(f"/v2/{name}/manifests/after").content == fresh.manifest
