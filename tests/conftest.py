"""Shared fixtures: a real `registry server` process per test (or per module), stopped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pykka
import pytest

from app.storage import Storage
from tests.helpers import auth
from tests.helpers.daemons import Containerd, Ctr, DockerClient, Dockerd
from tests.helpers.drivers import DriverSpec
from tests.helpers.moto import MotoServer
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


@pytest.fixture(scope="session")
def containerd_daemon() -> Iterator[Containerd]:
    """One private containerd for the session (each xdist worker its own), started on first use."""
    daemon = Containerd().start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def docker_daemon(containerd_daemon: Containerd) -> Iterator[Dockerd]:
    """One private dockerd (vfs, no bridge) on the session's containerd, started on first use."""
    daemon = Dockerd(containerd_daemon).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def docker_client(docker_daemon: Dockerd, tmp_path: Path) -> Iterator[DockerClient]:
    """The docker CLI with a fresh DOCKER_CONFIG; the daemon's images are all removed afterwards."""
    client = DockerClient(docker_daemon, tmp_path / "docker-config")
    yield client
    client.remove_all_images()


@pytest.fixture
def ctr(containerd_daemon: Containerd) -> Iterator[Ctr]:
    """`ctr` in a namespace of this test's own, emptied and removed afterwards."""
    client = Ctr(containerd_daemon, f"test-{uuid.uuid4().hex[:12]}")
    yield client
    client.cleanup()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server (a real S3 protocol server on loopback) per test process, started on first
    use; each test takes a bucket of its own (`s3_bucket`)."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> Iterator[str]:
    """A new, empty bucket on the session's moto, removed afterwards."""
    bucket = moto_server.create_bucket()
    yield bucket
    moto_server.remove_bucket(bucket)


@pytest.fixture(params=["fs", "s3"])
def driver_spec(request: pytest.FixtureRequest, tmp_path: Path) -> DriverSpec:
    """A fresh store of each driver: fs on tmp_path, S3 on a new moto bucket under a key prefix (so the
    prefix is exercised by every test). moto is started only by the S3 half."""
    if request.param == "fs":
        return DriverSpec("fs", root=str(tmp_path / "root"))
    moto: MotoServer = request.getfixturevalue("moto_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return DriverSpec("s3", endpoint=moto.endpoint, bucket=bucket, key_prefix="registry/root")


@pytest.fixture
async def driver(driver_spec: DriverSpec) -> AsyncIterator[Storage]:
    """The driver of `driver_spec`, closed afterwards: the storage every driver-level test runs on."""
    storage = driver_spec.open()
    yield storage
    await storage.close()


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all()


@pytest.fixture(autouse=True)
def _environment_unchanged() -> Iterator[None]:
    """A test that leaves a REGISTRY_* variable in this worker's environment would configure every
    server the later tests of the worker start (they inherit os.environ): fail the test that did it."""
    before = {key: value for key, value in os.environ.items() if key.startswith("REGISTRY")}
    yield
    after = {key: value for key, value in os.environ.items() if key.startswith("REGISTRY")}
    assert after == before, f"the test changed the environment: {set(after.items()) ^ set(before.items())}"
