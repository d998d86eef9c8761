"""Namespace membership: outside every repository with no global policy → refused for reads and writes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from argon2 import PasswordHasher

from tests.helpers.oci import make_image, push_blob, push_image
from tests.helpers.server import REPO_ROOT, RegistryProcess

CONFIG = """
[repository."team"]
access_policy = { default_allow = true }

[repository."team/locked"]
access_policy = { default_allow = false }

[repository."nopolicy"]
"""


def test_membership_rules(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(CONFIG)
    image = make_image()
    # team and nested namespaces: allowed by the repository's policy.
    assert push_image(server.session, server.url, "team/app", image, "v1").status_code == 201
    assert server.get("/v2/team/app/manifests/v1").status_code == 200
    # The longest prefix wins: team/locked/* denies.
    denied = push_blob(server.session, server.url, "team/locked/app", b"data")
    assert denied.status_code in (401, 403)
    assert denied.json()["errors"][0]["code"] in ("UNAUTHORIZED", "DENIED")
    # A repository without access_policy denies.
    assert server.get("/v2/nopolicy/x/tags/list").status_code in (401, 403)
    # Outside every repository: NAME_UNKNOWN for reads and writes alike.
    for response in (server.get("/v2/elsewhere/tags/list"),
                     server.get(f"/v2/elsewhere/manifests/{image.digest}"),
                     push_blob(server.session, server.url, "elsewhere", b"data")):
        assert response.status_code == 404
        assert response.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    # "teammate" is not under "team/".
    assert push_blob(server.session, server.url, "teammate", b"data").status_code == 404


def test_invalid_config_exits_with_precise_message(tmp_path: Path) -> None:
    config = tmp_path / "invalid.toml"
    config.write_text("[server]\nprot = 1\n")
    result = subprocess.run([sys.executable, "-m", "app", "-c", str(config), "server"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert str(config) in result.stderr and "server.prot" in result.stderr and "unknown key" in result.stderr


def test_check_config_prints_redacted(tmp_path: Path) -> None:
    config = tmp_path / "check.toml"
    phc_hash = PasswordHasher().hash("secret")  # a real hash: the configuration checks them
    config.write_text(f'[auth.identity.a]\nusername = "a"\npassword = "{phc_hash}"\n')
    result = subprocess.run([sys.executable, "-m", "app", "-c", str(config), "check-config"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert '"password": "***"' in result.stdout and phc_hash.rsplit("$", 2)[1] not in result.stdout
