"""Windows: the `registry` service registered with the service manager (SCM) through pywin32.

The service runs the executable itself (`registry.exe -c FILE service run`, hosted by
`windows_host.py`) as `NT AUTHORITY\\LocalService` (no password, few rights, network access as an
anonymous machine), started automatically (delayed, so boot is not slowed) and restarted by the SCM
when it fails. Install gives that account the data and log folders (`icacls`); the configuration
stays writable by administrators only. Machine-wide only: a Windows service belongs to the machine.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

from app.system_service import DESCRIPTION, DISPLAY_NAME, NAME, ServiceError, ServiceSpec, Status

ACCOUNT = r"NT AUTHORITY\LocalService"
ACCOUNT_SID = "*S-1-5-19"  # LocalService by SID: icacls understands it whatever the system language
WAIT_SECONDS = 120
# Restart 5 s after the first two failures, 60 s after later ones; forgive failures after a day.
FAILURE_ACTIONS = {"ResetPeriod": 86400, "RebootMsg": "", "Command": "",
                   "Actions": [(1, 5000), (1, 5000), (1, 60000)]}  # 1 = SC_ACTION_RESTART


def service_arguments(spec: ServiceSpec) -> list[str]:
    """What the SCM runs (after the executable): the host command with the install's choices."""
    arguments = [*spec.command[1:], "-c", str(spec.config_file), "service", "run"]
    if spec.data_dir is not None:
        arguments += ["--data", str(spec.data_dir)]
    return arguments


def _grant(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["icacls", str(folder), "/grant", f"{ACCOUNT_SID}:(OI)(CI)M", "/T", "/Q"],
                            capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise ServiceError(f"icacls could not give {ACCOUNT} {folder}: "
                           f"{(result.stderr or result.stdout).strip()}")


class WindowsServices:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir

    def install(self, spec: ServiceSpec) -> list[str]:
        import pywintypes
        import servicemanager
        import win32service
        import win32serviceutil

        if spec.data_dir is not None:
            _grant(spec.rooted(spec.data_dir))
        _grant(spec.rooted(self.log_dir))
        try:
            win32serviceutil.InstallService(
                None, NAME, DISPLAY_NAME, startType=win32service.SERVICE_AUTO_START,
                exeName=spec.command[0], exeArgs=subprocess.list2cmdline(service_arguments(spec)),
                userName=ACCOUNT, description=DESCRIPTION, delayedstart=True)
        except pywintypes.error as exc:
            if exc.winerror != 1073:  # ERROR_SERVICE_EXISTS: a reinstall updates the command line
                raise ServiceError(f"cannot register the service: {exc.strerror}") from None
            win32serviceutil.ChangeServiceConfig(
                None, NAME, startType=win32service.SERVICE_AUTO_START, exeName=spec.command[0],
                exeArgs=subprocess.list2cmdline(service_arguments(spec)), userName=ACCOUNT,
                description=DESCRIPTION, delayedstart=True)
        self._configure_recovery()
        # Registered now, as an administrator: the service's own account may not write the registry.
        servicemanager.SetEventSourceName(NAME, True)
        return [f"registered the service `{NAME}` ({DISPLAY_NAME}), run as {ACCOUNT}, started at boot",
                "`registry service start` starts it now"]

    def _configure_recovery(self) -> None:
        import win32service

        manager = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
        try:
            handle = win32service.OpenService(manager, NAME, win32service.SERVICE_ALL_ACCESS)
            try:
                win32service.ChangeServiceConfig2(handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS,
                                                  FAILURE_ACTIONS)
            finally:
                win32service.CloseServiceHandle(handle)
        finally:
            win32service.CloseServiceHandle(manager)

    def uninstall(self, spec: ServiceSpec) -> list[str]:
        import win32serviceutil

        if not self.status(spec).installed:
            raise ServiceError(f"not installed: there is no service `{NAME}`")
        self.stop(spec)
        win32serviceutil.RemoveService(NAME)
        return [f"stopped and removed the service `{NAME}` (configuration, data and logs are kept)"]

    def start(self, spec: ServiceSpec) -> None:
        import win32service
        import win32serviceutil

        win32serviceutil.StartService(NAME)
        self._wait_for(win32service.SERVICE_RUNNING, "start")

    def stop(self, spec: ServiceSpec) -> None:
        import win32service
        import win32serviceutil

        if self._state() in (None, win32service.SERVICE_STOPPED):
            return
        win32serviceutil.StopService(NAME)
        self._wait_for(win32service.SERVICE_STOPPED, "stop")

    def _state(self) -> int | None:
        import pywintypes
        import win32serviceutil

        try:
            return int(win32serviceutil.QueryServiceStatus(NAME)[1])
        except pywintypes.error as exc:
            if exc.winerror == 1060:  # ERROR_SERVICE_DOES_NOT_EXIST
                return None
            raise

    def _wait_for(self, wanted: int, what: str) -> None:
        import win32service

        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            state = self._state()
            if state == wanted:
                return
            if what == "start" and state == win32service.SERVICE_STOPPED:
                raise ServiceError(f"the service stopped while starting: see the Application event log "
                                   f"and {self.log_dir}")
            time.sleep(0.5)
        raise ServiceError(f"the service did not {what} within {WAIT_SECONDS} s")

    def status(self, spec: ServiceSpec) -> Status:
        import win32service

        state = self._state()
        if state is None:
            return Status(NAME, installed=False, running=False, state="not installed")
        names = {win32service.SERVICE_STOPPED: "stopped", win32service.SERVICE_START_PENDING: "starting",
                 win32service.SERVICE_STOP_PENDING: "stopping", win32service.SERVICE_RUNNING: "running",
                 win32service.SERVICE_PAUSED: "paused"}
        return Status(NAME, installed=True, running=state == win32service.SERVICE_RUNNING,
                      state=names.get(state, str(state)), arguments=self._command_line(),
                      logs=f"{self.log_dir} and the Application event log (source `{NAME}`)")

    def _command_line(self) -> list[str]:
        import win32service

        manager = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_CONNECT)
        try:
            handle = win32service.OpenService(manager, NAME, win32service.SERVICE_QUERY_CONFIG)
            try:
                binary_path = win32service.QueryServiceConfig(handle)[3]
            finally:
                win32service.CloseServiceHandle(handle)
        finally:
            win32service.CloseServiceHandle(manager)
        return [part.strip('"') for part in shlex.split(binary_path, posix=False)]
