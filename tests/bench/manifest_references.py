"""Concurrent PUTs of one huge, duplicate-heavy image manifest, and what they cost everyone else.

    python -m tests.bench.manifest_references [--layers 26000] [--distinct 200] [--puts 4]
                                              [--extra-config '[global]\\nmax_manifest_references = 30000']

Starts a real server, pushes `--distinct` small blobs, then sends `--puts` concurrent PUTs of a manifest
with `--layers` layers cycling through those blobs (under 4 MiB), while a probe GETs a small manifest
in a loop. Prints the PUTs' wall time and statuses, the probe's latencies and the server's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from tests.helpers.oci import OCI_LAYER, OCI_MANIFEST, digest_of, make_image, push_blob, push_image
from tests.helpers.server import RegistryProcess

NAME = "bench/refs"


def huge_manifest(config: bytes, digests: list[str], layers: int) -> bytes:
    document = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config),
                   "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digests[i % len(digests)], "size": 16}
                   for i in range(layers)],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run(layers: int, distinct: int, puts: int, extra_config: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        server = RegistryProcess(Path(workdir), extra_config).start()
        try:
            assert server.process is not None
            blobs = [f"blob-{i:06d}-".encode().ljust(16, b"x") for i in range(distinct)]
            config = b'{"architecture":"amd64","os":"linux"}'
            for blob in [config, *blobs]:
                assert push_blob(server.session, server.url, NAME, blob).status_code == 201
            small = make_image()
            assert push_image(server.session, server.url, "bench/small", small, "v1").status_code == 201
            body = huge_manifest(config, [digest_of(b) for b in blobs], layers)
            idle_peak = peak_rss_kib(server.process.pid)

            latencies: list[float] = []
            done = threading.Event()

            def probe() -> None:
                session = requests.Session()
                while not done.is_set():
                    started = time.perf_counter()
                    response = session.get(f"{server.url}/v2/bench/small/manifests/v1", timeout=120)
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 200
                    time.sleep(0.01)

            def put(index: int) -> tuple[int, float, str]:
                started = time.perf_counter()
                response = requests.put(f"{server.url}/v2/{NAME}/manifests/huge-{index}", data=body,
                                        headers={"Content-Type": OCI_MANIFEST}, timeout=600)
                return response.status_code, time.perf_counter() - started, response.text[:200]

            prober = threading.Thread(target=probe)
            prober.start()
            time.sleep(0.3)  # the probe's idle latency first
            started = time.perf_counter()
            with ThreadPoolExecutor(puts) as pool:
                results = list(pool.map(put, range(puts)))
            wall = time.perf_counter() - started
            done.set()
            prober.join()
            return {
                "manifest_bytes": len(body), "layers": layers, "distinct": distinct, "puts": puts,
                "wall_s": round(wall, 3),
                "put_s": [round(r[1], 3) for r in results], "statuses": [r[0] for r in results],
                "first_answer": results[0][2],
                "probe_ms": {"count": len(latencies),
                             "median": round(statistics.median(latencies) * 1000, 1),
                             "p95": round(sorted(latencies)[int(len(latencies) * 0.95)] * 1000, 1),
                             "max": round(max(latencies) * 1000, 1)},
                "peak_rss_mib": {"idle": round(idle_peak / 1024, 1),
                                 "after": round(peak_rss_kib(server.process.pid) / 1024, 1)},
            }
        finally:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=26000)
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--puts", type=int, default=4)
    parser.add_argument("--extra-config", default="")
    args = parser.parse_args()
    extra = args.extra_config.replace("\\n", "\n")
    print(json.dumps(run(args.layers, args.distinct, args.puts, extra), indent=2))


if __name__ == "__main__":
    main()
