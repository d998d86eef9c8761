"""Running black-box suites with Basic credentials under a deny-by-default policy.

With `REGISTRY_TEST_AUTH=basic` in the environment, the `registry`, `shared_registry` and
`start_registry` fixtures start servers that know one identity and deny everything else, and their
sessions send that identity's credentials (the `OCI_USERNAME`/`OCI_PASSWORD` style of the OCI
conformance suite). tests/test_conformance_auth.py runs the API suites that way.
"""

from __future__ import annotations

import base64
import os
from functools import cache

from argon2 import PasswordHasher

from tests.helpers.server import RegistryProcess

ENVIRONMENT_VARIABLE = "REGISTRY_TEST_AUTH"
USERNAME = "conformance"
PASSWORD = "conformance-password"


def enabled() -> bool:
    return os.environ.get(ENVIRONMENT_VARIABLE) == "basic"


@cache
def config() -> str:
    """One identity, and a global policy that denies everyone else (default_allow = false)."""
    phc_hash = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
    return f"""
[auth.identity.{USERNAME}]
username = "{USERNAME}"
password = "{phc_hash}"

[global.access_policy]
default_allow = false
rules = ['identity.username == "{USERNAME}"']
"""


def with_auth(extra_config: str) -> str:
    return config() + extra_config if enabled() else extra_config


def log_in(server: RegistryProcess) -> RegistryProcess:
    if enabled():
        server.session.auth = (USERNAME, PASSWORD)
    return server


def header_lines(server: RegistryProcess) -> str:
    """The `Authorization` header line (CRLF-terminated) of hand-written requests, if any."""
    if not isinstance(server.session.auth, tuple):
        return ""
    username, password = server.session.auth
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Authorization: Basic {token}\r\n"
