"""Start CNCF distribution (Debian's `docker-registry`) on a free loopback port over a given data folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from tests.helpers.server import free_port
from tests.helpers.tools import require_tool


class DistributionProcess:
    """One `docker-registry serve config.yml` process; `rootdirectory` is the filesystem storage root."""

    def __init__(self, workdir: Path, rootdirectory: Path, port: int | None = None,
                 auth: dict[str, Any] | None = None, tls: dict[str, Any] | None = None,
                 storage: dict[str, Any] | None = None) -> None:
        """`auth`: distribution's `auth` section (e.g. `{"htpasswd": {...}}` or `{"token": {...}}`);
        `tls`: its `http.tls` section (`certificate`, `key`, `clientcas`): served over https;
        `storage`: its storage driver (`{"s3": {...}}`) instead of the filesystem at `rootdirectory`."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = rootdirectory
        self.port = port or free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.tls = tls is not None
        self.host = f"127.0.0.1:{self.port}"
        self.config_path = workdir / "distribution.yml"
        self.log_path = workdir / "distribution.log"
        # YAML is a superset of JSON: write the config as JSON to avoid quoting trouble in paths.
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {**(storage or {"filesystem": {"rootdirectory": str(rootdirectory)}}),
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": "interop-test-secret"},
        }
        if auth is not None:
            config["auth"] = auth
        if tls is not None:
            config["http"]["tls"] = tls
        self.config_path.write_text(json.dumps(config, indent=2))
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()

    def start(self, timeout: float = 20.0) -> DistributionProcess:
        binary = require_tool("docker-registry")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        # Its AWS SDK panics when AWS_CA_BUNDLE is set (as it can be on CI machines): no AWS_* from here.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.process = subprocess.Popen([binary, "serve", str(self.config_path)], stdout=log, stderr=log,
                                        env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if self.tls:  # may want a client certificate: a listening port is enough
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                # 401 is how a registry with auth says it is up.
                if requests.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except (requests.ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not start in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.get(self.url + path, **kwargs)
