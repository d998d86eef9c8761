"""Shared fixtures: a real `registry server` process per test (or per module), stopped afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pykka
import pytest

from tests.helpers import auth
from tests.helpers.server import RegistryProcess


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator[Callable[..., RegistryProcess]]:
    """Factory: `start_registry(extra_config="...", env={...})` → a started server; all stopped after."""
    started: list[RegistryProcess] = []

    def start(extra_config: str = "", env: dict[str, str] | None = None, name: str = "registry",
              port: int | None = None) -> RegistryProcess:
        workdir = tmp_path / f"{name}-{len(started)}"
        workdir.mkdir()
        server = RegistryProcess(workdir, auth.with_auth(extra_config), env, port)
        started.append(server)
        return auth.log_in(server).start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def registry(start_registry: Callable[..., RegistryProcess]) -> RegistryProcess:
    """A zero-config registry server (everything allowed) on a free port."""
    return start_registry()


@pytest.fixture(scope="module")
def shared_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One server for a whole module of tests that do not interfere with each other."""
    workdir = tmp_path_factory.mktemp("shared-registry")
    server = auth.log_in(RegistryProcess(workdir, auth.with_auth(""))).start()
    yield server
    server.kill()


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()
