"""The Windows service class (app/system_service/windows_host.py) driven through the callbacks the
service manager calls, around a real server running in a thread of this process.

pywin32 exists on Windows only, so its three modules are the stand-ins: `win32serviceutil` gives a
ServiceFramework base that records the statuses reported to the service manager, `servicemanager`
records the event log, `win32service` has the constants. The release workflow's Windows job
installs, starts, queries over HTTP, stops and removes the real service.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.server_control import ServerControl
from app.system_service import DATA_VARIABLE
from tests.helpers.server import free_port

# The server runs in this process, where pytest turns warnings into errors: aiohttp's advice to use
# typed request keys (the app's are strings) would fail requests that the real process serves.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

STOPPED, START_PENDING, STOP_PENDING, RUNNING = 1, 2, 3, 4
NAMES = {STOPPED: "STOPPED", START_PENDING: "START_PENDING", STOP_PENDING: "STOP_PENDING", RUNNING: "RUNNING"}


class FakeFramework:
    """pywin32's ServiceFramework as far as the host uses it: the status reports."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.statuses: list[str] = []

    def ReportServiceStatus(self, status: int, waitHint: int = 5000, win32ExitCode: int = 0,
                            svcExitCode: int = 0) -> None:
        self.statuses.append(NAMES[status])


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[types.ModuleType, list[tuple[str, str]]]]:
    events: list[tuple[str, str]] = []
    win32service = types.ModuleType("win32service")
    for name, value in [("SERVICE_STOPPED", STOPPED), ("SERVICE_START_PENDING", START_PENDING),
                        ("SERVICE_STOP_PENDING", STOP_PENDING), ("SERVICE_RUNNING", RUNNING)]:
        setattr(win32service, name, value)
    servicemanager = types.ModuleType("servicemanager")
    for kind in ("Info", "Warning", "Error"):
        setattr(servicemanager, f"Log{kind}Msg", lambda text, kind=kind: events.append((kind, text)))
    win32serviceutil = types.ModuleType("win32serviceutil")
    win32serviceutil.ServiceFramework = FakeFramework  # type: ignore[attr-defined]
    for module in (win32service, servicemanager, win32serviceutil):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.delitem(sys.modules, "app.system_service.windows_host", raising=False)
    # The service process sets the data folder in its own environment (`--data`): here that is the
    # test process's, which later tests in this worker share.
    saved = os.environ.get(DATA_VARIABLE)
    module = importlib.import_module("app.system_service.windows_host")
    try:
        yield module, events
    finally:
        sys.modules.pop("app.system_service.windows_host", None)  # built on the stand-ins: never reused
        if saved is None:
            os.environ.pop(DATA_VARIABLE, None)
        else:
            os.environ[DATA_VARIABLE] = saved


def _wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_service_stop_drains_a_request_in_flight_and_exits_cleanly(
        host: tuple[types.ModuleType, list[tuple[str, str]]], tmp_path: Path) -> None:
    windows_host, events = host
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\nport = {port}\n")
    windows_host.RegistryService.config_files = [config]
    windows_host.RegistryService.data_dir = tmp_path / "data"  # `service run --data`, from the install
    service = windows_host.RegistryService(["registry"])
    assert isinstance(service.control, ServerControl)
    failures: list[BaseException] = []

    def service_main() -> None:  # the thread the service manager runs SvcRun on
        try:
            service.SvcRun()
        except BaseException as exc:
            failures.append(exc)

    main = threading.Thread(target=service_main, name="service-main")
    main.start()
    try:
        _wait_for(lambda: "RUNNING" in service.statuses, "RUNNING")
        assert set(service.statuses[:-1]) <= {"START_PENDING"}  # RUNNING only once it listens
        assert requests.get(f"http://127.0.0.1:{port}/v2/", timeout=5).status_code == 200
        assert ("Info", f"registry: started, listening on port {port}") in events

        # A monolithic upload whose body is half sent when the stop comes.
        blob = b"x" * 200_000
        import hashlib

        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        client.sendall((f"POST /v2/win/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
                        f"Content-Length: {len(blob)}\r\nContent-Type: application/octet-stream\r\n\r\n")
                       .encode() + blob[:100_000])
        time.sleep(0.3)  # the server is inside the handler, reading the body

        service.SvcStop()  # what the service manager's control handler calls, on its own thread
        assert service.statuses[-1] == "STOP_PENDING"
        assert ("Info", "registry: stop requested: draining in-flight requests") in events
        time.sleep(0.3)
        assert main.is_alive()  # still draining: the upload is not finished
        client.sendall(blob[100_000:])
        answer = client.recv(65536).decode()
        client.close()
        assert answer.startswith("HTTP/1.1 201"), answer
        main.join(60)
        assert not main.is_alive(), "the service did not stop"
    finally:
        service.control.request_stop()
        main.join(60)
    assert failures == []
    assert ("Info", "registry: stopped") in events
    assert [kind for kind, _ in events if kind != "Info"] == []
    stored = tmp_path / "data/docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
    assert stored.read_bytes() == blob  # drained, and the data folder came from `--data`
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2)


def test_a_server_that_cannot_start_stops_the_service_with_an_error(
        host: tuple[types.ModuleType, list[tuple[str, str]]], tmp_path: Path) -> None:
    windows_host, events = host
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\nport = {busy.getsockname()[1]}\n[blob_store.fs]\n"
                      f"root_dir = {json.dumps(str(tmp_path / 'data'))}\n")
    windows_host.RegistryService.config_files = [config]
    windows_host.RegistryService.data_dir = None
    service = windows_host.RegistryService(["registry"])
    try:
        with pytest.raises(windows_host.ServiceFailed, match="exited with status 1"):
            service.SvcRun()
    finally:
        busy.close()
    assert "RUNNING" not in service.statuses
    assert [kind for kind, _ in events] == ["Error"]
    assert "stopped with an error" in events[0][1]


def test_event_log_handler_sends_warnings_and_errors(
        host: tuple[types.ModuleType, list[tuple[str, str]]]) -> None:
    windows_host, events = host
    import logging

    logger = logging.getLogger("registry.test-event-log")
    handler = windows_host.EventLogHandler()
    logger.addHandler(handler)
    try:
        logger.info("not this")
        logger.warning("careful")
        logger.error("broken")
    finally:
        logger.removeHandler(handler)
    assert events == [("Warning", "registry.test-event-log: careful"),
                      ("Error", "registry.test-event-log: broken")]
