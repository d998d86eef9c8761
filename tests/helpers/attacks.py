"""Attacks on a running server, each beside a normal client whose requests are timed.

Used by tests/test_attacks.py (which asserts that the normal client is served and the attackers are
shed) and by tests/bench/attacks.py (which reports the normal client's latency and the server's peak
memory for the closing notes). Every attack comes from 127.0.0.1; the normal client, where it matters,
from 127.0.0.2 (another address on the loopback network).
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import resource
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.oci import digest_of, make_image, push_blob, push_image
from tests.helpers.server import RegistryProcess

NORMAL_ADDRESS = "127.0.0.2"


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    attackers_cut: int = 0
    attackers: int = 0
    peak_rss_mib: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def p99_ms(self) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return round(ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] * 1000, 1)

    @property
    def worst_ms(self) -> float:
        return round(max(self.latencies) * 1000, 1) if self.latencies else math.nan

    def summary(self) -> dict[str, object]:
        return {"normal_requests": len(self.latencies), "normal_statuses": dict(self.statuses),
                "normal_p99_ms": self.p99_ms, "normal_worst_ms": self.worst_ms,
                "attackers": self.attackers, "attackers_cut_by_server": self.attackers_cut,
                "server_peak_rss_mib": self.peak_rss_mib, **self.notes}


def status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{name} missing from /proc/{pid}/status")


def peak_rss_mib(server: RegistryProcess) -> float:
    assert server.process is not None
    return round(status_kib(server.process.pid, "VmHWM") / 1024, 1)


def raise_own_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def request(server: RegistryProcess, method: str, path: str, *, auth: str | None = None,
            source: str = NORMAL_ADDRESS, timeout: float = 60.0) -> tuple[int, float]:
    """One request on a fresh connection from `source`: (status, seconds); status 0 when it failed."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout,
                                            source_address=(source, 0))
    try:
        headers = {"Authorization": auth} if auth else {}
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except (OSError, http.client.HTTPException):
        return 0, time.perf_counter() - started
    finally:
        connection.close()


def normal_client(server: RegistryProcess, paths: list[str], stop: threading.Event, outcome: Outcome,
                  auth: str | None = None, pause: float = 0.05) -> None:
    while not stop.is_set():
        for path in paths:
            status, seconds = request(server, "GET", path, auth=auth)
            outcome.statuses[status] += 1
            outcome.latencies.append(seconds)
        time.sleep(pause)


@contextlib.contextmanager
def beside_normal_client(server: RegistryProcess, paths: list[str], outcome: Outcome,
                         auth: str | None = None) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=normal_client, args=(server, paths, stop, outcome, auth), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(120)


def closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """Whether the server closed (or reset) this connection within `wait` seconds."""
    sock.settimeout(wait)
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            if not sock.recv(1 << 20):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


# --- stalled body transfers -----------------------------------------------------------------------
def stalled_transfers(server: RegistryProcess, readers: int, writers: int, duration: float) -> Outcome:
    """`readers` clients GET a 32 MiB blob and never read; `writers` PATCH an upload one byte a second."""
    raise_own_descriptor_limit()
    big, small = os.urandom(32 * 1024 * 1024), os.urandom(64 * 1024)
    assert push_blob(server.session, server.url, "attack/big", big).status_code == 201
    assert push_blob(server.session, server.url, "attack/small", small).status_code == 201
    outcome = Outcome(attackers=readers + writers)
    locations = []
    for _ in range(writers):
        start = server.post("/v2/attack/slow/blobs/uploads/")
        assert start.status_code == 202, start.text
        locations.append(start.headers["Location"])
    sockets: list[socket.socket] = []
    for _ in range(readers):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /v2/attack/big/blobs/{digest_of(big)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sockets.append(sock)
    for location in locations:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode())
        sockets.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            for sock in sockets[readers:]:
                with contextlib.suppress(OSError):
                    sock.send(b"x")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    paths = ["/v2/", f"/v2/attack/small/blobs/{digest_of(small)}"]
    with beside_normal_client(server, paths, outcome):
        time.sleep(duration)
    stop.set()
    trickler.join(5)
    cut = [closed_by_peer(sock, 1.0) for sock in sockets]
    outcome.attackers_cut = sum(cut)
    outcome.notes["readers_cut"], outcome.notes["writers_cut"] = sum(cut[:readers]), sum(cut[readers:])
    for sock in sockets:
        sock.close()
    outcome.peak_rss_mib = peak_rss_mib(server)
    return outcome


# --- password flood -----------------------------------------------------------------------------
def password_flood(server: RegistryProcess, attackers: int, logins: list[tuple[str, str]],
                   duration: float) -> Outcome:
    """`attackers` threads send wrong passwords (a known user and unknown ones) from 127.0.0.1 while
    each of `logins` logs in once (uncached) from 127.0.0.2; the normal latencies are those logins."""
    import base64

    def basic(username: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    outcome = Outcome(attackers=attackers)
    attack_statuses: Counter[int] = Counter()
    stop = threading.Event()
    lock = threading.Lock()

    def attack(n: int) -> None:
        guess = 0
        while not stop.is_set():
            user = logins[0][0] if n % 2 else f"intruder{n}-{guess}"
            status, _ = request(server, "GET", "/v2/", auth=basic(user, f"guess-{n}-{guess}"),
                                source="127.0.0.1")
            guess += 1
            with lock:
                attack_statuses[status] += 1

    threads = [threading.Thread(target=attack, args=(n,), daemon=True) for n in range(attackers)]
    for thread in threads:
        thread.start()
    time.sleep(min(2.0, duration / 4))  # the flood is on
    for username, password in logins:
        status, seconds = request(server, "GET", "/v2/", auth=basic(username, password))
        outcome.statuses[status] += 1
        outcome.latencies.append(seconds)
    time.sleep(max(0.0, duration - sum(outcome.latencies)))
    stop.set()
    for thread in threads:
        thread.join(120)
    outcome.notes["attacker_statuses"] = dict(attack_statuses)
    outcome.peak_rss_mib = peak_rss_mib(server)
    return outcome


# --- idle and slowloris connections ---------------------------------------------------------------
def idle_and_slowloris(server: RegistryProcess, idle: int, slowloris: int, duration: float) -> Outcome:
    """`idle` connections that send nothing and `slowloris` ones that send a header line now and then."""
    raise_own_descriptor_limit()
    outcome = Outcome(attackers=idle + slowloris)
    quiet: list[socket.socket] = []
    trickling: list[socket.socket] = []
    for n in range(idle + slowloris):
        try:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        except OSError:
            outcome.notes["connect_refused"] = int(outcome.notes.get("connect_refused", 0)) + 1  # type: ignore[call-overload]
            continue
        if n < idle:
            quiet.append(sock)
        else:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            trickling.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            for sock in trickling:
                with contextlib.suppress(OSError):
                    sock.send(b"X-Slow: 1\r\n")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    assert server.process is not None
    rss_during: list[float] = []
    with beside_normal_client(server, ["/v2/"], outcome):
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            rss_during.append(status_kib(server.process.pid, "VmRSS") / 1024)
            time.sleep(0.5)
    stop.set()
    trickler.join(5)
    outcome.attackers_cut = sum(closed_by_peer(sock, 0.2) for sock in quiet + trickling)
    for sock in quiet + trickling:
        sock.close()
    outcome.peak_rss_mib = peak_rss_mib(server)
    outcome.notes["rss_during_mib"] = round(max(rss_during), 1) if rss_during else None
    return outcome


# --- DELETE racing PUT of one manifest ------------------------------------------------------------
def delete_put_storm(server: RegistryProcess, workers: int, rounds: int) -> Outcome:
    """Half the workers PUT one manifest (by tag and by digest), half DELETE it by digest."""
    import requests

    image = make_image()
    name = "storm/app"
    assert push_image(server.session, server.url, name, image, "seed").status_code == 201
    outcome = Outcome(attackers=workers)
    lock = threading.Lock()
    headers = {"Content-Type": image.media_type}

    def work(n: int) -> None:
        session = requests.Session()
        session.auth = server.session.auth
        for i in range(rounds):
            started = time.perf_counter()
            if n % 2:
                response = session.delete(f"{server.url}/v2/{name}/manifests/{image.digest}", timeout=60)
            else:
                reference = f"t{n}-{i % 5}" if i % 2 else image.digest
                response = session.put(f"{server.url}/v2/{name}/manifests/{reference}", data=image.manifest,
                                       headers=headers, timeout=60)
            with lock:
                outcome.statuses[response.status_code] += 1
                outcome.latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    outcome.peak_rss_mib = peak_rss_mib(server)
    return outcome


def dangling_tags(server: RegistryProcess, name: str = "storm/app") -> list[str]:
    """Tags the registry lists whose manifest it cannot serve."""
    listed = server.get(f"/v2/{name}/tags/list")
    if listed.status_code == 404:
        return []
    tags = listed.json().get("tags") or []
    accept = ("application/vnd.oci.image.manifest.v1+json, "
              "application/vnd.docker.distribution.manifest.v2+json")
    return [tag for tag in tags
            if server.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": accept}).status_code != 200]


Scenario = Callable[[RegistryProcess], Outcome]
