"""Real Docker and containerd daemons for black-box interop tests, with all their state in one /tmp folder.

`Containerd` runs Debian's containerd 1.6 with its own config, root, state and sockets; `Dockerd` runs
Debian's dockerd 20.10 (vfs storage, no bridge, no iptables) on top of it. `DockerClient` drives Debian's
`/usr/bin/docker` against one daemon with a config folder of the caller's (so `docker login` stays in one
test), `Ctr` drives `ctr` in one containerd namespace. `write_docker_archive` makes a `docker save`-style
archive of random layers that both `docker load` and `ctr images import` accept, without the network.
"""

from __future__ import annotations

import ctypes
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Self

import pytest

from tests.helpers.oci import digest_of, layer_tar
from tests.helpers.server import toml_value
from tests.helpers.tools import INSTALL_HINTS, require_tool

# A unix socket path is limited to 108 bytes (sun_path).
MAX_SOCKET_PATH = 100
# Debian's docker.io CLI (20.10); the machine may have an unrelated newer client first on PATH.
DEBIAN_DOCKER_CLI = "/usr/bin/docker"
_PR_SET_PDEATHSIG = 1


def debian_docker_cli() -> str:
    """The path of Debian's docker CLI; a missing one fails the test with how to install it."""
    if not os.access(DEBIAN_DOCKER_CLI, os.X_OK):
        pytest.fail(f"{DEBIAN_DOCKER_CLI} (Debian's docker CLI) is required by this test and was not found; "
                    f"install it with: {INSTALL_HINTS['docker']}", pytrace=False)
    return DEBIAN_DOCKER_CLI


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so no daemon outlives a killed run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _short_folder(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _check_socket_path(path: Path) -> None:
    if len(str(path)) > MAX_SOCKET_PATH:
        raise RuntimeError(f"socket path too long for a unix socket: {path}")


def _mounts_under(folder: Path) -> list[str]:
    """Mount points at or below `folder` (deepest first), from /proc/self/mountinfo."""
    prefix = str(folder).rstrip("/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")  # \040 and friends
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def _unmount_all(folder: Path) -> list[str]:
    mounts = _mounts_under(folder)
    for point in mounts:
        subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=30)
    return mounts


class _Daemon:
    """A daemon process with a log file, its own folder, start-up polling and a SIGTERM/SIGKILL stop."""

    name = "daemon"

    def __init__(self, folder: Path | None, prefix: str) -> None:
        self._owns_folder = folder is None
        self.folder = folder if folder is not None else _short_folder(prefix)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self.leftover_mounts: list[str] = []

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> Self:
        command = self._command()
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True, preexec_fn=_die_with_parent)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process.wait()
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.logs()}")
            if self._ready():
                self.startup_seconds = time.monotonic() - started
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`), unmount what is left under the folder, remove it."""
        code: int | None = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        self.leftover_mounts = _unmount_all(self.folder)
        if self._owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        return code


class Containerd(_Daemon):
    """`containerd --config <file>`: `version = 2`, root, state and grpc/ttrpc sockets in its own folder.

    The CRI plugin is disabled (no CNI, no kubelet); dockerd only needs the task and content services.
    """

    name = "containerd"

    def __init__(self, folder: Path | None = None) -> None:
        super().__init__(folder, "ctd")
        self.binary = require_tool("containerd")
        self.ctr_binary = require_tool("ctr")
        self.socket = self.folder / "c.sock"
        _check_socket_path(self.socket.with_name("c.sock.ttrpc"))
        self.config_path = self.folder / "containerd.toml"
        lines = [
            "version = 2",
            f"root = {toml_value(self.folder / 'root')}",
            f"state = {toml_value(self.folder / 'state')}",
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]", f"  address = {toml_value(self.socket)}",
            "[ttrpc]", f"  address = {toml_value(self.folder / 'c.sock.ttrpc')}",
            "[debug]", '  address = ""',
            "[metrics]", '  address = ""',
            # The default is /opt/containerd: nothing outside the folder.
            '[plugins."io.containerd.internal.v1.opt"]', f"  path = {toml_value(self.folder / 'opt')}",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [self.binary, "--config", str(self.config_path)]

    def _ready(self) -> bool:
        if not self.socket.exists():
            return False
        result = subprocess.run([self.ctr_binary, "--address", str(self.socket), "version"],
                                capture_output=True, timeout=10, check=False)
        return result.returncode == 0


class Dockerd(_Daemon):
    """`dockerd` with vfs storage, no bridge/iptables/masquerading, on top of a `Containerd`.

    Its data root, exec root, pid file, socket, config file and trust key all live in its own short
    folder under /tmp, so /etc/docker/daemon.json and /var/lib/docker are never used.
    """

    name = "dockerd"

    def __init__(self, containerd: Containerd, folder: Path | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        super().__init__(folder, "dk")
        self.binary = require_tool("dockerd")
        self.cli = debian_docker_cli()
        self.containerd = containerd
        self.socket = self.folder / "d.sock"
        _check_socket_path(self.socket)
        self.host = f"unix://{self.socket}"
        self.config_path = self.folder / "daemon.json"
        # `deprecated-key-path` is the only way to move dockerd 20.10's trust key off /etc/docker/key.json.
        self.config_path.write_text(json.dumps({"deprecated-key-path": str(self.folder / "key.json")}))
        self.extra_args = extra_args
        self._probe_config = self.folder / "probe-cli"

    def _command(self) -> list[str]:
        return [self.binary, "--config-file", str(self.config_path),
                "--storage-driver", "vfs", "--iptables=false", "--ip6tables=false", "--bridge=none",
                "--ip-masq=false", "--userland-proxy=false",
                "--data-root", str(self.folder / "data"), "--exec-root", str(self.folder / "exec"),
                "--pidfile", str(self.folder / "dockerd.pid"), "-H", self.host,
                "--containerd", str(self.containerd.socket), *self.extra_args]

    def _ready(self) -> bool:
        if not self.socket.exists():
            return False
        env = {**_clean_env(), "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self._probe_config)}
        result = subprocess.run([self.cli, "version"], capture_output=True, env=env, timeout=10, check=False)
        return result.returncode == 0

    def start(self, timeout: float = 60.0) -> Self:
        if not self.containerd.running():
            raise RuntimeError("start the Containerd before the Dockerd on top of it")
        return super().start(timeout)


def _clean_env() -> dict[str, str]:
    """The environment without DOCKER_* (DOCKER_CONTEXT, DOCKER_TLS_VERIFY, ...) of whoever runs the tests."""
    return {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}


def _check(tool: str, args: tuple[str, ...], result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                                    f"{result.stdout}\n{result.stderr}")


class DockerClient:
    """Debian's docker CLI against one `Dockerd`, with `DOCKER_CONFIG` a folder of the caller's."""

    def __init__(self, daemon: Dockerd, config_dir: Path) -> None:
        self.daemon = daemon
        self.binary = debian_docker_cli()
        self.config_dir = config_dir
        config_dir.mkdir(parents=True, exist_ok=True)
        # The 20.10 CLI has its experimental commands (`docker manifest`) on without DOCKER_CLI_EXPERIMENTAL.
        self.env = {**_clean_env(), "DOCKER_HOST": daemon.host, "DOCKER_CONFIG": str(config_dir)}

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, *args], input=input, capture_output=True, text=True,
                                env=self.env, timeout=timeout, check=False)
        if check:
            _check("docker", args, result)
        return result

    def login(self, registry: str, username: str, password: str) -> subprocess.CompletedProcess[str]:
        return self.run("login", "--username", username, "--password-stdin", registry, input=password)

    def logout(self, registry: str) -> subprocess.CompletedProcess[str]:
        return self.run("logout", registry)

    def push(self, ref: str) -> subprocess.CompletedProcess[str]:
        return self.run("push", ref)

    def pull(self, ref: str) -> subprocess.CompletedProcess[str]:
        return self.run("pull", ref)

    def tag(self, source: str, target: str) -> subprocess.CompletedProcess[str]:
        return self.run("tag", source, target)

    def load(self, archive_path: Path) -> subprocess.CompletedProcess[str]:
        return self.run("load", "--input", str(archive_path))

    def rmi(self, *refs: str, force: bool = False) -> subprocess.CompletedProcess[str]:
        return self.run("rmi", *(["--force"] if force else []), *refs)

    def inspect(self, ref: str) -> dict[str, Any]:
        """`docker image inspect` of one image."""
        result: list[dict[str, Any]] = json.loads(self.run("image", "inspect", ref).stdout)
        assert len(result) == 1, result
        return result[0]

    def image_id(self, ref: str) -> str:
        """The image ID (`sha256:` + the config digest) of `ref`."""
        return self.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()

    def has_image(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def remove_all_images(self) -> None:
        """Every image of the daemon, by ID, forced (tests sharing a daemon start from nothing)."""
        ids = self.run("images", "--all", "--quiet", "--no-trunc").stdout.split()
        if ids:
            self.run("rmi", "--force", *sorted(set(ids)), check=False)


class CtrImage(NamedTuple):
    ref: str
    media_type: str
    digest: str


class Ctr:
    """`ctr --address <sock> -n <namespace> ...`, unpacking with the native snapshotter (works anywhere)."""

    def __init__(self, containerd: Containerd, namespace: str) -> None:
        self.containerd = containerd
        self.namespace = namespace
        self.binary = require_tool("ctr")
        self.env = {**os.environ, "CONTAINERD_SNAPSHOTTER": "native"}

    def _command(self, *args: str) -> list[str]:
        return [self.binary, "--address", str(self.containerd.socket), "--namespace", self.namespace, *args]

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._command(*args), input=input, capture_output=True, text=True,
                                env=self.env, timeout=timeout, check=False)
        if check:
            _check("ctr", args, result)
        return result

    @staticmethod
    def _remote_args(user: str | None, plain_http: bool, hosts_dir: Path | None = None) -> list[str]:
        args = ["--plain-http"] if plain_http else []
        if user is not None:
            args += ["--user", user]
        if hosts_dir is not None:
            args += ["--hosts-dir", str(hosts_dir)]
        return args

    def pull(self, ref: str, *, user: str | None = None, plain_http: bool = True,
             hosts_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`ctr images pull` (and unpack, which checks every layer against the config's diff_ids)."""
        return self.run("images", "pull", *self._remote_args(user, plain_http, hosts_dir), ref)

    def push(self, ref: str, *, user: str | None = None,
             plain_http: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("images", "push", *self._remote_args(user, plain_http), ref)

    def import_archive(self, path: Path) -> subprocess.CompletedProcess[str]:
        return self.run("images", "import", str(path))

    def tag(self, source: str, target: str) -> subprocess.CompletedProcess[str]:
        return self.run("images", "tag", source, target)

    def remove(self, *refs: str) -> subprocess.CompletedProcess[str]:
        """`ctr images rm --sync`: the garbage collector has removed unreferenced content on return."""
        return self.run("images", "rm", "--sync", *refs)

    def images(self) -> list[CtrImage]:
        """`ctr images ls`: reference, manifest media type and manifest digest of each image."""
        lines = self.run("images", "ls").stdout.splitlines()
        return [CtrImage(*line.split()[:3]) for line in lines[1:] if line.strip()]

    def image(self, ref: str) -> CtrImage:
        matches = [image for image in self.images() if image.ref == ref]
        assert len(matches) == 1, f"{ref} among containerd's images: {self.images()}"
        return matches[0]

    def content(self) -> set[str]:
        """The digests in the namespace's content store."""
        return set(self.run("content", "ls", "--quiet").stdout.split())

    def content_bytes(self, digest: str) -> bytes:
        """`ctr content get`: one blob of the namespace's content store, byte for byte."""
        result = subprocess.run(self._command("content", "get", digest), capture_output=True, env=self.env,
                                timeout=60, check=False)
        stderr = result.stderr.decode(errors="replace")
        assert result.returncode == 0, f"ctr content get {digest} failed ({result.returncode}):\n{stderr}"
        return result.stdout

    def cleanup(self) -> None:
        """Remove every image (and so, after GC, all content) and then the namespace itself."""
        refs = [image.ref for image in self.images()]
        if refs:
            self.run("images", "rm", "--sync", *refs, check=False)
        self.run("namespaces", "rm", self.namespace, check=False)


@dataclass(frozen=True)
class ImageArchive:
    """A `docker save`-style archive and what loading it must yield."""

    path: Path
    repo_tag: str
    config: bytes
    diff_ids: list[str]          # sha256 of each uncompressed layer tar, base first
    layers: list[bytes]          # the uncompressed layer tars
    architecture: str

    @property
    def image_id(self) -> str:
        """What docker reports as the image ID: the config's digest."""
        return digest_of(self.config)


def write_docker_archive(path: Path, repo_tag: str, layers: int = 3, *, layer_size: int = 64 * 1024,
                         architecture: str = "amd64") -> ImageArchive:
    """A docker-archive (`manifest.json`, config JSON, uncompressed `<id>/layer.tar`s) of `layers` layers
    of random content, tagged `repo_tag`; `rootfs.diff_ids` are the sha256 of each layer tar."""
    tars = [gzip.decompress(layer_tar({f"layer{i}/data.bin": os.urandom(layer_size),
                                       f"layer{i}/index.txt": f"layer {i} of {repo_tag}\n".encode()}))
            for i in range(layers)]
    diff_ids = [digest_of(tar) for tar in tars]
    created = "2024-01-01T00:00:00Z"
    config = json.dumps({
        "architecture": architecture, "os": "linux", "created": created,
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": f"layer {i}"} for i in range(layers)],
    }, sort_keys=True).encode()
    config_name = digest_of(config).split(":", 1)[1] + ".json"
    layer_names = [f"{diff_id.split(':', 1)[1]}/layer.tar" for diff_id in diff_ids]
    manifest = json.dumps([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]).encode()

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))

        for name, tar in zip(layer_names, tars, strict=True):
            folder = tarfile.TarInfo(name.split("/", 1)[0])
            folder.type = tarfile.DIRTYPE
            folder.mode = 0o755
            archive.addfile(folder)
            add(f"{folder.name}/VERSION", b"1.0")
            add(name, tar)
        add(config_name, config)
        add("manifest.json", manifest)
    return ImageArchive(path, repo_tag, config, diff_ids, tars, architecture)


def write_hosts_toml(hosts_dir: Path, registry_host: str, server: str, mirrors: list[str]) -> Path:
    """`<hosts_dir>/<registry_host>/hosts.toml` for `ctr --hosts-dir`: `server` plus pull/resolve mirrors
    tried first, in order (what containerd sends them carries `?ns=<registry_host>`)."""
    folder = hosts_dir / registry_host
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"server = {toml_value(server)}"]
    for mirror in mirrors:
        lines += [f"[host.{toml_value(mirror)}]", '  capabilities = ["pull", "resolve"]']
    path = folder / "hosts.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
