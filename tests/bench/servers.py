"""Start the two registries under test on loopback ports, and read their memory from /proc."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(
        self,
        name: str,
        command: list[str],
        url: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.command = command
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Server:
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                if requests.get(f"{self.url}/v2/", timeout=1).status_code == 200:
                    time.sleep(1.0)  # let start-up settle before reading the idle RSS
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer in {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _pids(self) -> list[int]:
        """The server and its descendants: a one-file executable runs the registry in a child of its
        bootloader, so both count."""
        assert self.process is not None
        pids, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            with contextlib.suppress(OSError):
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return pids

    def _status(self, field: str) -> int:
        total = 0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(field + ":"):
                        total += int(line.split()[1]) * 1024
        return total

    def rss(self) -> int:
        return self._status("VmRSS")

    def peak_rss(self) -> int:
        return self._status("VmHWM")

    def reset_peak(self) -> None:
        """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
        for pid in self._pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")


def start_ours(workdir: Path, binary: str | None = None) -> Server:
    """Zero-config `registry server` (no config file: the idle RSS the issue measures); the port and
    the data folder come from the environment."""
    port = free_port()
    command = [binary] if binary else [sys.executable, "-m", "app"]
    env = {**os.environ, "REGISTRY_LOG": "warning", "REGISTRY__SERVER__PORT": str(port),
           "REGISTRY__BLOB_STORE__FS__ROOT_DIR": str(workdir / "ours-data"), "HOME": str(workdir)}
    return Server("ours", [*command, "server"], f"http://127.0.0.1:{port}", env, workdir).start()


def start_distribution(workdir: Path) -> Server:
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(binary).exists():
        raise SystemExit(
            "docker-registry (CNCF distribution 2.8) is needed: apt-get install -y docker-registry"
        )
    port = free_port()
    config = workdir / "distribution.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'distribution-data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    return Server("distribution", [binary, "serve", str(config)], f"http://127.0.0.1:{port}").start()


class External(Server):
    """A registry someone else runs (ad-hoc comparisons): no process, no memory figures."""

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, [], url.rstrip("/"))

    def start(self, timeout: float = 30) -> Server:
        return self

    def stop(self) -> None:
        pass

    def rss(self) -> int:
        return 0

    def peak_rss(self) -> int:
        return 0

    def reset_peak(self) -> None:
        pass
