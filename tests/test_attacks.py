"""Hostile load against the real server, each attack beside a normal client: its requests must keep
being answered (no 503, each within seconds instead of the tens of seconds they took before), and the
server must shed the attackers. Limits are set short here so the attacks are judged within seconds;
the defaults are in docs/configuration.md. Figures: `python -m tests.bench.attacks`."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from argon2 import PasswordHasher

from tests.helpers import attacks
from tests.helpers.server import RegistryProcess

SHORT_LIMITS = """
[global]
max_concurrent_requests = 8

[global.limits]
header_read_timeout = 2
keepalive_timeout = 3
body_inactivity_timeout = 3
min_transfer_rate = 1024
transfer_rate_window = 2
"""
# Before: a request waited up to 30 s for a slot held by a stalled client, then got 503.
SERVED_WITHIN = 5.0


def assert_served(outcome: attacks.Outcome) -> None:
    assert outcome.latencies, "the normal client made no request"
    assert set(outcome.statuses) == {200}, outcome.summary()
    assert max(outcome.latencies) < SERVED_WITHIN, outcome.summary()


def test_stalled_readers_and_writers_are_cut_and_hold_no_slot(
        start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(SHORT_LIMITS)
    outcome = attacks.stalled_transfers(server, readers=12, writers=12, duration=8)
    print(outcome.summary())
    assert_served(outcome)
    assert outcome.attackers_cut == outcome.attackers, outcome.summary()
    assert "cut a slow reader" in server.logs() and "request body cut" in server.logs()


def test_a_wrong_password_flood_does_not_lock_out_other_users(
        start_registry: Callable[..., RegistryProcess]) -> None:
    hasher = PasswordHasher()  # the real cost: ~0.1-0.25 s and 64 MiB per verification
    logins = [(f"user{n}", f"password-{n}") for n in range(10)]
    identities = "".join(f'[auth.identity.{user}]\nusername = "{user}"\npassword = "{hasher.hash(pw)}"\n'
                         for user, pw in logins)
    server = start_registry(identities + "[global.access_policy]\nrules = ['identity.username != null']\n")
    outcome = attacks.password_flood(server, attackers=32, logins=logins, duration=6)
    print(outcome.summary())
    # Every legitimate first login succeeds while 32 clients flood wrong passwords.
    assert outcome.statuses == {200: len(logins)}, outcome.summary()
    flood = outcome.notes["attacker_statuses"]
    assert isinstance(flood, dict) and set(flood) <= {401, 429} and flood.get(429), flood
    # The flooding address is backed off from the user it guessed, the user elsewhere is not.
    assert "too many wrong passwords" in server.logs() or flood.get(429)


def test_idle_and_slowloris_connections_are_closed(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry(SHORT_LIMITS)
    outcome = attacks.idle_and_slowloris(server, idle=1500, slowloris=300, duration=6)
    print(outcome.summary())
    assert_served(outcome)
    assert outcome.attackers_cut == outcome.attackers, outcome.summary()


def test_idle_connections_make_room_near_the_descriptor_limit(tmp_path: Path) -> None:
    attacks.raise_own_descriptor_limit()
    server = RegistryProcess(tmp_path)  # default timeouts: idle connections would stay for 75 s
    server.command_prefix = ["prlimit", "--nofile=400:400", "--"]
    server.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(380)]
        time.sleep(2.5)  # the warden looks every second
        status, _ = attacks.request(server, "GET", "/v2/", timeout=10)
        assert status == 200, server.logs()[-2000:]
        closed = sum(attacks.closed_by_peer(sock, 0.2) for sock in idle)
        assert closed >= 380 - int(400 * 0.7), closed
        assert "near the file-descriptor limit" in server.logs()
        for sock in idle:
            sock.close()
    finally:
        server.kill()


def test_delete_racing_put_of_one_manifest(start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry()
    outcome = attacks.delete_put_storm(server, workers=16, rounds=40)
    print(outcome.summary())
    assert all(status < 500 for status in outcome.statuses), outcome.summary()
    assert set(outcome.statuses) <= {201, 202, 404}, outcome.summary()
    assert attacks.dangling_tags(server) == []
    server.restart()
    assert attacks.dangling_tags(server) == []


def test_many_concurrent_requests_of_one_client_are_refused_at_once(
        start_registry: Callable[..., RegistryProcess]) -> None:
    server = start_registry('[global.limits]\nmax_requests_per_client = 4\n')
    big = b"b" * (8 * 1024 * 1024)
    from tests.helpers.oci import digest_of, push_blob

    assert push_blob(server.session, server.url, "one/client", big).status_code == 201
    # Four slow uploads from 127.0.0.1 in flight (their bodies trickle in) ...
    socks = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        start = server.post("/v2/one/client/blobs/uploads/")
        sock.sendall(f"PATCH {start.headers['Location']} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                     .encode())
        socks.append(sock)
    time.sleep(0.5)
    # ... a fifth request of the same client is told to come back later, another client is served.
    status, _ = attacks.request(server, "GET", "/v2/", source="127.0.0.1")
    assert status == 429
    status, _ = attacks.request(server, "GET", f"/v2/one/client/blobs/{digest_of(big)}")
    assert status == 200
    for sock in socks:
        sock.close()
    threading.Event().wait(0.5)
    status, _ = attacks.request(server, "GET", "/v2/", source="127.0.0.1")
    assert status == 200
