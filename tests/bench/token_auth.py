"""Token service numbers: latency of token requests (p50/p99) and what a bearer token adds per request.

    python -m tests.bench.token_auth [--requests 2000] [--json report.json]

Not a test: it asserts nothing and prints a small report. One `registry server` with two identities and
repository policies (the production shape of docs/auth.md), default Argon2 parameters, keep-alive
connections from one client thread.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from argon2 import PasswordHasher

from tests.helpers.oci import make_image, push_image
from tests.helpers.server import RegistryProcess

SERVICE = "simple-registry"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]

    return {"p50_ms": round(rank(50) * 1000, 3), "p99_ms": round(rank(99) * 1000, 3), "n": len(ordered)}


def measure(count: int, call: Callable[[], requests.Response]) -> dict[str, float]:
    for _ in range(min(50, count)):  # warm-up: connection, caches
        call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = call()
        samples.append(time.perf_counter() - started)
        assert response.status_code in (200, 404), response.text
    return percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    hasher = PasswordHasher()  # the default parameters: what operators get from `registry argon`
    config = f"""
[auth.identity.alice]
username = "alice"
password = "{hasher.hash('alice-pw')}"
groups = ["dev"]

[auth.identity.bob]
username = "bob"
password = "{hasher.hash('bob-pw')}"

[repository."public"]
access_policy = {{ default_allow = false, rules = [
  'request.action in ["get-manifest", "get-blob", "list-tags", "get-referrers"]',
  '"dev" in identity.groups'] }}
"""
    with tempfile.TemporaryDirectory(prefix="token-bench-") as folder:
        server = RegistryProcess(Path(folder), config).start()
        try:
            report = run(server, args.requests)
        finally:
            server.kill()
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


def run(server: RegistryProcess, count: int) -> dict[str, Any]:
    session = requests.Session()
    token_url = f"{server.url}/token"
    scope = {"service": SERVICE, "scope": "repository:public/app:pull,push"}
    first = time.perf_counter()
    login = session.get(token_url, params={**scope, "offline_token": "true"}, auth=("alice", "alice-pw"),
                        timeout=30)
    first_login = time.perf_counter() - first
    refresh = login.json()["refresh_token"]
    token = login.json()["token"]
    push_session = requests.Session()
    push_session.headers["Authorization"] = f"Bearer {token}"
    push_image(push_session, server.url, "public/app", make_image(), "1")
    manifest = f"{server.url}/v2/public/app/manifests/1"
    basic = requests.Session()
    basic.auth = ("alice", "alice-pw")
    return {
        "first_login_ms (argon2 verification)": round(first_login * 1000, 1),
        "token GET, anonymous": measure(count, lambda: session.get(token_url, params=scope, timeout=30)),
        "token GET, Basic (verified credentials cached)": measure(
            count, lambda: session.get(token_url, params=scope, auth=("alice", "alice-pw"), timeout=30)),
        "token POST, refresh_token grant": measure(count, lambda: session.post(token_url, timeout=30, data={
            **scope, "grant_type": "refresh_token", "refresh_token": refresh, "client_id": "bench"})),
        "manifest GET with a bearer token": measure(count, lambda: push_session.get(manifest, timeout=30)),
        "manifest GET with Basic": measure(count, lambda: basic.get(manifest, timeout=30)),
    }


if __name__ == "__main__":
    main()
