"""The server process: zero-config start, health endpoints, SIGTERM drains and exits 0."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time

from tests.helpers.server import RegistryProcess


def test_api_version_and_health(registry: RegistryProcess) -> None:
    response = registry.get("/v2/")
    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    for path in ("/healthz", "/health"):
        health = registry.get(path)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
    assert registry.get("/readyz").status_code == 200


def test_sigterm_exits_zero(registry: RegistryProcess) -> None:
    assert registry.stop() == 0
    assert '"stopped"' in registry.logs()


def test_sigterm_drains_an_upload_whose_body_is_still_arriving(registry: RegistryProcess) -> None:
    """In flight means also still receiving: aiohttp drops data arriving after the stop began, so
    without app/http/connections.py's drain this upload would hang until the grace period ended."""
    blob = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with socket.create_connection(("127.0.0.1", registry.port), timeout=30) as client:
        client.sendall((f"POST /v2/drain/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
                        f"Content-Length: {len(blob)}\r\nContent-Type: application/octet-stream\r\n\r\n")
                       .encode() + blob[:100_000])
        time.sleep(0.3)  # the handler is reading the body
        assert registry.process is not None
        registry.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert registry.process.poll() is None  # draining
        client.sendall(blob[100_000:])
        answer = client.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 201 Created"), answer
    assert registry.process.wait(15) == 0
    registry.start()  # what was answered 201 was stored whole
    assert registry.get(f"/v2/drain/blobs/{digest}").content == blob
