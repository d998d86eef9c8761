"""Pull-through numbers: cold and warm skopeo pulls of a ~200 MB image through the cache, and the upstream
bytes fetched for 20 concurrent cold pulls (single flight), against CNCF distribution 2.8 as upstream.

    python -m tests.bench.pull_through [--size-mb 200] [--clients 20] [--json report.json]

Not a test: it asserts nothing and prints a small report (time in seconds, bytes as counted by a proxy
in front of the upstream).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.helpers.distribution import DistributionProcess
from tests.helpers.oci import Image, make_image
from tests.helpers.server import RegistryProcess
from tests.helpers.upstreams import Proxy, pull_through_config, push


def skopeo_pull(source: str, destination: Path) -> float:
    started = time.monotonic()
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", source,
                    f"dir:{destination}"], check=True, capture_output=True, timeout=1800)
    return time.monotonic() - started


def build_image(size_mb: int) -> Image:
    # Incompressible layers (gzipped random bytes): what the registry moves is what is counted.
    layer = max(size_mb // 4, 1) * 1024 * 1024
    return make_image([gzip.compress(os.urandom(layer), compresslevel=1, mtime=0) for _ in range(4)])


def run(size_mb: int, clients: int, workdir: Path) -> dict[str, Any]:
    upstream = DistributionProcess(workdir / "upstream", workdir / "upstream-data").start()
    proxy = Proxy(upstream.url)
    proxy.start()
    image = build_image(size_mb)
    image_bytes = sum(len(b) for b in image.blobs.values()) + len(image.manifest)
    push(requests.Session(), upstream.url, "bench/big", image, "v1")
    report: dict[str, Any] = {"image_bytes": image_bytes, "layers": len(image.layers), "clients": clients}
    caches: list[RegistryProcess] = []
    try:
        report["direct_from_upstream_s"] = skopeo_pull(f"docker://{upstream.host}/bench/big:v1",
                                                       workdir / "direct")

        # Timed against the upstream itself (the counting proxy is Python and would be the bottleneck).
        (workdir / "cache").mkdir()
        cache = RegistryProcess(workdir / "cache", pull_through_config([{"url": upstream.url}])).start()
        caches.append(cache)
        report["cold_pull_s"] = skopeo_pull(f"docker://{cache.host}/cache/bench/big:v1", workdir / "cold")
        report["warm_pull_s"] = skopeo_pull(f"docker://{cache.host}/cache/bench/big:v1", workdir / "warm")

        (workdir / "cache20").mkdir()
        cold = RegistryProcess(workdir / "cache20", pull_through_config([{"url": proxy.url}])).start()
        caches.append(cold)
        before = proxy.bytes_sent
        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            times = list(pool.map(lambda i: skopeo_pull(f"docker://{cold.host}/cache/bench/big:v1",
                                                        workdir / f"c{i}"), range(clients)))
        report["concurrent_wall_s"] = time.monotonic() - started
        report["concurrent_slowest_client_s"] = max(times)
        report["concurrent_upstream_bytes"] = proxy.bytes_sent - before
        report["concurrent_bytes_served"] = clients * image_bytes
        blob_gets = {path: n for (method, path), n in proxy.counts.items()
                     if method == "GET" and "/blobs/" in path}
        report["upstream_gets_per_blob"] = sorted(set(blob_gets.values()))
    finally:
        for server in caches:
            server.stop()
        proxy.stop()
        upstream.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pull-through-bench-"))
    try:
        report = run(args.size_mb, args.clients, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
