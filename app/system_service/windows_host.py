"""Windows: the service process itself. The service manager starts `registry.exe -c FILE service run`,
which hands this class to pywin32's service dispatcher; the registry then runs in a thread of it.

The service reports RUNNING only once the listener is bound (START_PENDING until then, so a slow
first start is not mistaken for a hang); a stop or shutdown from the service manager reports
STOP_PENDING and asks the server, through its `ServerControl`, for the same drained stop SIGTERM
gives on POSIX. Start, stop and failures go to the Application event log (source `registry`); every
log line goes to `%ProgramData%\\registry\\logs\\registry.log` (JSON lines; a service has no console),
warnings and errors to the event log as well. A server that fails makes the service stop with an
error, which the service's recovery settings answer with a restart.

Imported on Windows only (pywin32), and by the test that drives the class with stand-ins for it.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import servicemanager
import win32service
import win32serviceutil

from app.logs import JsonFormatter, setup_logging
from app.server_control import ServerControl
from app.system_service import DATA_VARIABLE, DESCRIPTION, DISPLAY_NAME, NAME

log = logging.getLogger("registry")

# How long a stop may take before the service manager gives up on it: the drain's default grace
# period (60 s) and some. The manager waits at least this long between two status reports.
STOP_WAIT_HINT_MS = 90_000
START_WAIT_HINT_MS = 30_000
LOG_BYTES, LOG_BACKUPS = 10 * 1024 * 1024, 5


class ServiceFailed(RuntimeError):
    """The server ended with an error: the dispatcher reports the service stopped with a failure."""


class EventLogHandler(logging.Handler):
    """Warnings and errors of the registry in the Application event log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.name}: {record.getMessage()}"
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info))
            if record.levelno >= logging.ERROR:
                servicemanager.LogErrorMsg(text)
            else:
                servicemanager.LogWarningMsg(text)
        except Exception:  # the event log being unavailable must not stop the registry
            self.handleError(record)


class RegistryService(win32serviceutil.ServiceFramework):
    _svc_name_ = NAME
    _svc_display_name_ = DISPLAY_NAME
    _svc_description_ = DESCRIPTION

    # Set by `host()` from the service's command line before the dispatcher creates the instance.
    config_files: list[Path] | None = None
    data_dir: Path | None = None
    log_dir: Path | None = None

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.control = ServerControl()
        self.failure: str | None = None

    # --- called by the service manager --------------------------------------------------------
    def SvcStop(self) -> None:
        """On the dispatcher's thread: report the stop, then let the server drain on its own."""
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
        servicemanager.LogInfoMsg(f"{NAME}: stop requested: draining in-flight requests")
        self.control.request_stop()

    def SvcShutdown(self) -> None:
        self.SvcStop()

    def SvcRun(self) -> None:
        """The service's main thread: the server runs in a thread of its own, watched from here."""
        worker = threading.Thread(target=self._serve, name="registry-server", daemon=True)
        worker.start()
        while not self.control.listening.wait(1.0):
            if not worker.is_alive():
                break
            self.ReportServiceStatus(win32service.SERVICE_START_PENDING, waitHint=START_WAIT_HINT_MS)
        if self.control.listening.is_set():
            self.ReportServiceStatus(win32service.SERVICE_RUNNING)
            servicemanager.LogInfoMsg(f"{NAME}: started, listening on port {self.control.port}")
        worker.join()
        if self.failure is not None:
            servicemanager.LogErrorMsg(f"{NAME}: stopped with an error: {self.failure}")
            raise ServiceFailed(self.failure)
        servicemanager.LogInfoMsg(f"{NAME}: stopped")

    # --- the registry ---------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            code = run_server(self.config_files, self.data_dir, self.control)
            if code != 0:
                self.failure = f"the server exited with status {code} (see {self.log_dir or 'the log'})"
        except BaseException as exc:  # reported, never lost in a thread nobody joins with an error
            self.failure = "".join(traceback.format_exception(exc))
            log.exception("the registry service failed")
        finally:
            self.control.request_stop()  # a server that never listened leaves the watch loop too


def run_server(files: list[Path] | None, data_dir: Path | None, control: ServerControl) -> int:
    from app.client_tls import import_aiohttp
    from app.commands import server
    from app.config import ConfigError, load

    if data_dir is not None:  # what --data on the service's command line set at install
        os.environ[DATA_VARIABLE] = str(data_dir)
    try:
        config = load(files)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    import_aiohttp()
    return server.run(config, files, control)


def log_handlers(log_dir: Path) -> list[logging.Handler]:
    log_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(log_dir / f"{NAME}.log", maxBytes=LOG_BYTES,
                                                        backupCount=LOG_BACKUPS, encoding="utf-8")
    file_handler.setFormatter(JsonFormatter())
    return [file_handler, EventLogHandler()]


def host(files: list[Path] | None, data_dir: Path | None, log_dir: Path) -> int:
    """`registry service run`: what the service manager starts. Outside it (from a console) the
    dispatcher refuses, and this says so."""
    RegistryService.config_files, RegistryService.data_dir, RegistryService.log_dir = files, data_dir, log_dir
    setup_logging(*log_handlers(log_dir))
    if sys.stderr is None or not sys.stderr.isatty():  # prints of the server (a bad config) into a file
        sys.stderr = open(log_dir / f"{NAME}.err.log", "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    servicemanager.Initialize()  # the event source is named by ServiceFramework (`registry`)
    servicemanager.PrepareToHostSingle(RegistryService)
    try:
        servicemanager.StartServiceCtrlDispatcher()
    except Exception as exc:  # pywintypes.error 1063: not started by the service manager
        print(f"error: `registry service run` is started by the Windows service manager ({exc}); "
              "use `registry service start`, or `registry server` in a console", file=sys.__stderr__)
        return 1
    return 0
