"""Smoke test of a built executable, on any OS, with the standard library only (the release workflow
runs it on each runner): `registry version`, start with zero config on a free port, push an image and
pull it back over the registry API, curl a manifest, `registry scrub --dry-run` on what was pushed,
SIGTERM/Ctrl-Break, and report size and start time. `--service` instead installs, starts, queries,
stops and uninstalls it with the OS's service manager (needs root/Administrator; the executable must
be where the service account can run it).

    python build/smoke.py dist/registry [--summary FILE]
    sudo python build/smoke.py /usr/local/bin/registry --service
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
WINDOWS = sys.platform == "win32"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_for_v2(url: str, process: subprocess.Popen[bytes] | None, timeout: float = 90.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process is not None and process.poll() is not None:
            sys.exit(f"the registry exited with {process.returncode}")
        try:
            if call("GET", f"{url}/v2/")[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{url}/v2/ did not answer 200 within {timeout:.0f} s")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_and_pull(url: str) -> None:
    """An OCI image (config + one layer + manifest) pushed and read back byte for byte."""
    layer, config = os.urandom(256 * 1024), json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    for blob in (layer, config):
        status, headers, _ = call("POST", f"{url}/v2/smoke/img/blobs/uploads/")
        assert status == 202, status
        location = headers["Location"]
        location = location if location.startswith("http") else url + location
        separator = "&" if "?" in location else "?"
        status, _, body = call("PUT", f"{location}{separator}digest={digest(blob)}", blob,
                               {"Content-Type": "application/octet-stream"})
        assert status == 201, (status, body)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
        "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer),
                    "size": len(layer)}]}).encode()
    status, _, body = call("PUT", f"{url}/v2/smoke/img/manifests/v1", manifest,
                           {"Content-Type": MANIFEST_TYPE})
    assert status == 201, (status, body)
    assert call("GET", f"{url}/v2/smoke/img/manifests/v1", headers={"Accept": MANIFEST_TYPE})[2] == manifest
    assert call("GET", f"{url}/v2/smoke/img/blobs/{digest(layer)}")[2] == layer
    curl = shutil.which("curl")
    if curl is not None:  # a client that is not us
        pulled = subprocess.run([curl, "-fsS", "-H", f"Accept: {MANIFEST_TYPE}",
                                 f"{url}/v2/smoke/img/manifests/v1"], capture_output=True, check=True,
                                timeout=60)
        assert pulled.stdout == manifest
    print("pushed and pulled smoke/img:v1")


def scrub_dry_run(executable: Path, env: dict[str, str], work: Path) -> None:
    """`registry scrub --dry-run` on the data just pushed, beside the running server: consistent (0)."""
    result = subprocess.run([str(executable), "scrub", "--dry-run"], env=env, cwd=work, capture_output=True,
                            text=True, timeout=120, check=False)
    lines = result.stdout.splitlines()
    if result.returncode != 0 or not lines or "the store is consistent" not in lines[-1]:
        sys.exit(f"`registry scrub --dry-run` exited with {result.returncode}:\n"
                 f"{result.stdout}{result.stderr}")
    print(f"scrub --dry-run: {lines[-1]}")


def run_server(executable: Path) -> float:
    work = Path(tempfile.mkdtemp(prefix="registry-smoke-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY__")}
    env.update({"REGISTRY__SERVER__PORT": str(port),
                "REGISTRY__BLOB_STORE__FS__ROOT_DIR": str(work / "data")})
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if WINDOWS else 0  # type: ignore[attr-defined]
    process = subprocess.Popen([str(executable), "server"], env=env, cwd=work, creationflags=flags)
    try:
        seconds = wait_for_v2(f"http://127.0.0.1:{port}", process)
        print(f"GET /v2/ -> 200 after {seconds:.2f} s")
        push_and_pull(f"http://127.0.0.1:{port}")
        scrub_dry_run(executable, env, work)
    finally:
        # POSIX: SIGTERM drains and exits 0. Windows: Ctrl-Break, which the registry handles the same way.
        process.send_signal(signal.CTRL_BREAK_EVENT if WINDOWS else signal.SIGTERM)  # type: ignore[attr-defined]
        code = process.wait(90)
    if code != 0:
        sys.exit(f"the registry exited with {code} after the stop signal")
    return seconds


def service_cycle(executable: Path) -> None:
    """install → start → GET /v2/ → status → stop → uninstall, with the OS's own service manager."""
    port = free_port()
    config = _system_config_file()
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"[server]\nport = {port}\n", encoding="utf-8")

    def registry(*arguments: str) -> None:
        print("+ registry", " ".join(arguments), flush=True)
        subprocess.run([str(executable), *arguments], check=True, timeout=300)

    registry("service", "install", "--system")
    try:
        registry("service", "start", "--system")
        seconds = wait_for_v2(f"http://127.0.0.1:{port}", None)
        print(f"service answers GET /v2/ after {seconds:.2f} s")
        registry("service", "status", "--system")
        registry("service", "stop", "--system")
        time.sleep(1)
        try:
            call("GET", f"http://127.0.0.1:{port}/v2/")
            sys.exit("the service still answers after `service stop`")
        except OSError:
            pass
    finally:
        registry("service", "uninstall", "--system")


def _system_config_file() -> Path:
    if WINDOWS:
        return Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "registry" / "config.toml"
    if sys.platform == "darwin":
        return Path("/Library/Application Support/registry/config.toml")
    return Path("/etc/registry/config.toml")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("executable", type=Path)
    parser.add_argument("--service", action="store_true")
    parser.add_argument("--summary", type=Path, help="append a Markdown line (GITHUB_STEP_SUMMARY)")
    args = parser.parse_args()
    executable = args.executable.resolve()
    version = subprocess.run([str(executable), "version"], capture_output=True, text=True, check=True,
                             timeout=120).stdout
    print(version)
    if args.service:
        service_cycle(executable)
        return
    seconds = run_server(executable)
    size = executable.stat().st_size
    line = (f"| {sys.platform} | {version.splitlines()[1]} | {size:,} bytes ({size / 1e6:.1f} MB) | "
            f"first 200 after {seconds:.2f} s |")
    print(line)
    if args.summary is not None:
        with open(args.summary, "a", encoding="utf-8") as summary:
            summary.write(line + "\n")


if __name__ == "__main__":
    main()
