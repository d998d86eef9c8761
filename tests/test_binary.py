"""The PyInstaller executable (dist/registry): zero-config start, skopeo push/pull, SIGTERM exits 0.

The executable is built by `make binary`; when it is missing this module builds it first (about a
minute), so `make test` in CI exercises a fresh one. `REGISTRY_BINARY=/path/to/registry` tests another
build instead. With make, `make binary` runs every time: it rebuilds only when app/ or the spec changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app import __version__
from tests.helpers.oci import digest_of, layer_tar, make_image, random_layer, write_oci_layout
from tests.helpers.server import REPO_ROOT, free_port
from tests.helpers.tools import require_tool

BINARY = REPO_ROOT / "dist" / ("registry.exe" if sys.platform == "win32" else "registry")
BUILD_TIMEOUT = 1800.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM and skopeo: POSIX only"),
    # The first test may build the executable in its (module-scoped) fixture: allow for that.
    pytest.mark.timeout(BUILD_TIMEOUT + 300),
]


def _build() -> None:
    """Build (make: when stale) once at a time: the module's tests may run in several xdist workers,
    and two PyInstaller runs in one work folder delete each other's files."""
    import fcntl

    lock_path = REPO_ROOT / "build" / ".binary.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build_locked()


def _build_locked() -> None:
    if shutil.which("make"):
        command = ["make", "binary"]
    else:
        command = [sys.executable, "-m", "PyInstaller", "--clean", "--noconfirm", "--distpath", "dist",
                   "--workpath", "build/work", "build/registry.spec"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                            check=False)
    if result.returncode != 0 or not BINARY.is_file():
        pytest.fail(f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                    f"{result.stderr[-4000:]}", pytrace=False)


@pytest.fixture(scope="module")
def binary() -> Path:
    override = os.environ.get("REGISTRY_BINARY")
    if override:
        path = Path(override).resolve()
        assert path.is_file(), f"REGISTRY_BINARY={override} does not exist"
        return path
    if shutil.which("make") or not BINARY.is_file():
        _build()
    return BINARY


def _clean_env(home: Path) -> dict[str, str]:
    """The caller's environment minus any REGISTRY__ override, with every per-user folder under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("REGISTRY__")}
    env.update({
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "xdg-data"),
        "XDG_CONFIG_HOME": str(home / "xdg-config"),
        "XDG_CACHE_HOME": str(home / "xdg-cache"),
        "XDG_STATE_HOME": str(home / "xdg-state"),
        "REGISTRY_LOG": "info",
    })
    return env


def _default_data_dir(home: Path) -> Path:
    """Where platformdirs puts `user_data_path("registry")` for the environment above."""
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "registry"
    return home / "xdg-data" / "registry"


class BinaryProcess:
    """`dist/registry server` with no config file, its port the only override (a free one)."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.env = {**_clean_env(self.home), "REGISTRY__SERVER__PORT": str(self.port)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for GET /v2/ to answer 200; returns the seconds that took."""
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            # cwd is an empty folder so no ./config.toml is picked up.
            self.process = subprocess.Popen([str(self.binary), "server"], cwd=self.workdir, stdout=log,
                                            stderr=log, env=self.env)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.binary} server exited with {self.process.returncode}:\n"
                                   f"{self.logs()}")
            try:
                if requests.get(f"{self.url}/v2/", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.binary} server did not answer in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (to the one-file bootloader, which forwards it) and wait for the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def server(binary: Path, tmp_path: Path) -> Iterator[BinaryProcess]:
    process = BinaryProcess(binary, tmp_path)
    yield process
    process.kill()


def _skopeo(*args: str) -> None:
    result = subprocess.run([require_tool("skopeo"), "--insecure-policy", *args], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, f"skopeo {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"


def test_binary_commands(binary: Path, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    version = subprocess.run([str(binary), "version"], capture_output=True, text=True, env=env,
                             timeout=120, check=False)
    assert version.returncode == 0, version.stderr
    lines = version.stdout.splitlines()
    assert lines[0] == f"registry {__version__}"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert set(fields) == {"commit", "built", "python"}
    assert fields["commit"] not in ("", "unknown")  # embedded at build time (from git)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["built"]), fields["built"]
    assert fields["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert not (REPO_ROOT / "app" / "_build_info.py").exists()  # removed after the build
    hashed = subprocess.run([str(binary), "argon"], input="s3cret\n", capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert hashed.returncode == 0, hashed.stderr
    assert hashed.stdout.strip().startswith("$argon2id$")


def test_binary_push_pull_sigterm(server: BinaryProcess, tmp_path: Path) -> None:
    seconds = server.start()
    print(f"first 200 after {seconds:.2f}s")  # shown with `pytest -s`
    response = requests.get(f"{server.url}/v2/", timeout=10)
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"

    image = make_image(layers=[random_layer(256 * 1024), layer_tar({"etc/hello": b"hello\n"})])
    source = tmp_path / "source-layout"
    write_oci_layout(source, {"v1": image})
    reference = f"docker://{server.host}/smoke/img:v1"
    _skopeo("copy", "--dest-tls-verify=false", f"oci:{source}:v1", reference)

    # Zero-config: the blobs land in the per-user data folder (platformdirs, under the temporary HOME).
    data_dir = _default_data_dir(server.home)
    for digest in [*image.blobs, image.digest]:
        hex_digest = digest.split(":", 1)[1]
        stored = data_dir / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
        assert stored.is_file(), f"{digest} not stored at {stored}:\n{server.logs()}"
    assert (data_dir / "docker/registry/v2/repositories/smoke/img").is_dir()

    # Pull back: the manifest and every blob byte for byte.
    target = tmp_path / "pulled-layout"
    _skopeo("copy", "--src-tls-verify=false", reference, f"oci:{target}:v1")
    index = json.loads((target / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["digest"] == image.digest
    pulled_blobs = target / "blobs" / "sha256"
    assert (pulled_blobs / image.digest.split(":", 1)[1]).read_bytes() == image.manifest
    for digest, data in image.blobs.items():
        pulled = (pulled_blobs / digest.split(":", 1)[1]).read_bytes()
        assert digest_of(pulled) == digest
        assert pulled == data
    manifest = requests.get(f"{server.url}/v2/smoke/img/manifests/v1", timeout=30,
                            headers={"Accept": image.media_type})
    assert manifest.status_code == 200
    assert manifest.content == image.manifest

    # `registry scrub` from the executable, beside the running server, on what was just pushed.
    scrubbed = subprocess.run([str(server.binary), "scrub", "--dry-run", "--json"], cwd=server.workdir,
                              env=server.env, capture_output=True, text=True, timeout=120, check=False)
    assert scrubbed.returncode == 0, scrubbed.stdout + scrubbed.stderr
    report = json.loads(scrubbed.stdout)
    assert report["consistent"] and [c["name"] for c in report["checks"]] == [
        "uploads", "blobs", "tags", "revisions"]
    assert {c["name"]: c["examined"] for c in report["checks"]}["blobs"] == len(image.blobs) + 1

    assert server.stop() == 0, server.logs()
    assert '"stopped"' in server.logs()


def test_binary_exports_traces(binary: Path, tmp_path: Path) -> None:
    """The frozen executable carries the OpenTelemetry SDK, its exporter (requests, protobuf) and
    the SDK's entry points: a traced request reaches a loopback collector."""
    from tests.helpers.otlp import OTLPReceiver

    receiver = OTLPReceiver()
    receiver.start()
    try:
        server = BinaryProcess(binary, tmp_path)
        server.env["REGISTRY__OBSERVABILITY__TRACING__ENDPOINT"] = receiver.url
        server.env["REGISTRY__OBSERVABILITY__TRACING__SERVICE_NAME"] = "frozen"
        try:
            server.start()
            missing = requests.get(f"{server.url}/v2/x/manifests/absent", timeout=10)
            trace_id = missing.json()["errors"][0]["detail"]["trace_id"]
            assert server.stop() == 0, server.logs()
        finally:
            server.kill()
        spans = [s for s in receiver.spans if s.trace_id == trace_id]
        assert {s.name for s in spans} >= {"manifest", "authenticate", "authorize"}, server.logs()
        assert {s.resource["service.name"] for s in spans} == {"frozen"}
    finally:
        receiver.stop()


def test_binary_service_unit_runs_the_executable(binary: Path, tmp_path: Path) -> None:
    """`registry service install` from the frozen executable: ExecStart is the executable itself."""
    from app.system_service.systemd import parse_unit
    from tests.helpers.service_manager import FakeTool, serve_as_service_manager_would

    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\nport = {port}\n")
    systemctl = FakeTool(tmp_path / "bin", "systemctl")
    env = {**_clean_env(tmp_path / "home"), **systemctl.env}
    result = subprocess.run([str(binary), "service", "install", "--user", "-c", str(config), "--data",
                             str(tmp_path / "data")], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert systemctl.calls() == [["--user", "daemon-reload"], ["--user", "enable", "registry.service"]]
    unit = (tmp_path / "home/xdg-config/systemd/user/registry.service").read_text()
    arguments, environment = parse_unit(unit)
    assert arguments == [str(binary), "-c", str(config), "server"]
    serve_as_service_manager_would(arguments, environment, port, tmp_path)
