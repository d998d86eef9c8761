"""What the service tests stand in for: a service manager's command-line tool that records its calls,
and the command a service definition runs, started as the service manager would start it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.helpers.server import REPO_ROOT

# A stand-in for systemctl/launchctl: appends its arguments (one JSON list per line) to $CALLS_FILE.
# `print`/`is-active` answer from $STATE_FILE, which `bootstrap`/`start` create and `bootout`/`stop`
# remove, so a status after a start says "running" like the real tool.
_FAKE_TOOL = """#!{python}
import json, os, sys
arguments = sys.argv[1:]
with open(os.environ["CALLS_FILE"], "a") as calls:
    calls.write(json.dumps([os.path.basename(sys.argv[0]), *arguments]) + "\\n")
state = os.environ["STATE_FILE"]
words = [a for a in arguments if not a.startswith("--")]
verb = words[0] if words else ""
if verb in ("bootstrap", "start", "kickstart"):
    open(state, "w").close()
elif verb in ("bootout", "stop", "disable"):
    if os.path.exists(state):
        os.remove(state)
elif verb == "print":
    if not os.path.exists(state):
        print("Could not find service in domain", file=sys.stderr)
        sys.exit(113)
    print("{{\\n\\tstate = running\\n\\tpid = 4242\\n}}")
elif verb == "is-active":
    print("active" if os.path.exists(state) else "inactive")
    sys.exit(0 if os.path.exists(state) else 3)
"""


class FakeTool:
    """`name` first on PATH, recording every call."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / name
        self.path.write_text(_FAKE_TOOL.format(python=sys.executable))
        self.path.chmod(0o755)
        self.calls_file = folder / f"{name}.calls"
        self.state_file = folder / f"{name}.state"
        self.env = {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "CALLS_FILE": str(self.calls_file),
                    "STATE_FILE": str(self.state_file)}

    def calls(self) -> list[list[str]]:
        """The calls so far (the tool's name dropped), and forget them."""
        if not self.calls_file.exists():
            return []
        lines = self.calls_file.read_text().splitlines()
        self.calls_file.unlink()
        return [json.loads(line)[1:] for line in lines]


def registry_cli(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGUMENTS` as a user types it, in the repository."""
    return subprocess.run([sys.executable, "-m", "app", *arguments], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def serve_as_service_manager_would(arguments: list[str], environment: dict[str, str], port: int,
                                   workdir: Path, check: Callable[[str], None] | None = None) -> str:
    """Start `arguments` with `environment` added (cwd `/`, as systemd and launchd do), check that
    GET /v2/ answers 200 (then `check(url)`), SIGTERM it and expect exit 0; returns its log."""
    log_path = workdir / "service.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY__")}
    env.update(environment)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(arguments, cwd="/", env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"{arguments} exited with {process.returncode}:\n" \
                                           f"{log_path.read_text()}"
            assert time.monotonic() < deadline, f"{arguments} did not answer:\n{log_path.read_text()}"
            try:
                response = requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
                assert response.status_code == 200, response.text
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        if check is not None:
            check(f"http://127.0.0.1:{port}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return log_path.read_text()
