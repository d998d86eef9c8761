"""The operator's first minutes: `registry server --admin`, `-c <folder>`, a busy port, the access log."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from argon2 import PasswordHasher

from tests.helpers.oci import make_image, push_image
from tests.helpers.server import REPO_ROOT, RegistryProcess
from tests.helpers.tls import replace_file

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def token_session(server: RegistryProcess, username: str, password: str, scope: str) -> requests.Session:
    answer = requests.get(f"{server.url}/token", params={"service": "simple-registry", "scope": scope},
                          auth=(username, password), timeout=30)
    assert answer.status_code == 200, answer.text
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {answer.json()['token']}"
    return session


def test_admin_gets_a_generated_password_once_and_keeps_it(tmp_path: Path) -> None:
    server = RegistryProcess(tmp_path, server_args=["--admin"], env={"REGISTRY_ADMIN_PASSWORD": ""})
    try:
        server.start()
        match = re.search(r"admin password \(shown once\): (\S+)", server.logs())
        assert match, server.logs()
        password = match.group(1)
        assert len(password) >= 20
        # The registry is now private to the admin: anonymous callers are asked to log in, then refused.
        assert requests.get(f"{server.url}/v2/", timeout=30).status_code == 401
        anonymous = requests.get(f"{server.url}/token", timeout=30,
                                 params={"service": "simple-registry", "scope": "repository:app:pull"})
        assert anonymous.json().get("token") and json.loads(
            _payload(anonymous.json()["token"]))["access"] == []
        assert requests.get(f"{server.url}/token", auth=("admin", "wrong"), timeout=30).status_code == 401
        session = token_session(server, "admin", password, "repository:team/app:pull,push")
        assert push_image(session, server.url, "team/app", make_image(), "1").status_code == 201
        stored = server.root / "auth" / "admin-password.phc"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600 and password not in stored.read_text()

        server.restart()
        assert "shown once" not in server.logs().split("stopped")[-1]
        assert "from the store" in server.logs()
        assert token_session(server, "admin", password, "repository:team/app:pull").get(
            f"{server.url}/v2/team/app/manifests/1", timeout=30).status_code == 200
    finally:
        server.kill()


def _payload(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def test_admin_password_from_the_environment_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "env").mkdir()
    server = RegistryProcess(tmp_path / "env", server_args=["--admin"],
                             env={"REGISTRY_ADMIN_PASSWORD": "from-the-environment"})
    try:
        server.start()
        assert "from-the-environment" not in server.logs() and "shown once" not in server.logs()
        token_session(server, "admin", "from-the-environment", "repository:x:pull")
        assert not (server.root / "auth").exists()
    finally:
        server.kill()
    (tmp_path / "file").mkdir()
    secret = tmp_path / "file" / "admin-password"
    secret.write_text("from-a-file\n")
    server = RegistryProcess(tmp_path / "file", server_args=["--admin", "--admin-password-file", str(secret)],
                             env={"REGISTRY_ADMIN_PASSWORD": ""})
    try:
        server.start()
        token_session(server, "admin", "from-a-file", "repository:x:pull")
    finally:
        server.kill()
    missing = subprocess.run(
        [sys.executable, "-m", "app", "server", "--admin", "--admin-password-file", str(tmp_path / "nope")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "REGISTRY_ADMIN_PASSWORD": "", "HOME": str(tmp_path)})
    assert missing.returncode == 2 and "--admin-password-file" in missing.stderr and "Traceback" not in \
        missing.stderr, missing.stderr


def test_a_configuration_folder_is_read_in_name_order_and_watched(tmp_path: Path) -> None:
    folder = tmp_path / "conf.d"
    folder.mkdir()
    server = RegistryProcess(tmp_path)
    base = server.config_path.read_text()
    server.config_path.unlink()
    (folder / "00-server.toml").write_text(base)
    (folder / "10-identities.toml").write_text(
        f'[auth.identity.alice]\nusername = "alice"\npassword = "{FAST.hash("alice-pw")}"\n')
    (folder / "20-policy.toml").write_text(
        '[global.access_policy]\ndefault_allow = false\nrules = [\'identity.username == "alice"\']\n')
    (folder / "README.md").write_text("not configuration")
    server.config_args = ["-c", str(folder)]
    try:
        server.start()
        assert requests.get(f"{server.url}/v2/", auth=("alice", "alice-pw"), timeout=30).status_code == 200
        assert requests.get(f"{server.url}/v2/", auth=("bob", "bob-pw"), timeout=30).status_code == 401
        # A file added to the folder is picked up live.
        replace_file(folder / "15-bob.toml",
                     f'[auth.identity.bob]\nusername = "bob"\npassword = "{FAST.hash("bob-pw")}"\n'.encode())
        deadline = time.monotonic() + 10
        while requests.get(f"{server.url}/v2/", auth=("bob", "bob-pw"), timeout=30).status_code != 403:
            assert time.monotonic() < deadline, server.logs()
            time.sleep(0.2)
    finally:
        server.kill()


def test_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = RegistryProcess(tmp_path, port=port)
        result = subprocess.run([sys.executable, "-m", "app", *server.config_args, "server"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot listen on 127.0.0.1:{port}: address already in use; choose another "
                      "port with `[server] port` in the configuration or REGISTRY__SERVER__PORT=<port>"]
    assert "Traceback" not in result.stderr


@pytest.fixture
def guarded(start_registry: object) -> RegistryProcess:
    assert callable(start_registry)
    server: RegistryProcess = start_registry(f"""
[auth.identity.alice]
username = "alice"
password = "{FAST.hash('alice-pw')}"

[global.access_policy]
default_allow = false
rules = ['identity.username == "alice" && request.action != "delete-manifest"']
""")
    return server


def test_access_log_names_query_agent_identity_and_refusals(guarded: RegistryProcess) -> None:
    headers = {"User-Agent": "docker/20.10.24 go/go1.19.8"}
    requests.get(f"{guarded.url}/v2/team/app/tags/list?n=5&last=a", auth=("alice", "alice-pw"),
                 headers=headers, timeout=30)
    requests.delete(f"{guarded.url}/v2/team/app/manifests/latest", auth=("alice", "alice-pw"), timeout=30)
    requests.get(f"{guarded.url}/v2/team/app/tags/list", auth=("alice", "bad-password"), timeout=30)
    time.sleep(0.2)
    lines = [json.loads(line) for line in guarded.logs().splitlines() if '"registry.access"' in line]
    listing = next(line for line in lines if line.get("query") == "n=5&last=a")
    assert listing["user_agent"] == headers["User-Agent"] and listing["identity"] == "alice"
    assert listing["action"] == "list-tags" and listing["namespace"] == "team/app"
    refused = next(line for line in lines if line["method"] == "DELETE")
    assert refused["status"] == 403 and refused["error"] == "DENIED" and refused["identity"] == "alice"
    assert refused["action"] == "delete-manifest" and refused["reason"]
    wrong = next(line for line in lines if line["status"] == 401 and line.get("reason"))
    assert wrong["reason"] == "invalid username or password" and "bad-password" not in json.dumps(lines)
