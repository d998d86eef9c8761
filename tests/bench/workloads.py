"""The zb-style workloads: each is `c` workers, each running its share of `n` iterations in sequence over
one keep-alive connection; one iteration is one whole image operation and its latency is its wall time."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MiB = 1024 * 1024
# zb sends no Accept header, but distribution 2.8 refuses to serve an OCI manifest to such a GET
# ("accept header does not support OCI manifests"); every real client sends this list.
MANIFEST_ACCEPT = {"Accept": ", ".join([
    OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])}


def layer_data(size: int, seed: int) -> bytes:
    """A random 4 KiB head and zeros, as zb makes them (unique per seed, cheap to build)."""
    head = random.Random(seed).randbytes(min(4096, size))
    return head + bytes(size - len(head))


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    layers: list[bytes]
    config: bytes
    manifest: bytes

    @classmethod
    def build(cls, layer_sizes: list[int], seed: int) -> Image:
        layers = [layer_data(size, seed * 1000 + i) for i, size in enumerate(layer_sizes)]
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "seed": seed,
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": digest(d),
                        "size": len(d),
                    }
                    for d in layers
                ],
            }
        ).encode()
        return cls(layers, config, manifest)

    @property
    def size(self) -> int:
        return sum(len(layer) for layer in self.layers) + len(self.config) + len(self.manifest)


class Failed(Exception):
    pass


def _expect(response: aiohttp.ClientResponse, *statuses: int) -> None:
    if response.status not in statuses:
        raise Failed(f"{response.method} {response.url.path}: {response.status}")


def _location(base: str, response: aiohttp.ClientResponse) -> str:
    location = response.headers["Location"]
    return location if location.startswith("http") else base + location


async def push_blob_monolith(session: aiohttp.ClientSession, base: str, name: str, data: bytes) -> None:
    """POST (202) → PUT ?digest= with the body (201), as zb's monolith push."""
    async with session.post(f"{base}/v2/{name}/blobs/uploads/") as response:
        _expect(response, 202)
        location = _location(base, response)
    separator = "&" if "?" in location else "?"
    async with session.put(
        f"{location}{separator}digest={digest(data)}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    ) as response:
        _expect(response, 201)


async def push_blob_chunked(
    session: aiohttp.ClientSession, base: str, name: str, data: bytes, empty_patch: bool = False
) -> None:
    """POST → PATCH with the whole blob (no Content-Range) → PUT ?digest= with no body."""
    async with session.post(f"{base}/v2/{name}/blobs/uploads/") as response:
        _expect(response, 202)
        location = _location(base, response)
    if empty_patch:
        async with session.patch(
            location, data=b"", headers={"Content-Type": "application/octet-stream"}
        ) as response:
            _expect(response, 202)
            location = _location(base, response)
    async with session.patch(
        location, data=data, headers={"Content-Type": "application/octet-stream"}
    ) as response:
        _expect(response, 202)
        location = _location(base, response)
    separator = "&" if "?" in location else "?"
    async with session.put(f"{location}{separator}digest={digest(data)}") as response:
        _expect(response, 201)


async def push_image(
    session: aiohttp.ClientSession, base: str, name: str, tag: str, image: Image, chunked: bool = False
) -> None:
    for layer in image.layers:
        if chunked:
            await push_blob_chunked(session, base, name, layer)
        else:
            await push_blob_monolith(session, base, name, layer)
    if chunked:
        await push_blob_chunked(session, base, name, image.config, empty_patch=True)
    else:
        await push_blob_monolith(session, base, name, image.config)
    async with session.put(
        f"{base}/v2/{name}/manifests/{tag}", data=image.manifest, headers={"Content-Type": OCI_MANIFEST}
    ) as response:
        _expect(response, 201)


async def pull_image(session: aiohttp.ClientSession, base: str, name: str, tag: str) -> int:
    """HEAD+GET manifest by tag (no Accept), HEAD+GET config, HEAD+streamed GET of each layer, drained."""
    received = 0
    async with session.head(f"{base}/v2/{name}/manifests/{tag}", headers=MANIFEST_ACCEPT) as response:
        _expect(response, 200)
    async with session.get(f"{base}/v2/{name}/manifests/{tag}", headers=MANIFEST_ACCEPT) as response:
        _expect(response, 200)
        manifest = json.loads(await response.read())
    for descriptor in [manifest["config"], *manifest["layers"]]:
        url = f"{base}/v2/{name}/blobs/{descriptor['digest']}"
        async with session.head(url) as response:
            _expect(response, 200)
        async with session.get(url) as response:
            _expect(response, 200)
            async for chunk in response.content.iter_chunked(1 << 20):
                received += len(chunk)
    return received


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    bytes: int = 0
    requests: int = 0
    wall: float = 0.0

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies)

        def rank(p: float) -> float:  # nearest rank
            if not ordered:
                return 0.0
            return ordered[max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 1)) - 1))]

        return {
            "iterations": len(ordered),
            "errors": self.errors,
            "iterations_per_s": len(ordered) / self.wall if self.wall else 0.0,
            "requests_per_s": self.requests / self.wall if self.wall else 0.0,
            "mb_per_s": self.bytes / self.wall / 1e6 if self.wall else 0.0,
            "p50_ms": rank(0.50) * 1000,
            "p99_ms": rank(0.99) * 1000,
        }


Iteration = Callable[[aiohttp.ClientSession, int], Awaitable[tuple[int, int]]]
"""One iteration: (session, index) → (bytes moved, requests made)."""


async def run(concurrency: int, iterations: int, iteration: Iteration, limit_s: float = 600) -> Result:
    result = Result()
    counter = iter(range(iterations))

    async def worker() -> None:
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=limit_s), auto_decompress=False
        ) as session:
            for index in counter:
                started = time.perf_counter()
                try:
                    moved, requests = await iteration(session, index)
                except (TimeoutError, Failed, aiohttp.ClientError, OSError):
                    result.errors += 1
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.bytes += moved
                result.requests += requests

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall = time.perf_counter() - started
    return result


def unique_suffix() -> str:
    return os.urandom(4).hex()
