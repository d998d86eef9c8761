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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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


@dataclass
class S3Bucket:
    """A bucket on an S3 endpoint (moto on loopback for `--storage s3`) that a registry stores into."""

    endpoint: str
    bucket: str
    access_key_id: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    part_size: int = 10 * 1024 * 1024


def start_ours(workdir: Path, binary: str | None = None, s3: S3Bucket | None = None,
               redis_url: str | None = None, name: str = "ours") -> Server:
    """Zero-config `registry server` (no config file: the idle RSS the issue measures); the port and
    the data folder come from the environment. With `s3`, a config file with only `[blob_store.s3]`."""
    port = free_port()
    command = [binary] if binary else [sys.executable, "-m", "app"]
    env = {**os.environ, "REGISTRY_LOG": "warning", "REGISTRY__SERVER__PORT": str(port), "HOME": str(workdir)}
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    if redis_url is not None:  # a replica: locks and the shared index versions in Redis
        kind = "fs" if s3 is None else "s3"
        env[f"REGISTRY__METADATA_STORE__{kind.upper()}__REDIS__URL"] = redis_url
        env["REGISTRY__CACHE__REDIS__URL"] = redis_url
    if s3 is None:
        env["REGISTRY__BLOB_STORE__FS__ROOT_DIR"] = str(workdir / f"{name}-data")
    else:
        config = workdir / f"{name}-s3.toml"
        config.write_text(
            "[blob_store.s3]\n"
            f'endpoint = "{s3.endpoint}"\nbucket = "{s3.bucket}"\nregion = "{s3.region}"\n'
            f'access_key_id = "{s3.access_key_id}"\nsecret_key = "{s3.secret_key}"\n'
            f"multipart_part_size = {s3.part_size}\n")
        command += ["-c", str(config)]
    return Server(name, [*command, "server"], f"http://127.0.0.1:{port}", env, workdir).start()


def start_distribution(workdir: Path, s3: S3Bucket | None = None, redis_url: str | None = None) -> Server:
    """With `redis_url`: its blob descriptor cache in Redis (`storage.cache.blobdescriptor: redis`), as
    a distribution deployment with several instances runs it, in database 1 (ours uses 0)."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(binary).exists():
        raise SystemExit(
            "docker-registry (CNCF distribution 2.8) is needed: apt-get install -y docker-registry"
        )
    port = free_port()
    config = workdir / "distribution.yml"
    if s3 is None:
        storage = f"  filesystem:\n    rootdirectory: {workdir / 'distribution-data'}\n"
    else:  # its s3 driver, with the same part size as ours
        storage = (f"  s3:\n    accesskey: {s3.access_key_id}\n    secretkey: {s3.secret_key}\n"
                   f"    region: {s3.region}\n    regionendpoint: {s3.endpoint}\n"
                   f"    bucket: {s3.bucket}\n    secure: false\n    v4auth: true\n"
                   f"    chunksize: {s3.part_size}\n"
                   # Blob bytes through the registry, as ours serves them by default (`redirect`).
                   "  redirect:\n    disable: true\n")
    redis = ""
    if redis_url is not None:
        parts = urlsplit(redis_url)
        storage += "  cache:\n    blobdescriptor: redis\n"
        redis = (f"redis:\n  addr: {parts.hostname}:{parts.port}\n  db: 1\n  dialtimeout: 2s\n"
                 "  readtimeout: 2s\n  writetimeout: 2s\n"
                 "  pool:\n    maxidle: 16\n    maxactive: 64\n    idletimeout: 300s\n")
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n{storage}"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"{redis}"
    )
    # Its AWS SDK panics when AWS_CA_BUNDLE is set: no AWS_* variables from this environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return Server("distribution", [binary, "serve", str(config)], f"http://127.0.0.1:{port}", env).start()


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
