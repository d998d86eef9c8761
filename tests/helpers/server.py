"""Start the real `registry server` process on a free loopback port and drive it over HTTP."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port below the kernel's ephemeral range, picked at random: the kernel hands ephemeral
    ports to outgoing connections too, so one of those (a client in another test process) could take
    a server's port while it restarts; random picks keep parallel test processes apart."""
    low, high = 10000, min(_ephemeral_low(), 65536) - 1
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # a crowded range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


class RegistryProcess:
    """One `python -m app server` process with its own config file and data folder."""

    def __init__(self, workdir: Path, extra_config: str = "", env: dict[str, str] | None = None,
                 port: int | None = None, server_args: list[str] | None = None) -> None:
        self.workdir = workdir
        self.root = workdir / "data"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "server.log"
        from tests.helpers import stores

        if "[blob_store." in extra_config:  # the test chose its own store
            store_section, spec = "", stores.DriverSpec("fs", root=str(self.root))
        else:
            store_section, spec = stores.blob_store(self.root)
        # What the server stored, by key, on whichever store it has (tests/helpers/stores.py).
        self.store = stores.StoreView(spec)
        self.config_path.write_text(
            f'[server]\nbind_address = "127.0.0.1"\nport = {self.port}\n\n'
            f'{store_section}\n{extra_config}\n')
        self.env = {**os.environ, "REGISTRY_LOG": "info", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.server_args = server_args or []
        self.config_args = ["-c", str(self.config_path)]
        self.command_prefix: list[str] = []  # e.g. ["prlimit", "--nofile=400:400", "--"]

    def start(self, timeout: float = 20.0) -> RegistryProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", "app", *self.config_args, "server",
             *self.server_args],
            cwd=REPO_ROOT, stdout=log, stderr=log, env=self.env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"registry server exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if self.healthy():
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"registry server did not start in {timeout}s:\n{self.logs()}")

    def healthy(self) -> bool:
        """One liveness probe (subclasses serving TLS probe over https)."""
        return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait: the server drains and exits 0."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> RegistryProcess:
        self.stop()
        return self.start()

    # --- HTTP helpers -------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("allow_redirects", False)
        return self.session.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("HEAD", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)
