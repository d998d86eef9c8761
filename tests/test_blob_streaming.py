"""Large blob bodies go out through sendfile segments in worker threads: a stalled or vanished client
must never leak descriptors, never block other clients, and never receive another client's bytes."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.helpers.oci import digest_of, push_blob
from tests.helpers.server import RegistryProcess


def open_fds(server: RegistryProcess) -> int:
    assert server.process is not None
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def test_stalled_reader_is_cut_at_query_timeout_and_others_are_served(
        start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(env={"REGISTRY__SERVER__QUERY_TIMEOUT": "4"})
    big = os.urandom(32 * 1024 * 1024)
    small = os.urandom(3 * 1024 * 1024)
    assert push_blob(server.session, server.url, "stream/big", big).status_code == 201
    assert push_blob(server.session, server.url, "stream/small", small).status_code == 201
    server.get(f"/v2/stream/small/blobs/{digest_of(small)}")  # warm up: executor threads exist
    server.session.close()  # keep-alive connections would count as open descriptors
    baseline = open_fds(server)

    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /v2/stream/big/blobs/{digest_of(big)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert stalled.recv(64).startswith(b"HTTP/1.1 200")  # then it stops reading

    # While it stalls, other clients get whole, correct bodies (concurrently, several times).
    results: list[bool] = []
    url = f"{server.url}/v2/stream/small/blobs/{digest_of(small)}"

    def fetch() -> None:
        body = requests.get(url, headers={"Connection": "close"}, timeout=30).content
        results.append(body == small)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [True] * 6

    # After query_timeout the stalled response is aborted on the server side: its connection and the
    # worker's duplicate descriptors are closed, although the client never read on.
    deadline = time.monotonic() + 15
    while open_fds(server) > baseline and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_fds(server) <= baseline
    assert "exceeded query_timeout" in server.logs()
    stalled.close()
    assert server.get(f"/v2/stream/big/blobs/{digest_of(big)}").content == big
    assert '"level": "error"' not in server.logs()


def test_range_and_full_bodies_through_sendfile(registry: RegistryProcess, tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 123)  # several segments and a ragged tail
    digest = digest_of(data)
    assert push_blob(registry.session, registry.url, "stream/range", data).status_code == 201
    assert registry.get(f"/v2/stream/range/blobs/{digest}").content == data
    start = 4 * 1024 * 1024 - 7
    part = registry.get(f"/v2/stream/range/blobs/{digest}", headers={"Range": f"bytes={start}-"})
    assert part.status_code == 206 and part.content == data[start:]
