"""`make bench` — zb-style workloads against our server and CNCF distribution 2.8, alternated A B A B
over several rounds, medians reported with the ratio ours/distribution.

    python -m tests.bench.run                       # start both servers, full run
    python -m tests.bench.run --quick               # fewer iterations and rounds
    python -m tests.bench.run --target URL [--baseline URL]   # any registries, ad hoc
    python -m tests.bench.run --storage s3          # both on S3 (one moto server, a bucket each)
    python -m tests.bench.run --redis               # ours + Redis vs distribution + its Redis cache,
                                                    # and vs ours without Redis (the coherence cost)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench import workloads as w
from tests.bench.servers import External, S3Bucket, Server, start_distribution, start_ours


@dataclass
class Workload:
    name: str
    concurrency: int
    iterations: int
    # Untimed preparation on a server, returning the timed iteration.
    prepare: Callable[[str, int], Any]
    target: float | None = None  # the target ratio, when it sets one


def _push(size: int, chunked: bool = False, layers: int = 1) -> Callable[[str, int], Any]:
    async def prepare(base: str, iterations: int) -> w.Iteration:
        run_id = w.unique_suffix()
        seed0 = random.randrange(1 << 30)
        images = [w.Image.build([size] * layers, seed0 + i) for i in range(iterations)]

        async def iteration(session: aiohttp.ClientSession, index: int) -> tuple[int, int]:
            image = images[index]
            await w.push_image(session, base, f"bench/push-{run_id}-{index}", "tag0", image, chunked)
            requests = (3 if chunked else 2) * (len(image.layers) + 1) + 1 + (1 if chunked else 0)
            return image.size, requests

        return iteration

    return prepare


def _pull(sizes: list[tuple[int, float]], images_per_size: int = 2) -> Callable[[str, int], Any]:
    """Pull images whose layer sizes are drawn with the given weights (mixed workload)."""

    async def prepare(base: str, iterations: int) -> w.Iteration:
        run_id = w.unique_suffix()
        names: dict[int, list[str]] = {}
        async with aiohttp.ClientSession() as session:
            for size, _weight in sizes:
                for i in range(images_per_size):
                    name = f"bench/pull-{size}-{run_id}-{i}"
                    await w.push_image(
                        session, base, name, "latest", w.Image.build([size], random.randrange(1 << 30))
                    )
                    names.setdefault(size, []).append(name)
        rng = random.Random(7)
        plan = rng.choices([s for s, _ in sizes], weights=[wt for _, wt in sizes], k=iterations)

        async def iteration(session: aiohttp.ClientSession, index: int) -> tuple[int, int]:
            size = plan[index]
            name = names[size][index % len(names[size])]
            return await w.pull_image(session, base, name, "latest"), 6

        return iteration

    return prepare


def _manifest_get(by_digest: bool) -> Callable[[str, int], Any]:
    async def prepare(base: str, iterations: int) -> w.Iteration:
        image = w.Image.build([4096], random.randrange(1 << 30))
        name = f"bench/manifest-{w.unique_suffix()}"
        async with aiohttp.ClientSession() as session:
            await w.push_image(session, base, name, "latest", image)
        reference = w.digest(image.manifest) if by_digest else "latest"
        url = f"{base}/v2/{name}/manifests/{reference}"

        async def iteration(session: aiohttp.ClientSession, index: int) -> tuple[int, int]:
            async with session.get(url, headers=w.MANIFEST_ACCEPT) as response:
                w._expect(response, 200)
                return len(await response.read()), 1

        return iteration

    return prepare


def _catalog(repositories: int = 50) -> Callable[[str, int], Any]:
    async def prepare(base: str, iterations: int) -> w.Iteration:
        async with aiohttp.ClientSession() as session:
            image = w.Image.build([1024], random.randrange(1 << 30))
            run_id = w.unique_suffix()
            for i in range(repositories):
                await w.push_image(session, base, f"bench/catalog-{run_id}-{i}", "latest", image)

        async def iteration(session: aiohttp.ClientSession, index: int) -> tuple[int, int]:
            async with session.get(f"{base}/v2/_catalog") as response:
                w._expect(response, 200)
                return len(await response.read()), 1

        return iteration

    return prepare


def _mixed(size: int) -> Callable[[str, int], Any]:
    async def prepare(base: str, iterations: int) -> w.Iteration:
        pull = await _pull([(size, 1.0)])(base, iterations)
        push = await _push(size)(base, iterations)
        rng = random.Random(11)
        plan = [rng.random() < 0.75 for _ in range(iterations)]

        async def iteration(session: aiohttp.ClientSession, index: int) -> tuple[int, int]:
            return await (pull if plan[index] else push)(session, index)

        return iteration

    return prepare


MiB = w.MiB


def workload_list(quick: bool) -> list[Workload]:
    k = 0.4 if quick else 1.0

    def n(full: int) -> int:
        return max(2, int(full * k))

    return [
        Workload("push monolith 1MiB c=2", 2, n(150), _push(1 * MiB), 1.0),
        Workload("push monolith 10MiB c=2", 2, n(24), _push(10 * MiB)),
        Workload("push monolith 100MiB c=2", 2, n(6), _push(100 * MiB), 1.0),
        Workload("push monolith 100MiB c=8", 8, n(8), _push(100 * MiB)),
        Workload("push chunked 10MiB c=2", 2, n(24), _push(10 * MiB, chunked=True), 1.0),
        Workload("pull 1MiB c=4", 4, n(120), _pull([(1 * MiB, 1.0)])),
        Workload("pull 10MiB c=4", 4, n(60), _pull([(10 * MiB, 1.0)]), 1.0),
        Workload("pull 100MiB c=4", 4, n(12), _pull([(100 * MiB, 1.0)]), 1.0),
        Workload(
            "pull mixed 20/70/10 c=4", 4, n(40), _pull([(1 * MiB, 20), (10 * MiB, 70), (100 * MiB, 10)])
        ),
        Workload("manifest GET by tag c=16", 16, n(4000), _manifest_get(False), 1.5),
        Workload("manifest GET by digest c=32", 32, n(4000), _manifest_get(True)),
        Workload("catalog c=4", 4, n(1000), _catalog(), 1.0),
        Workload("mixed 75% pull/25% push 10MiB c=4", 4, n(40), _mixed(10 * MiB)),
    ]


# With --storage s3: the workloads the storage issue sets targets for (the others are fs-bound).
S3_WORKLOADS = ("push monolith 10MiB c=2", "pull 10MiB c=4", "manifest GET by tag c=16")


def s3_targets(workloads: list[Workload]) -> list[Workload]:
    return [replace(wl, target=1.0) for wl in workloads if wl.name in S3_WORKLOADS]


# With --redis: the workloads the replicas issue measures (the coherence cost target is <= 15 %).
REDIS_WORKLOADS = ("push monolith 1MiB c=2", "manifest GET by tag c=16")
COHERENCE_COST_TARGET = 0.15


async def measure(server: Server, workload: Workload) -> dict[str, Any]:
    iteration = await workload.prepare(server.url, workload.iterations)
    server.reset_peak()
    result = await w.run(workload.concurrency, workload.iterations, iteration)
    summary = result.summary()
    summary["peak_rss_mib"] = server.peak_rss() / MiB
    return summary


async def warm_up(server: Server) -> None:
    """One small push and pull per server before anything is measured, so that neither pays its first
    requests' one-time costs (lazy imports, first directories, connection setup) inside a workload."""
    for prepare in (_push(1 * MiB), _pull([(1 * MiB, 1.0)])):
        iteration = await prepare(server.url, 4)
        await w.run(2, 4, iteration)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def big_blob_memory(server: Server, size: int) -> dict[str, float]:
    """Push then pull one huge blob, streamed: the peak RSS must not grow with the blob's size."""
    server.reset_peak()
    before = server.rss()
    chunk = bytes(8 * MiB)
    import hashlib

    hasher = hashlib.sha256()
    for _ in range(size // len(chunk)):
        hasher.update(chunk)
    blob_digest = "sha256:" + hasher.hexdigest()

    async def body() -> Any:
        for _ in range(size // len(chunk)):
            yield chunk

    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        name = f"bench/big-{w.unique_suffix()}"
        async with session.post(f"{server.url}/v2/{name}/blobs/uploads/") as response:
            location = w._location(server.url, response)
        started = time.perf_counter()
        async with session.patch(location, data=body()) as response:
            w._expect(response, 202)
            location = w._location(server.url, response)
        separator = "&" if "?" in location else "?"
        async with session.put(f"{location}{separator}digest={blob_digest}") as response:
            w._expect(response, 201)
        push_s = time.perf_counter() - started
        started = time.perf_counter()
        async with session.get(f"{server.url}/v2/{name}/blobs/{blob_digest}") as response:
            w._expect(response, 200)
            async for _ in response.content.iter_chunked(MiB):
                pass
        pull_s = time.perf_counter() - started
    return {
        "blob_mib": size / MiB,
        "push_mb_per_s": size / push_s / 1e6,
        "pull_mb_per_s": size / pull_s / 1e6,
        "peak_rss_growth_mib": (server.peak_rss() - before) / MiB,
    }


def render(report: dict[str, Any]) -> str:
    ours, theirs = report["servers"][:2]
    lines = [
        f"# Benchmark report ({report['date']})",
        "",
        f"Machine: {report['machine']}. Rounds: {report['rounds']} (alternating, medians). "
        f"Storage: {report.get('storage', 'fs')}.",
        "",
        f"| workload | {ours} it/s | {theirs} it/s | ratio | {ours} MB/s | {theirs} MB/s | "
        f"{ours} p50/p99 ms | {theirs} p50/p99 ms | errors | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["workloads"]:
        a, b = row["results"][ours], row["results"][theirs]
        target = f"≥ {row['target']}" if row["target"] else ""
        lines.append(
            f"| {row['name']} | {a['iterations_per_s']:.1f} | {b['iterations_per_s']:.1f} | "
            f"**{row['ratio']:.2f}** | {a['mb_per_s']:.0f} | {b['mb_per_s']:.0f} | "
            f"{a['p50_ms']:.1f}/{a['p99_ms']:.1f} | {b['p50_ms']:.1f}/{b['p99_ms']:.1f} | "
            f"{int(a['errors'])}/{int(b['errors'])} | {target} |"
        )
    memory = report["memory"]
    if "plain" in report:  # --redis: what Redis costs ours (one replica with it, one without)
        plain = report["plain"]
        lines += ["", f"| workload | {plain} it/s | {ours} it/s | coherence cost | target |",
                  "|---|---|---|---|---|"]
        for row in report["workloads"]:
            lines.append(
                f"| {row['name']} | {row['results'][plain]['iterations_per_s']:.1f} | "
                f"{row['results'][ours]['iterations_per_s']:.1f} | "
                f"**{row['coherence_cost'] * 100:+.1f} %** | ≥ {-COHERENCE_COST_TARGET * 100:.0f} % |")
    lines += ["", "| memory | " + " | ".join(report["servers"]) + " |",
              "|---" * (len(report["servers"]) + 1) + "|"]
    lines.append(
        "| idle RSS (MiB) | "
        + " | ".join(f"{memory[s]['idle_rss_mib']:.1f}" for s in report["servers"])
        + " |"
    )
    for row in report["workloads"]:
        lines.append(
            f"| peak RSS, {row['name']} (MiB) | "
            + " | ".join(f"{row['results'][s]['peak_rss_mib']:.1f}" for s in report["servers"])
            + " |"
        )
    if memory.get("idle_ratio"):
        lines.append(f"\nIdle RSS ratio ours/distribution: **{memory['idle_ratio']:.2f}** (target ≤ 2.5).")
    if "big_blob" in report:
        big = report["big_blob"]
        lines.append(
            f"\nStreaming a {big['blob_mib']:.0f} MiB blob through ours: push {big['push_mb_per_s']:.0f} MB/s"
            ","
            f" pull {big['pull_mb_per_s']:.0f} MB/s, peak RSS growth {big['peak_rss_growth_mib']:.1f} MiB"
            " (target ≤ ~64 MiB)."
        )
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    servers: list[Server] = []
    moto = None
    redis = None
    try:
        ours_s3 = theirs_s3 = None
        if args.storage == "s3":
            from tests.helpers.moto import MotoServer

            moto = MotoServer(workdir / "moto.log").start()
            ours_s3 = S3Bucket(moto.endpoint, moto.create_bucket("bench-ours"))
            theirs_s3 = S3Bucket(moto.endpoint, moto.create_bucket("bench-distribution"))
        redis_url = None
        if args.redis:  # one replica with Redis: what coherence and Redis locks cost
            from tests.helpers.redis_server import RedisServer

            redis = RedisServer(workdir / "redis").start()
            redis_url = redis.url
        ours: Server = (External("target", args.target) if args.target
                        else start_ours(workdir, args.binary, ours_s3, redis_url))
        servers.append(ours)
        theirs: Server = (External("baseline", args.baseline) if args.baseline
                          else start_distribution(workdir, theirs_s3, redis_url))
        servers.append(theirs)
        ours.name, theirs.name = ("ours", "distribution") if not args.target else (ours.name, theirs.name)
        plain: Server | None = None
        if redis_url is not None and not args.target:  # the same server without Redis
            plain_s3 = S3Bucket(moto.endpoint, moto.create_bucket("bench-plain")) if moto else None
            plain = start_ours(workdir, args.binary, plain_s3, name="ours-plain")
            servers.append(plain)
            ours.name, theirs.name, plain.name = "ours+redis", "distribution+redis", "ours (no redis)"
        memory: dict[str, Any] = {s.name: {"idle_rss_mib": s.rss() / MiB} for s in servers}
        if theirs.rss():
            memory["idle_ratio"] = ours.rss() / theirs.rss()
        for server in servers:
            await warm_up(server)
        workloads = workload_list(args.quick)
        if args.storage == "s3":
            workloads = s3_targets(workloads)
        if args.redis and not args.only:
            workloads = [wl for wl in workloads if wl.name in REDIS_WORKLOADS]
        selected = [wl for wl in workloads if not args.only or args.only in wl.name]
        rows = []
        for workload in selected:
            results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
            for round_index in range(args.rounds):
                # Alternated (A B C, C B A, then rotated): no server always runs first or last.
                shift = (round_index // 2) % len(servers)
                order = servers[shift:] + servers[:shift]
                order = order if round_index % 2 == 0 else order[::-1]
                for server in order:
                    results[server.name].append(await measure(server, workload))
            medians = {name: median_of(r) for name, r in results.items()}
            base = medians[theirs.name]["iterations_per_s"]
            ratio = medians[ours.name]["iterations_per_s"] / base if base else 0.0
            row: dict[str, Any] = {
                "name": workload.name,
                "concurrency": workload.concurrency,
                "iterations": workload.iterations,
                "target": workload.target,
                "ratio": ratio,
                "results": medians,
            }
            cost = ""
            if plain is not None:
                alone = medians[plain.name]["iterations_per_s"]
                row["coherence_cost"] = medians[ours.name]["iterations_per_s"] / alone - 1 if alone else 0.0
                cost = f", coherence cost {row['coherence_cost'] * 100:+.1f} % against {alone:.1f} it/s"
            rows.append(row)
            print(
                f"{workload.name}: ratio {ratio:.2f} "
                f"({medians[ours.name]['iterations_per_s']:.1f} vs {base:.1f} it/s{cost})",
                flush=True,
            )
        report: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "rounds": args.rounds,
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, {platform.platform()}",
            "servers": [s.name for s in servers],
            "storage": args.storage + (" + redis" if args.redis else ""),
            "workloads": rows,
            "memory": memory,
        }
        if plain is not None:
            report["plain"] = plain.name
        if args.big_blob and not args.target:
            report["big_blob"] = await big_blob_memory(ours, args.big_blob * MiB)
        return report
    finally:
        for server in servers:
            server.stop()
        if moto is not None:
            moto.stop()
        if redis is not None:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # pushes leave gigabytes behind


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--only", help="run the workloads whose name contains this text")
    parser.add_argument("--target", help="URL of the registry to measure instead of starting ours")
    parser.add_argument("--baseline", help="URL of the baseline instead of starting distribution 2.8")
    parser.add_argument("--binary", help="measure this frozen executable instead of `python -m app`")
    parser.add_argument("--big-blob", type=int, default=2048, help="MiB of the streamed blob (0: skip)")
    parser.add_argument("--storage", choices=("fs", "s3"), default="fs",
                        help="s3: both registries on buckets of one moto server (the S3 workloads)")
    parser.add_argument("--redis", action="store_true",
                        help="ours as a replica: locks and shared index versions in a local redis-server")
    parser.add_argument("--report", default="bench-report", help="report path without extension")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    Path(f"{args.report}.json").write_text(json.dumps(report, indent=2))
    table = render(report)
    Path(f"{args.report}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
