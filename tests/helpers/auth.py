"""Running black-box suites with credentials under a deny-by-default policy.

With `REGISTRY_TEST_AUTH=basic` or `=token` in the environment, the `registry`, `shared_registry` and
`start_registry` fixtures start servers that know one identity and deny everything else (the token
service is on, as it is whenever identities exist). With `basic`, their sessions send that identity's
credentials straight to every endpoint (the `OCI_USERNAME`/`OCI_PASSWORD` style of the OCI conformance
suite); with `token`, they behave like docker and containerd: fetch a token from the challenge's realm
for the scope each request needs, and send it as a bearer token. tests/test_conformance_auth.py runs
the API suites both ways. Hand-written raw requests send Basic credentials in both modes.
"""

from __future__ import annotations

import base64
import os
import re
from functools import cache
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from argon2 import PasswordHasher

from tests.helpers.server import RegistryProcess

ENVIRONMENT_VARIABLE = "REGISTRY_TEST_AUTH"
USERNAME = "conformance"
PASSWORD = "conformance-password"
MODES = ("basic", "token")


def mode() -> str | None:
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    return value if value in MODES else None


def enabled() -> bool:
    return mode() is not None


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
    if mode() == "basic":
        server.session.auth = (USERNAME, PASSWORD)
    elif mode() == "token":
        server.session.auth = TokenAuth(USERNAME, PASSWORD)
    return server


def credentials(server: RegistryProcess) -> tuple[str, str] | None:
    """The username and password the server's session logs in with, if any (for real clients)."""
    found = server.session.auth
    if isinstance(found, TokenAuth):
        return found.username, found.password
    return found if isinstance(found, tuple) else None


def header_lines(server: RegistryProcess) -> str:
    """The `Authorization` header line (CRLF-terminated) of hand-written requests, if any."""
    found = credentials(server)
    if found is None:
        return ""
    username, password = found
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Authorization: Basic {token}\r\n"


_PARAMETER = re.compile(r'(\w+)="([^"]*)"')
_REPOSITORY_PATH = re.compile(r"/v2/(?P<name>.+?)/(?:blobs|manifests|tags|referrers)(?:/|$)")


def scopes_for(method: str, url: str) -> list[str]:
    """What a client asks a token for before this request (docker's and containerd's choice)."""
    parts = urlsplit(url)
    if parts.path == "/v2/_catalog":
        return ["registry:catalog:*"]
    match = _REPOSITORY_PATH.match(parts.path)
    if match is None:
        return []
    name = match["name"]
    if method in ("GET", "HEAD"):
        scopes = [f"repository:{name}:pull"]
    elif method == "DELETE" and "/blobs/uploads/" not in parts.path:
        scopes = [f"repository:{name}:delete"]
    else:
        scopes = [f"repository:{name}:pull,push"]
    source = re.search(r"(?:^|&)from=([^&]+)", parts.query)
    if source:
        scopes.append(f"repository:{unquote(source.group(1))}:pull")
    return scopes


class TokenAuth(requests.auth.AuthBase):
    """The token protocol as a registry client speaks it: a token per scope, fetched with Basic
    credentials from the realm of the server's Bearer challenge, sent as `Authorization: Bearer`."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.challenge: dict[str, str] | None = None
        self._tokens: dict[tuple[str, ...], str] = {}

    def token(self, scopes: list[str]) -> str | None:
        key = tuple(scopes)
        if key not in self._tokens:
            if self.challenge is None:
                return None
            params: list[tuple[str, str]] = [("service", self.challenge["service"])]
            params += [("scope", scope) for scope in scopes]
            answer = requests.get(self.challenge["realm"], params=params, auth=(self.username, self.password),
                                  timeout=30)
            assert answer.status_code == 200, f"token request failed: {answer.status_code} {answer.text}"
            self._tokens[key] = answer.json()["token"]
        return self._tokens[key]

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        assert request.method is not None and request.url is not None
        token = self.token(scopes_for(request.method, request.url))
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        request.register_hook("response", self._on_response)
        return request

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        header = response.headers.get("WWW-Authenticate", "")
        if response.status_code != 401 or not header.startswith("Bearer ") or self.challenge is not None:
            return response
        # The first challenge tells where tokens come from; the request is sent again with one (as
        # clients do after their first `GET /v2/`), when its body can be sent again.
        self.challenge = dict(_PARAMETER.findall(header))
        request = response.request.copy()
        if request.body is not None and not isinstance(request.body, bytes | str):
            return response
        assert request.method is not None and request.url is not None
        token = self.token(scopes_for(request.method, request.url))
        request.headers["Authorization"] = f"Bearer {token}"
        response.content  # noqa: B018 - release the connection before sending again
        response.raw.release_conn()
        retried = response.connection.send(request, **kwargs)
        retried.history.append(response)
        return retried
