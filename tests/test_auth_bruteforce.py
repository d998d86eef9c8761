"""A flood of wrong passwords (real Argon2id cost: 64 MiB per verification) against the real server:
memory stays bounded, excess attempts are refused at once, and a valid user keeps getting answers."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import requests
from argon2 import PasswordHasher

from app.auth.verification import MAX_PENDING, WORKERS
from tests.helpers.server import RegistryProcess

MIB = 1024 * 1024
ARGON2_MEMORY = PasswordHasher().memory_cost * 1024  # bytes per verification, default parameters


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing from /proc/{pid}/status")


def test_brute_force_keeps_memory_bounded(start_registry: Callable[..., RegistryProcess]) -> None:
    real_hash = PasswordHasher().hash("correct horse")  # the default, deliberately expensive, cost
    server = start_registry(f"""
[auth.identity.alice]
username = "alice"
password = "{real_hash}"

[global.access_policy]
rules = ['identity.username == "alice"']
""")
    assert server.process is not None
    pid = server.process.pid
    assert server.get("/v2/", auth=("alice", "correct horse")).status_code == 200  # now cached
    server.get("/v2/", auth=("alice", "warm-up wrong password"))  # the pool threads exist now
    baseline = status_kib(pid, "VmRSS") * 1024

    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(201)

    def attack(n: int) -> None:
        user = "alice" if n % 2 else f"user{n}"  # wrong passwords and unknown users alike
        start.wait()
        try:
            status = requests.get(f"{server.url}/v2/", auth=(user, f"guess-{n}"), timeout=120).status_code
        except requests.RequestException:
            status = 0
        with lock:
            statuses[status] += 1

    threads = [threading.Thread(target=attack, args=(n,)) for n in range(200)]
    for thread in threads:
        thread.start()
    start.wait()
    # While the flood is on, the valid (cached) user still gets answers.
    during = [requests.get(f"{server.url}/v2/", auth=("alice", "correct horse"), timeout=120).status_code
              for _ in range(3)]
    peak_during = status_kib(pid, "VmRSS") * 1024
    for thread in threads:
        thread.join(180)

    assert during == [200, 200, 200]
    assert statuses[0] == 0, statuses
    assert set(statuses) <= {401, 429}, statuses  # never anonymous, never a 5xx
    assert statuses[401] >= 1 and statuses[429] >= 1, statuses
    # Peak memory: at most WORKERS verifications hold their 64 MiB at once (plus allocator slack),
    # whatever the number of attempts.
    peak = status_kib(pid, "VmHWM") * 1024
    bound = baseline + (WORKERS + 1) * ARGON2_MEMORY + 64 * MIB
    print(f"RSS baseline {baseline / MIB:.0f} MiB, during flood {peak_during / MIB:.0f} MiB, "
          f"peak {peak / MIB:.0f} MiB (bound {bound / MIB:.0f} MiB); {dict(statuses)}; "
          f"{WORKERS} workers, {MAX_PENDING} pending at most")
    assert peak < bound
    # And afterwards an uncached login still works.
    assert requests.get(f"{server.url}/v2/", auth=("alice", "correct horse"), timeout=60,
                        headers={"Connection": "close"}).status_code == 200
    refused = [requests.get(f"{server.url}/v2/", auth=("alice", "wrong"), timeout=60).status_code
               for _ in range(2)]
    assert refused == [401, 401]
