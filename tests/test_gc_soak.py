"""GC soak (issue 13): 20 clients push, pull and delete for two minutes through two replicas on one store
(one folder, or one S3 bucket on moto) and one `redis-server`, while each replica's garbage collector
runs every second with a grace period of 0 s (fs) or 1 s (S3) and `delete_untagged`.

The clients re-reference layers that may just have become unreferenced: a layer another client pushed
is HEADed and, on a 200, its upload is skipped and the manifest that references it PUT at once (the
pattern the sweeper races with); some are mounted from another repository instead. A PUT may then be
refused with MANIFEST_BLOB_UNKNOWN (the blob went before the PUT looked, which is correct); a PUT that
succeeds must never name a blob the sweeper takes afterwards.

Afterwards every image that was pushed and not deleted (what each tag names at the end) pulls back
byte-identical from both replicas: 0 missing blobs. Every digest is uploaded at most once (a blob found
gone is never uploaded again; configs carry a nonce), so once the load stops and the grace period
passes, the store holds exactly the live images' blobs and the replicas' `registry_gc_bytes_reclaimed`
sum to the bytes of everything else that was stored.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from app.lifecycle.checks.blobs import blob_digest
from app.storage import layout
from tests.helpers.drivers import DriverSpec
from tests.helpers.oci import Image, digest_of, make_image, random_layer
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import RegistryProcess, toml_value
from tests.helpers.stores import StoreView, new_s3_store, s3_section

CLIENTS = 20
SECONDS = float(os.environ.get("REGISTRY_SOAK_SECONDS", "120"))  # the two minutes
REPOSITORIES = [f"soak/r{n}" for n in range(4)]
TAGS_PER_CLIENT = 3
GRACE = {"fs": "0s", "s3": "1s"}
ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


@dataclass
class Replicas:
    servers: list[RegistryProcess]
    store: StoreView
    grace: float


@pytest.fixture(params=["fs", "s3"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicas]:
    redis = RedisServer(tmp_path / "redis").start()
    if request.param == "fs":
        spec = DriverSpec("fs", root=str(tmp_path / "shared"))
        store = f"[blob_store.fs]\nroot_dir = {toml_value(tmp_path / 'shared')}\n"
    else:
        spec = new_s3_store(request.getfixturevalue("moto_server").endpoint)
        store = s3_section(spec)
    grace = GRACE[request.param]
    section = (f"{store}\n[metadata_store.{request.param}.redis]\nurl = {toml_value(redis.url)}\nttl = 5\n\n"
               f"[cache.redis]\nurl = {toml_value(redis.url)}\nkey_prefix = \"soak:\"\n\n"
               f"[global.gc]\ninterval = \"1s\"\ngrace_period = \"{grace}\"\ndelete_untagged = true\n")
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        servers.append(RegistryProcess(tmp_path / name, section).start())
    yield Replicas(servers, StoreView(spec), float(grace.rstrip("s")))
    for server in servers:
        server.kill()
    redis.stop()


@dataclass
class Ledger:
    """What the clients stored and what they expect to stay, shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    created: dict[str, int] = field(default_factory=dict)  # every blob digest stored, and its size
    pool: dict[str, dict[str, bytes]] = field(
        default_factory=lambda: {name: {} for name in REPOSITORIES})  # layers others may re-reference
    live: dict[tuple[str, str], Image] = field(default_factory=dict)  # (repository, tag) -> image
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def stored(self, data: bytes) -> None:
        with self.lock:
            digest = digest_of(data)
            assert digest not in self.created, f"{digest} uploaded twice: the accounting needs once"
            self.created[digest] = len(data)

    def forget(self, digests: list[str]) -> None:
        """Blobs found gone: never offered (nor uploaded) again."""
        with self.lock:
            for layers in self.pool.values():
                for digest in digests:
                    layers.pop(digest, None)


class Client(threading.Thread):
    def __init__(self, number: int, replicas: list[RegistryProcess], ledger: Ledger, until: float) -> None:
        super().__init__(name=f"soak-client-{number}", daemon=True)
        self.number = number
        self.replicas = replicas
        self.ledger = ledger
        self.until = until
        self.random = random.Random(number)
        self.session = requests.Session()
        self.repository = REPOSITORIES[number % len(REPOSITORIES)]
        self.tags = [f"c{number}-t{k}" for k in range(TAGS_PER_CLIENT)]
        self.mine: dict[str, Image] = {}  # my tags and what they name

    def url(self) -> str:
        return self.random.choice(self.replicas).url

    def fail(self, what: str, response: requests.Response | None = None) -> None:
        detail = "" if response is None else f": {response.status_code} {response.text[:300]}"
        with self.ledger.lock:
            self.ledger.errors.append(f"client {self.number}: {what}{detail}")

    def run(self) -> None:
        try:
            while time.monotonic() < self.until:
                roll = self.random.random()
                if roll < 0.5 or not self.mine:
                    self.push()
                elif roll < 0.8:
                    self.pull()
                else:
                    self.delete()
        except Exception as exc:  # reported to the test, which fails
            self.fail(f"{type(exc).__name__}: {exc}")

    # --- push ---------------------------------------------------------------------------------
    def _reuse(self) -> tuple[list[bytes], list[str]]:
        """Layers to re-reference: a few of the pool's, HEADed (skipped upload) or mounted from another
        repository. Returns the layers and the digests of those found gone."""
        with self.ledger.lock:
            here = list(self.ledger.pool[self.repository].items())
            elsewhere = [(name, digest, data) for name, layers in self.ledger.pool.items()
                         if name != self.repository for digest, data in layers.items()]
        layers: list[bytes] = []
        gone: list[str] = []
        for digest, data in self.random.sample(here, min(len(here), self.random.randint(0, 2))):
            response = self.session.head(f"{self.url()}/v2/{self.repository}/blobs/{digest}", timeout=60)
            if response.status_code == 200:
                layers.append(data)
                self.ledger.count("head_then_reference")
            elif response.status_code == 404:
                gone.append(digest)
            else:
                self.fail("HEAD blob", response)
        if elsewhere and self.random.random() < 0.3:
            source, digest, data = self.random.choice(elsewhere)
            response = self.session.post(f"{self.url()}/v2/{self.repository}/blobs/uploads/",
                                         params={"mount": digest, "from": source}, timeout=60)
            if response.status_code == 201:
                layers.append(data)
                self.ledger.count("mounted")
            elif response.status_code == 202:  # not mountable (gone): the session it opened is dropped
                gone.append(digest)
                location = response.headers["Location"]
                self.session.delete(location if location.startswith("http") else f"{self.url()}{location}",
                                    timeout=60)
            else:
                self.fail("mount", response)
        return layers, gone

    def push(self) -> None:
        reused, gone = self._reuse()
        self.ledger.forget(gone)
        fresh = [random_layer(self.random.randint(512, 16384)) for _ in range(self.random.randint(0, 2))]
        layers = list(dict.fromkeys([*reused, *fresh])) or [random_layer(1024)]
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "nonce": f"{self.number}-{time.monotonic_ns()}-{self.random.random()}",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        image = make_image(layers, config=config)
        reused_digests = {digest_of(layer) for layer in reused}
        for digest, data in image.blobs.items():
            if digest in reused_digests:
                continue
            response = self.session.post(f"{self.url()}/v2/{self.repository}/blobs/uploads/",
                                         params={"digest": digest}, data=data, timeout=60,
                                         headers={"Content-Type": "application/octet-stream"})
            if response.status_code != 201:
                return self.fail("blob upload", response)
            self.ledger.stored(data)
        tag = self.random.choice(self.tags)
        response = self.session.put(f"{self.url()}/v2/{self.repository}/manifests/{tag}", data=image.manifest,
                                    headers={"Content-Type": image.media_type}, timeout=60)
        if response.status_code == 400 and "MANIFEST_BLOB_UNKNOWN" in response.text:
            # A blob went between our look (or upload) and the PUT's: refused, nothing written. Its
            # digests are never used again (each is stored at most once); the next push makes new ones.
            self.ledger.count("refused_blob_unknown")
            self.ledger.forget(list(image.blobs))
            return None
        if response.status_code != 201:
            return self.fail("manifest PUT", response)
        self.ledger.stored(image.manifest)
        self.ledger.count("pushed")
        self.mine[tag] = image
        with self.ledger.lock:
            self.ledger.live[(self.repository, tag)] = image
            self.ledger.pool[self.repository].update({digest_of(layer): layer for layer in image.layers})
        return None

    # --- pull and delete ----------------------------------------------------------------------
    def pull(self) -> None:
        tag = self.random.choice(list(self.mine))
        image = self.mine[tag]
        url = self.url()
        response = self.session.get(f"{url}/v2/{self.repository}/manifests/{tag}", headers=ACCEPT, timeout=60)
        if response.status_code != 200 or response.content != image.manifest:
            return self.fail(f"pull of {tag}: manifest", response)
        for digest, data in image.blobs.items():
            blob = self.session.get(f"{url}/v2/{self.repository}/blobs/{digest}", timeout=60)
            if blob.status_code != 200 or blob.content != data:
                self.ledger.count("missing_blobs")
                return self.fail(f"pull of {tag}: blob {digest}", blob)
        self.ledger.count("pulled")
        return None

    def delete(self) -> None:
        tag = self.random.choice(list(self.mine))
        image = self.mine.pop(tag)
        with self.ledger.lock:
            del self.ledger.live[(self.repository, tag)]
        # By digest (the manifest and its tag) or the tag alone (the manifest is left untagged: GC's).
        reference = image.digest if self.random.random() < 0.5 else tag
        response = self.session.delete(f"{self.url()}/v2/{self.repository}/manifests/{reference}", timeout=60)
        if response.status_code != 202:
            return self.fail(f"delete of {reference}", response)
        self.ledger.count("deleted")
        return None


def _metric(server: RegistryProcess, name: str, labels: str = "") -> float:
    """The sum of a family's samples on `server` (those whose labels include `labels`)."""
    text = server.get("/metrics").text
    samples = re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return sum(float(value) for found, value in samples if labels in found)


def _runs(server: RegistryProcess) -> list[dict[str, object]]:
    """The fields of each GC run the server logged (one line per run)."""
    found = []
    for line in server.logs().splitlines():
        if '"garbage collection done"' in line:
            found.append(json.loads(line))
    return found


def _stored_blobs(store: StoreView) -> set[str]:
    return {str(digest) for key in store.keys(layout.BLOBS) if (digest := blob_digest(key)) is not None}


@pytest.mark.timeout(SECONDS + 900)  # two minutes of load, then the pull-back and the last sweeps
def test_gc_every_second_beside_20_clients_loses_no_blob_and_reclaims_exactly_the_garbage(
        replicas: Replicas) -> None:
    ledger = Ledger()
    until = time.monotonic() + SECONDS
    clients = [Client(n, replicas.servers, ledger, until) for n in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(SECONDS + 120)
        assert not client.is_alive(), f"{client.name} is stuck"
    assert ledger.errors == [], "\n".join(ledger.errors[:20])
    assert ledger.counts.get("pushed", 0) > CLIENTS and ledger.counts.get("head_then_reference", 0) > 0

    # Every image a tag names pulls back complete from both replicas.
    missing = 0
    for (repository, tag), image in sorted(ledger.live.items()):
        for server in replicas.servers:
            manifest = server.get(f"/v2/{repository}/manifests/{tag}", headers=ACCEPT)
            assert manifest.status_code == 200 and manifest.content == image.manifest, (repository, tag)
            for digest, data in image.blobs.items():
                blob = server.get(f"/v2/{repository}/blobs/{digest}")
                missing += blob.status_code != 200 or blob.content != data
    assert missing == 0, f"{missing} blobs of live images missing or wrong"

    # With the load stopped and the grace period over, the collectors take everything else.
    live = {digest: len(data) for image in ledger.live.values()
            for digest, data in [*image.blobs.items(), (image.digest, image.manifest)]}
    assert set(live) <= set(ledger.created)
    # The backlog may be large (on moto a deletion takes ~65 ms, one after another): wait for as
    # long as the collectors make progress, failing when a minute passes without any.
    time.sleep(replicas.grace + 1.1)
    left, progress = len(ledger.created), time.monotonic()
    while (stored := _stored_blobs(replicas.store)) != set(live):
        assert stored >= set(live), f"referenced blobs gone from the store: {sorted(set(live) - stored)[:5]}"
        if len(stored) < left:
            left, progress = len(stored), time.monotonic()
        assert time.monotonic() - progress < 60, \
            f"{len(stored - set(live))} unreferenced blobs not collected, no progress for 60 s"
        time.sleep(0.5)
    time.sleep(1.5)  # a run that was sweeping the last batch has reported its counts

    reclaimed = sum(_metric(server, "registry_gc_bytes_reclaimed_total") for server in replicas.servers)
    deleted = sum(_metric(server, "registry_gc_blobs_deleted_total") for server in replicas.servers)
    runs = sum(_metric(server, "registry_gc_runs_total", 'result="ok"') for server in replicas.servers)
    failed = sum(_metric(server, "registry_gc_runs_total", 'result="failed"') for server in replicas.servers)
    garbage = {digest: size for digest, size in ledger.created.items() if digest not in live}
    logged = [run for server in replicas.servers for run in _runs(server)]
    durations = sorted(float(str(run["seconds"])) for run in logged)
    assert len(logged) == runs, "one log line per run"
    print(f"\nsoak: {dict(sorted(ledger.counts.items()))}, GC runs {runs:.0f} (median "
          f"{durations[len(durations) // 2]:.2f} s, longest {durations[-1]:.2f} s, of all runs' time marking "
          f"{sum(float(str(run['mark_seconds'])) for run in logged):.1f} s and waiting for locks "
          f"{sum(float(str(run['lock_wait_seconds'])) for run in logged):.1f} s of "
          f"{sum(durations):.1f} s; candidates kept on "
          f"recheck {sum(int(str(run['kept_on_recheck'])) for run in logged)}), blobs stored "
          f"{len(ledger.created)}, blobs deleted {deleted:.0f}, bytes reclaimed {reclaimed:.0f}, live images "
          f"{len(ledger.live)} ({len(live)} blobs), missing blobs {missing}")
    assert failed == 0, "a GC run failed: see the replicas' logs"
    assert deleted == len(garbage)
    assert reclaimed == sum(garbage.values())
    assert _stored_blobs(replicas.store) == set(live)
