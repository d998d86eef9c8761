"""Retention policies (SPEC §9.3) and the pull times they read.

The rules themselves are domain code, tested on facts; enforcement and pull times are tested on what a
real `registry server` stored: push times set on the tags' `current/link` files (os.utime), pull times
written into `pulledat` files or made by real GETs through the server (then flushed), `registry scrub
--retention` run as a process, and CNCF distribution 2.8 serving the folder afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from app.config import RepositoryConfig, RetentionPolicy
from app.grammar import Digest
from app.lifecycle.retention import RetentionResult, enforce
from app.locks.files import FileLockStore
from app.locks.memory import MemoryLockStore
from app.retention import RetentionPolicies, TagFacts
from app.services.pull_times import PullTimes, read_pulled_at
from app.storage import Storage, layout
from app.storage.fs import FsStorage
from tests.helpers import auth
from tests.helpers.distribution import DistributionProcess
from tests.helpers.oci import OCI_MANIFEST, Image, make_image, push_image, random_layer
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import REPO_ROOT, RegistryProcess, toml_value

DAY = 86400.0
NOW = 1_800_000_000.0
ACCEPT = {"Accept": OCI_MANIFEST}


# --- the rules, on facts --------------------------------------------------------------------------
def _kept(policies: RetentionPolicies, namespace: str, tags: list[TagFacts], now: float = NOW) -> set[str]:
    return {d.facts.tag for d in policies.decide(namespace, tags, now).decisions if d.keep}


def _facts(tag: str, pushed_days_ago: float, pulled_days_ago: float | None = None) -> TagFacts:
    pulled = 0.0 if pulled_days_ago is None else NOW - pulled_days_ago * DAY
    return TagFacts(tag, f"sha256:{tag:0>64}"[:71], NOW - pushed_days_ago * DAY, pulled)


TAGS = [_facts("v1", 30), _facts("v2", 20, 5), _facts("v3", 20, 9), _facts("v4", 40, 0.01),
        _facts("v5", 2), _facts("v6", 0.04), _facts("v7", 10, 15)]


@pytest.mark.parametrize(("rules", "kept"), [
    (["top(image.tag, last_pushed, 2)"], {"v6", "v5"}),
    (["top(image.tag, last_pulled, 2)"], {"v4", "v2"}),
    (["now() - image.pushed_at < days(3)"], {"v5", "v6"}),
    (["now() - image.pushed_at < hours(2)"], {"v6"}),
    (["image.last_pulled_at > 0 && now() - image.last_pulled_at < minutes(20)"], {"v4"}),
    (["image.tag in last_pulled"], {"v2", "v3", "v4", "v7"}),  # never-pulled tags are not listed
    (["size(last_pushed) > 10"], set()),
    (["image.tag.startsWith('v') && image.tag != 'v1'"], {"v2", "v3", "v4", "v5", "v6", "v7"}),
    (["top(image.tag, last_pulled, 2)", "now() - image.pushed_at < days(3)"], {"v2", "v4", "v5", "v6"}),
])
def test_rules_keep_exactly_the_expected_tags(rules: list[str], kept: set[str]) -> None:
    policies = RetentionPolicies(RetentionPolicy(rules=rules))
    assert _kept(policies, "team/app", TAGS) == kept


def test_the_lists_are_most_recent_first_and_top_takes_the_first_k() -> None:
    policies = RetentionPolicies(RetentionPolicy(rules=[
        "last_pushed == ['v6', 'v5', 'v7', 'v2', 'v3', 'v1', 'v4'] && last_pulled == ['v4', 'v2', 'v3', 'v7']"
        " && top('v6', last_pushed, 1) && !top('v5', last_pushed, 1) && !top('v6', last_pushed, 0)"]))
    assert _kept(policies, "x", TAGS) == {t.tag for t in TAGS}


def test_global_and_repository_policies_combine() -> None:
    """Kept when any rule of the global policy or of the namespace's repository (longest prefix) is
    true; a namespace under no repository gets the global rules alone."""
    policies = RetentionPolicies(
        RetentionPolicy(rules=["top(image.tag, last_pushed, 1)"]),
        {"apps": RepositoryConfig(retention_policy=RetentionPolicy(rules=["top(image.tag, last_pulled, 2)"])),
         "apps/web": RepositoryConfig(retention_policy=RetentionPolicy(rules=["image.tag == 'v1'"])),
         "free": RepositoryConfig()})
    assert _kept(policies, "apps/api", TAGS) == {"v6", "v4", "v2"}
    assert _kept(policies, "apps/web/frontend", TAGS) == {"v6", "v1"}  # the longest prefix only
    assert _kept(policies, "tools", TAGS) == {"v6"}
    assert _kept(policies, "free/x", TAGS) == {"v6"}


def test_no_policy_keeps_everything_and_a_failing_rule_keeps_its_tag() -> None:
    assert not RetentionPolicies(None).configured
    assert _kept(RetentionPolicies(None), "x", TAGS) == {t.tag for t in TAGS}
    assert _kept(RetentionPolicies(RetentionPolicy(rules=[])), "x", TAGS) == {t.tag for t in TAGS}
    policies = RetentionPolicies(RetentionPolicy(rules=["image.tag == 'v1' || image.pushed_at == 'x'"]))
    verdict = policies.decide("x", TAGS, NOW)
    assert all(d.keep for d in verdict.decisions)  # v1 by the rule, the others because it failed
    assert {f.tag for f in verdict.failures} == {t.tag for t in TAGS} - {"v1"}
    assert "no such overload" in verdict.failures[0].reason


@pytest.mark.parametrize(("rule", "reason"), [
    ("image.tag ==", "does not compile"),
    ("imag.tag == 'x'", "unknown variable imag"),
    ("image.pushed == 0", "unknown variable image.pushed"),
    ("dayz(1) > 0", "unknown function dayz()"),
    ("top(image.tag, last_pushed)", "top() takes 3 arguments, not 2"),
    ("now(1) > 0", "now() takes 0 arguments, not 1"),
])
def test_a_bad_rule_is_rejected_at_config_load(tmp_path: Path, rule: str, reason: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[blob_store.fs]\nroot_dir = "{(tmp_path / "data").as_posix()}"\n'
                      f'[repository."apps".retention_policy]\nrules = ["true", {json.dumps(rule)}]\n')
    result = subprocess.run([sys.executable, "-m", "app", "-c", str(config), "check-config"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{config}: repository.apps.retention_policy.rules" in result.stderr
    assert "rule 2" in result.stderr and reason in result.stderr


# --- pull times, in memory then in batches ------------------------------------------------------
async def _tagged(storage: Storage, namespace: str, tag: str, digest: Digest) -> None:
    for key in (layout.revision_link(namespace, digest), layout.tag_current_link(namespace, tag)):
        await storage.put(key, str(digest).encode())


async def test_pull_times_coalesce_in_bounded_memory_and_never_recreate_a_tag(driver: Storage) -> None:
    storage, locks = driver, MemoryLockStore()
    digest = Digest.of(b"manifest")
    await _tagged(storage, "ns", "a", digest)
    await _tagged(storage, "ns", "b", digest)
    pulls = PullTimes(storage, locks, max_pending=3)
    for when in range(100):  # many pulls of one tag: one pending key, the last time
        pulls.record("ns", "a", 1000.0 + when)
    pulls.record("ns", digest, 2000.0)
    pulls.record("ns", "gone", 2001.0)  # no such tag
    assert pulls.pending_count == 3 and pulls.dropped == 0
    pulls.record("ns", "a", 2002.0)  # pulled again: now the most recent
    pulls.record("ns", "b", 2003.0)  # full: the least recently pulled (digest) goes
    assert pulls.dropped == 1 and pulls.pending("ns", digest) is None
    assert pulls.pending("ns", "a") == 2002.0
    result = await pulls.flush()
    assert (result.written, result.gone) == (2, 1)
    assert await read_pulled_at(storage, layout.tag_pulled_at("ns", "a")) == 2002.0
    assert await read_pulled_at(storage, layout.tag_pulled_at("ns", "b")) == 2003.0
    assert await storage.list_dir(layout.tag_dir("ns", "gone")) == []
    # Only forward: an older time (another replica's, flushed later) does not move it back.
    pulls.record("ns", "a", 1500.0)
    assert (await pulls.flush()).unchanged == 1
    assert await read_pulled_at(storage, layout.tag_pulled_at("ns", "a")) == 2002.0
    assert (await pulls.flush()).written == 0  # nothing pending: nothing written
    await locks.close()


async def test_enforce_on_every_driver(driver: Storage) -> None:
    """The enforcement core on fs and S3: read, decide, dry run, remove; pull times from both keys."""
    storage, locks = driver, MemoryLockStore()
    digests = {tag: Digest.of(tag.encode()) for tag in ("t1", "t2", "t3", "keep")}
    for tag, digest in digests.items():
        await _tagged(storage, "team/app", tag, digest)
    await storage.put(layout.tag_pulled_at("team/app", "t1"), b"1000")
    await storage.put(layout.revision_pulled_at("team/app", digests["t2"]), b"2000")  # by digest: later
    await storage.put(layout.tag_dir("team/app", "stray") + "/pulledat", b"3000")  # no current link
    policies = RetentionPolicies(None, {"team": RepositoryConfig(retention_policy=RetentionPolicy(
        rules=["top(image.tag, last_pulled, 1)", "image.tag == 'keep'"]))})
    removed: list[tuple[str, str]] = []

    async def on_removed(namespace: str, tag: str) -> None:
        removed.append((namespace, tag))

    dry = await enforce(storage, locks, policies, dry_run=True, now=time.time(), on_removed=on_removed)
    assert (dry.namespaces, dry.examined) == (1, 4)
    assert sorted(e.facts.tag for e in dry.expired) == ["t1", "t3"]
    assert removed == [] and dry.removed == 0
    assert await storage.stat(layout.tag_current_link("team/app", "t1")) is not None
    done = await enforce(storage, locks, policies, dry_run=False, now=time.time(), on_removed=on_removed)
    assert done.removed == 2 and sorted(removed) == [("team/app", "t1"), ("team/app", "t3")]
    assert await storage.list_dir(layout.tags_dir("team/app")) == ["keep", "stray", "t2"]
    assert await storage.stat(layout.revision_link("team/app", digests["t1"])) is not None  # for the GC
    await locks.close()


def _fs_section(root: Path, extra: str = "") -> str:
    return f'[blob_store.fs]\nroot_dir = "{root.as_posix()}"\n{extra}'


def _written(server: RegistryProcess) -> list[int]:
    """How many pull times each flush of the server wrote (from its log)."""
    counts = []
    for line in server.logs().splitlines():
        if '"pull times written"' in line:
            counts.append(json.loads(line)["written"])
    return counts


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_pulls_are_recorded_in_batches_and_head_is_not_a_pull(
        start_registry: Callable[..., RegistryProcess], tmp_path: Path) -> None:
    root = tmp_path / "store"
    server = start_registry(_fs_section(root, '[global]\npull_time_flush_interval = "1s"\n'))
    image, other = make_image(), make_image()
    assert push_image(server.session, server.url, "pt/app", image, tag="v1").status_code == 201
    assert push_image(server.session, server.url, "pt/app", other, tag="probed").status_code == 201
    digest = Digest.parse(image.digest)
    started = time.time()
    for _ in range(150):
        assert server.get("/v2/pt/app/manifests/v1", headers=ACCEPT).status_code == 200
        assert server.get(f"/v2/pt/app/manifests/{digest}", headers=ACCEPT).status_code == 200
        assert server.head("/v2/pt/app/manifests/probed", headers=ACCEPT).status_code == 200
    ended = time.time()
    tag_key, revision_key = root / layout.tag_pulled_at("pt/app", "v1"), root / layout.revision_pulled_at(
        "pt/app", digest)
    _wait_for(lambda: tag_key.exists() and revision_key.exists() and float(tag_key.read_text()) >= ended - 1)
    assert started <= float(tag_key.read_text()) <= time.time()
    assert started <= float(revision_key.read_text()) <= time.time()
    assert not (root / layout.tag_pulled_at("pt/app", "probed")).exists()  # HEADs only
    assert not (root / layout.revision_pulled_at("pt/app", Digest.parse(other.digest))).exists()
    assert server.stop() == 0
    # 300 pulls of two keys, over a few seconds: a couple of writes per flush at most, not one per GET.
    flushes = [n for n in _written(server) if n]
    assert sum(flushes) <= 2 * len(flushes) <= 2 * (int(ended - started) + 4), flushes


def test_pull_times_are_flushed_at_shutdown_and_survive_a_restart(
        start_registry: Callable[..., RegistryProcess], tmp_path: Path) -> None:
    root = tmp_path / "store"
    server = start_registry(_fs_section(root, '[global]\npull_time_flush_interval = "1h"\n'))
    image = make_image()
    assert push_image(server.session, server.url, "pt/app", image, tag="v1").status_code == 201
    pulled_at = time.time()
    assert server.get("/v2/pt/app/manifests/v1", headers=ACCEPT).status_code == 200
    key = root / layout.tag_pulled_at("pt/app", "v1")
    time.sleep(0.5)
    assert not key.exists()  # not written per GET: held until the next flush
    assert server.stop() == 0
    assert pulled_at - 1 <= float(key.read_text()) <= time.time()
    first = float(key.read_text())
    server.start()
    assert float(key.read_text()) == first
    assert server.get("/v2/pt/app/manifests/v1", headers=ACCEPT).status_code == 200
    assert server.stop() == 0
    assert float(key.read_text()) > first


def test_update_pull_time_false_records_nothing(start_registry: Callable[..., RegistryProcess],
                                                tmp_path: Path) -> None:
    root = tmp_path / "store"
    server = start_registry(_fs_section(root, "[global]\nupdate_pull_time = false\n"))
    image = make_image()
    assert push_image(server.session, server.url, "pt/app", image, tag="v1").status_code == 201
    assert server.get("/v2/pt/app/manifests/v1", headers=ACCEPT).status_code == 200
    assert server.get(f"/v2/pt/app/manifests/{image.digest}", headers=ACCEPT).status_code == 200
    assert server.stop() == 0
    assert not list(root.rglob("pulledat"))


# --- enforcement: `registry scrub --retention` --------------------------------------------------
# A repository section turns the zero-config "everything allowed" off: allow everything again.
ALLOW = "" if auth.enabled() else "[global.access_policy]\ndefault_allow = true\n"
POLICIES = ALLOW + """
[global.retention_policy]
rules = ["top(image.tag, last_pushed, 1)"]

[repository."apps"]
access_policy = { default_allow = true }

[repository."apps".retention_policy]
rules = ["top(image.tag, last_pulled, 2)", "now() - image.pushed_at < days(3)"]
"""


def _set_pushed(root: Path, namespace: str, tag: str, days_ago: float) -> None:
    when = time.time() - days_ago * DAY
    os.utime(root / layout.tag_current_link(namespace, tag), (when, when))


def _set_pulled(root: Path, key: str, days_ago: float) -> None:
    (root / key).write_text(f"{time.time() - days_ago * DAY:.3f}")


def _tags_in_store(root: Path, namespace: str) -> set[str]:
    folder = root / layout.tags_dir(namespace)
    return {p.name for p in folder.iterdir() if (p / "current" / "link").exists()}


def _scrub(server: RegistryProcess, *args: str) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in server.env.items() if not k.startswith("REGISTRY__")}
    result = subprocess.run([sys.executable, "-m", "app", "-c", str(server.config_path), "scrub", "--json",
                             *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180,
                            check=False)
    try:
        return result.returncode, json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"scrub printed no JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")


def _expired(report: dict[str, Any]) -> set[tuple[str, str]]:
    [check] = [c for c in report["checks"] if c["name"] == "retention"]
    return {(f["namespace"], f["key"].split("/tags/")[1].split("/")[0])
            for f in check["findings"] if f["kind"] == "expired_tag"}


def _snapshot(root: Path) -> dict[str, tuple[float, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime, p.read_bytes())
            for p in (root / layout.REPOSITORIES).rglob("*") if p.is_file()}


def _push_tags(server: RegistryProcess, namespace: str, tags: list[str]) -> dict[str, Image]:
    images = {}
    for tag in tags:
        images[tag] = make_image([random_layer(256)])
        assert push_image(server.session, server.url, namespace, images[tag], tag=tag).status_code == 201
    return images


def test_scrub_retention_keeps_exactly_the_expected_tags(start_registry: Callable[..., RegistryProcess],
                                                         tmp_path: Path) -> None:
    root = tmp_path / "store"
    server = start_registry(_fs_section(root, POLICIES + '\n[global]\npull_time_flush_interval = "1s"\n'))
    web = _push_tags(server, "apps/web", ["a1", "a2", "a3", "a4", "a5", "a6", "a7"])
    _push_tags(server, "tools/cli", ["c1", "c2", "c3"])
    for tag, days in {"a1": 30, "a2": 20, "a3": 20, "a4": 40, "a5": 2, "a6": 0.04, "a7": 10}.items():
        _set_pushed(root, "apps/web", tag, days)
    for tag, days in {"c1": 5, "c2": 3, "c3": 4}.items():
        _set_pushed(root, "tools/cli", tag, days)
    _set_pulled(root, layout.tag_pulled_at("apps/web", "a2"), 5)
    _set_pulled(root, layout.revision_pulled_at("apps/web", Digest.parse(web["a3"].digest)), 9)
    _set_pulled(root, layout.tag_pulled_at("apps/web", "a7"), 15)
    # A real pull: by digest, as containerd does after resolving the tag with a HEAD; it counts for
    # the tag that names that digest. A pull of c3 saves nothing: tools/ has no pull rule.
    assert server.get(f"/v2/apps/web/manifests/{web['a4'].digest}", headers=ACCEPT).status_code == 200
    assert server.get("/v2/tools/cli/manifests/c3", headers=ACCEPT).status_code == 200
    _wait_for(lambda: (root / layout.revision_pulled_at("apps/web", Digest.parse(web["a4"].digest))).exists()
              and (root / layout.tag_pulled_at("tools/cli", "c3")).exists())
    expected = {("apps/web", "a1"), ("apps/web", "a3"), ("apps/web", "a7"), ("tools/cli", "c1"),
                ("tools/cli", "c3")}

    before = _snapshot(root)
    code, report = _scrub(server, "--retention", "--dry-run")
    assert code == 1, report
    assert [c["name"] for c in report["checks"]] == ["retention"]
    assert _expired(report) == expected
    assert report["checks"][0]["examined"] == 10
    assert _snapshot(root) == before  # a dry run removes nothing

    code, report = _scrub(server, "--retention")
    assert code == 0, report
    assert _expired(report) == expected
    assert report["checks"][0]["repaired"] == {"expired_tag": 5}
    assert _tags_in_store(root, "apps/web") == {"a2", "a4", "a5", "a6"}
    assert _tags_in_store(root, "tools/cli") == {"c2"}
    # The manifests stay (untagged, for the GC), so their digests still pull.
    assert server.get(f"/v2/apps/web/manifests/{web['a1'].digest}", headers=ACCEPT).status_code == 200
    # A second run finds nothing more to remove.
    code, report = _scrub(server, "--retention")
    assert (code, _expired(report)) == (0, set()), report


def test_bare_scrub_includes_retention_only_when_a_policy_exists(
        start_registry: Callable[..., RegistryProcess], tmp_path: Path) -> None:
    root = tmp_path / "store"
    server = start_registry(_fs_section(root))
    _push_tags(server, "tools/cli", ["c1", "c2"])
    code, report = _scrub(server, "--dry-run")
    assert "retention" not in [c["name"] for c in report["checks"]]
    code, report = _scrub(server, "--retention")  # asked for, nothing configured: nothing to do
    assert code == 0 and report["checks"][0]["examined"] == 0
    with server.config_path.open("a") as config:
        config.write('\n[global.retention_policy]\nrules = ["top(image.tag, last_pushed, 1)"]\n')
    _set_pushed(root, "tools/cli", "c1", 1)
    code, report = _scrub(server, "--dry-run")
    assert report["checks"][0]["name"] == "retention"  # first, so the others see its result
    assert _expired(report) == {("tools/cli", "c1")}


class _PushFirst:
    """The server's lock store, with a push of the tag through the real server slipped in just before
    retention takes that tag's lock (the race: the rules decided on the old digest)."""

    def __init__(self, locks: FileLockStore, name: str, push: Callable[[], None]) -> None:
        self._locks, self._name, self._push = locks, name, push
        self.pushed = False

    def hold(self, name: str, **kwargs: Any) -> Any:
        if name == self._name and not self.pushed:
            self.pushed = True
            self._push()
        return self._locks.hold(name, **kwargs)

    async def close(self) -> None:
        await self._locks.close()


@pytest.mark.parametrize("same_digest", [False, True], ids=["new-digest", "same-digest-again"])
def test_a_push_racing_the_removal_keeps_the_tag(start_registry: Callable[..., RegistryProcess],
                                                 tmp_path: Path, same_digest: bool) -> None:
    root = tmp_path / "store"
    server = start_registry(_fs_section(root))
    images = _push_tags(server, "race/app", ["old", "new"])
    _set_pushed(root, "race/app", "old", 30)
    replacement = images["old"] if same_digest else make_image([random_layer(256)])

    def push() -> None:
        response = push_image(requests.Session(), server.url, "race/app", replacement, tag="old")
        assert response.status_code == 201, response.text

    async def run() -> RetentionResult:
        storage = FsStorage(root)
        locks = _PushFirst(FileLockStore(root), "tag:race/app:old", push)
        try:
            return await enforce(storage, locks, RetentionPolicies(RetentionPolicy(
                rules=["top(image.tag, last_pushed, 1)"])), dry_run=False, now=time.time())
        finally:
            await locks.close()
            await storage.close()

    result = asyncio.run(run())
    [expired] = result.expired
    assert expired.facts.tag == "old" and not expired.removed
    assert expired.error == "the tag was pushed again meanwhile: kept"
    assert _tags_in_store(root, "race/app") == {"old", "new"}
    link = root / layout.tag_current_link("race/app", "old")
    assert link.read_text() == replacement.digest
    assert server.get("/v2/race/app/manifests/old", headers=ACCEPT).status_code == 200


def test_removed_tags_are_announced_and_distribution_serves_the_folder(
        start_registry: Callable[..., RegistryProcess], tmp_path: Path) -> None:
    """`on_removed` hears of each removal; distribution 2.8 then serves the same folder, pull times
    and all, with exactly the kept tags."""
    root = tmp_path / "store"
    server = start_registry(_fs_section(root))
    images = _push_tags(server, "dist/app", ["keep", "drop"])
    _set_pushed(root, "dist/app", "drop", 30)
    assert server.get("/v2/dist/app/manifests/keep", headers=ACCEPT).status_code == 200
    assert server.get(f"/v2/dist/app/manifests/{images['keep'].digest}", headers=ACCEPT).status_code == 200
    assert server.stop() == 0
    assert (root / layout.tag_pulled_at("dist/app", "keep")).exists()
    assert (root / layout.revision_pulled_at("dist/app", Digest.parse(images["keep"].digest))).exists()
    announced: list[tuple[str, str]] = []

    async def on_removed(namespace: str, tag: str) -> None:
        announced.append((namespace, tag))

    async def run() -> RetentionResult:
        storage, locks = FsStorage(root), FileLockStore(root)
        try:
            return await enforce(storage, locks, RetentionPolicies(RetentionPolicy(
                rules=["top(image.tag, last_pushed, 1)"])), dry_run=False, now=time.time(),
                on_removed=on_removed)
        finally:
            await locks.close()
            await storage.close()

    result = asyncio.run(run())
    assert result.removed == 1 and announced == [("dist/app", "drop")]
    distribution = DistributionProcess(tmp_path / "distribution", root).start()
    try:
        assert distribution.get("/v2/dist/app/tags/list").json()["tags"] == ["keep"]
        for reference in ("keep", images["keep"].digest):
            response = distribution.get(f"/v2/dist/app/manifests/{reference}", headers=ACCEPT)
            assert response.status_code == 200 and response.content == images["keep"].manifest
        assert distribution.get("/v2/dist/app/manifests/drop", headers=ACCEPT).status_code == 404
    finally:
        distribution.stop()


def test_scrub_beside_servers_sharing_redis_tells_them_of_what_it_removed(
        start_registry: Callable[..., RegistryProcess], tmp_path: Path) -> None:
    """Servers that share their state through Redis keep tags in memory; a `scrub --retention`
    process announces each tag it removes as a server announces its writes (app/coherence.py), so
    the servers stop answering it on the very next request. Without that they served it on."""
    redis = RedisServer(tmp_path / "redis").start()
    try:
        root = tmp_path / "store"
        shared = (f'[cache.redis]\nurl = {toml_value(redis.url)}\n\n[global.gc]\nenabled = false\n\n'
                  '[global.retention_policy]\nrules = [\'image.tag == "keep"\']\n')
        servers = [start_registry(_fs_section(root, shared)) for _ in range(2)]
        images = _push_tags(servers[0], "team/app", ["keep", "drop"])
        for server in servers:  # cached by each server now
            drop = server.get("/v2/team/app/manifests/drop", headers=ACCEPT)
            assert drop.content == images["drop"].manifest
            assert server.get("/v2/team/app/tags/list").json()["tags"] == ["drop", "keep"]
        status, report = _scrub(servers[0], "--retention")
        assert status == 0 and _expired(report) == {("team/app", "drop")}, report
        for server in servers:
            assert server.get("/v2/team/app/manifests/drop", headers=ACCEPT).status_code == 404
            assert server.get("/v2/team/app/tags/list").json()["tags"] == ["keep"]
            keep = server.get("/v2/team/app/manifests/keep", headers=ACCEPT)
            assert keep.content == images["keep"].manifest
    finally:
        redis.stop()
