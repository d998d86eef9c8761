"""The server process: zero-config start, health endpoints, SIGTERM drains and exits 0."""

from __future__ import annotations

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
