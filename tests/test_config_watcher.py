"""ConfigWatcher actor: real files, a real watchdog observer, applies on a real event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from app.actors.bridge import ActorHandle
from app.actors.config_watcher import ConfigWatcher
from app.config import Config, load
from tests.helpers.server import toml_value
from tests.helpers.tls import CertificateAuthority, KubernetesVolume, replace_file, tls_section

Applied = tuple[Config | None, ssl.SSLContext | None]


class Recorder:
    """The `apply` coroutine the server would run on the loop: records what it was given."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Applied] = asyncio.Queue()
        self.error: Exception | None = None

    async def __call__(self, config: Config | None, context: ssl.SSLContext | None) -> None:
        if self.error is not None:
            raise self.error
        await self.queue.put((config, context))

    async def next(self) -> Applied:
        async with asyncio.timeout(5):
            return await self.queue.get()

    async def nothing_within(self, seconds: float = 1.0) -> None:
        await asyncio.sleep(seconds)
        assert self.queue.empty(), self.queue.get_nowait()


StartWatcher = Callable[[list[Path]], Awaitable[ActorHandle]]


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def start_watcher(recorder: Recorder) -> AsyncIterator[StartWatcher]:
    handles: list[ActorHandle] = []

    async def start(files: list[Path]) -> ActorHandle:
        handle = ActorHandle(ConfigWatcher.start(files, load(files), asyncio.get_running_loop(), recorder,
                                                 debounce=0.1))
        handles.append(handle)
        await handle.call("current")  # answered once on_start has set up the watches
        return handle

    yield start
    for handle in handles:
        handle.stop()


def base(tmp_path: Path) -> str:
    return f"[blob_store.fs]\nroot_dir = {toml_value(tmp_path / 'data')}\n"


async def test_rename_style_save_is_applied(tmp_path: Path, start_watcher: StartWatcher,
                                            recorder: Recorder) -> None:
    path = tmp_path / "config.toml"
    path.write_text(base(tmp_path))
    await start_watcher([path])
    replace_file(path, (base(tmp_path) + "[global]\nmax_manifest_size = 4096\n").encode())
    config, context = await recorder.next()
    assert config is not None and config.global_.max_manifest_size == 4096
    assert context is None


async def test_in_place_write_is_applied_and_watcher_reports_current(
        tmp_path: Path, start_watcher: StartWatcher, recorder: Recorder) -> None:
    path = tmp_path / "config.toml"
    path.write_text(base(tmp_path))
    watcher = await start_watcher([path])
    with path.open("a") as file:
        file.write('[repository."team"]\naccess_policy = { default_allow = true }\n')
    config, _ = await recorder.next()
    assert config is not None and list(config.repository) == ["team"]
    deadline = time.monotonic() + 5
    while await watcher.call("current") != config:  # the watcher records it once the loop applied it
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_same_content_or_unrelated_files_reload_nothing(tmp_path: Path, start_watcher: StartWatcher,
                                                              recorder: Recorder) -> None:
    path = tmp_path / "config.toml"
    path.write_text(base(tmp_path))
    await start_watcher([path])
    replace_file(path, base(tmp_path).encode())
    os.utime(path)
    (tmp_path / "server.log").write_text("noise\n")
    await recorder.nothing_within(1.0)


async def test_invalid_file_is_logged_and_a_later_fix_applies(
        tmp_path: Path, start_watcher: StartWatcher, recorder: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="registry.config")
    path = tmp_path / "config.toml"
    path.write_text(base(tmp_path))
    await start_watcher([path])
    replace_file(path, (base(tmp_path) + "[global]\nmax_manifest_sise = 4096\n").encode())
    await recorder.nothing_within(1.0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(path) in errors[0] and "global.max_manifest_sise" in errors[0] and "unknown key" in errors[0]
    replace_file(path, (base(tmp_path) + "[global]\nmax_manifest_size = 4096\n").encode())
    config, _ = await recorder.next()
    assert config is not None and config.global_.max_manifest_size == 4096


async def test_restart_keys_are_kept_and_reported(
        tmp_path: Path, start_watcher: StartWatcher, recorder: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="registry.config")
    path = tmp_path / "config.toml"
    path.write_text(base(tmp_path) + "[server]\nport = 5000\n")
    await start_watcher([path])
    replace_file(path, (base(tmp_path) + "[server]\nport = 5001\n").encode())
    await recorder.nothing_within(1.0)  # only a restart key changed: nothing to apply
    assert any("server.port changed but needs a restart" in r.getMessage() for r in caplog.records)
    replace_file(path, (base(tmp_path) + "[server]\nport = 5001\nstreaming_chunk_size = 8192\n").encode())
    config, _ = await recorder.next()
    assert config is not None and config.server.port == 5000 and config.server.streaming_chunk_size == 8192


async def test_kubernetes_configmap_swap_is_applied(tmp_path: Path, start_watcher: StartWatcher,
                                                    recorder: Recorder) -> None:
    volume = KubernetesVolume(tmp_path / "config")
    volume.publish({"config.toml": base(tmp_path).encode()})
    await start_watcher([volume.path / "config.toml"])
    volume.publish({"config.toml": (base(tmp_path) + "[global]\nmax_manifest_size = 2048\n").encode()})
    config, _ = await recorder.next()
    assert config is not None and config.global_.max_manifest_size == 2048
    volume.publish({"config.toml": (base(tmp_path) + "[global]\nmax_manifest_size = 3072\n").encode()})
    config, _ = await recorder.next()
    assert config is not None and config.global_.max_manifest_size == 3072


async def test_symlink_into_a_configmap_mounted_elsewhere(tmp_path: Path, start_watcher: StartWatcher,
                                                         recorder: Recorder) -> None:
    """`/etc/registry.toml -> /mnt/cm/config.toml -> ..data/config.toml`: every hop's folder is watched."""
    volume = KubernetesVolume(tmp_path / "mnt" / "cm")
    volume.publish({"config.toml": base(tmp_path).encode()})
    (tmp_path / "etc").mkdir()
    link = tmp_path / "etc" / "registry.toml"
    link.symlink_to(volume.path / "config.toml")
    await start_watcher([link])
    volume.publish({"config.toml": (base(tmp_path) + "[global]\nmax_manifest_size = 2048\n").encode()})
    config, _ = await recorder.next()
    assert config is not None and config.global_.max_manifest_size == 2048


async def test_tls_file_change_rebuilds_only_the_tls_context(tmp_path: Path, start_watcher: StartWatcher,
                                                             recorder: Recorder) -> None:
    ca = CertificateAuthority()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue_server().write(certs / "tls.crt", certs / "tls.key")
    path = tmp_path / "config.toml"
    path.write_text(base(tmp_path) + tls_section(certs / "tls.crt", certs / "tls.key"))
    await start_watcher([path])
    new = ca.issue_server()
    replace_file(certs / "tls.key", new.key_pem)
    replace_file(certs / "tls.crt", new.cert_pem)
    config, context = await recorder.next()
    assert config is None and context is not None
    (certs / "tls.crt").write_text("garbage")  # a broken certificate: logged, nothing applied
    await recorder.nothing_within(1.0)


async def test_a_failed_apply_keeps_the_running_configuration(
        tmp_path: Path, start_watcher: StartWatcher, recorder: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="registry.config")
    path = tmp_path / "config.toml"
    path.write_text(base(tmp_path))
    watcher = await start_watcher([path])
    recorder.error = ValueError("cannot build the policies")
    replace_file(path, (base(tmp_path) + "[global]\nmax_manifest_size = 4096\n").encode())
    deadline = time.monotonic() + 5
    while not any("could not be applied" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the failed apply was not logged"
        await asyncio.sleep(0.05)
    assert any("cannot build the policies" in r.getMessage() for r in caplog.records)
    assert (await watcher.call("current")).global_.max_manifest_size == 4 * 1024 * 1024
    recorder.error = None
    replace_file(path, (base(tmp_path) + "[global]\nmax_manifest_size = 8192\n").encode())
    config, _ = await recorder.next()
    assert config is not None and config.global_.max_manifest_size == 8192


async def test_stops_promptly(tmp_path: Path, recorder: Recorder) -> None:
    path = tmp_path / "config.toml"
    path.write_text(base(tmp_path))
    handle = ActorHandle(ConfigWatcher.start([path], load([path]), asyncio.get_running_loop(), recorder))
    started = time.monotonic()
    handle.stop()
    assert not handle.ref.is_alive()
    assert time.monotonic() - started < 3
