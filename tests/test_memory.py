"""Free heap goes back to the OS after bursts of large buffers (glibc's malloc_trim)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.helpers.server import RegistryProcess

MiB = 1024 * 1024

# In a fresh interpreter: 120 one-MiB buffers with small blocks between them (as requests leave them),
# then the buffers are freed. glibc keeps the freed space; the trimmer must hand it back.
FRAGMENT = """
import json
from app.memory import HeapTrimmer, resident_bytes
trimmer = HeapTrimmer()
first = b"\\x01" * (1 << 20)
del first  # glibc now serves 1 MiB blocks from its heap instead of mmap
big, pins = [], []
for i in range(120):
    big.append(bytes([i % 250 + 1]) * (1 << 20))
    pins.append(b"p" * 2000 + bytes([i % 250]))
full = resident_bytes()
del big
held = resident_bytes()
due = trimmer.due()
released = trimmer.trim()
print(json.dumps({"full": full, "held": held, "due": due, "released": released,
                  "after": resident_bytes(), "due_after": trimmer.due()}))
"""


def test_trimmer_returns_freed_heap_and_is_not_due_again() -> None:
    assert os.confstr("CS_GNU_LIBC_VERSION"), "this test needs glibc (Debian/Ubuntu)"
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    result = json.loads(out)
    assert result["full"] - result["held"] < 40 * MiB, "glibc released the buffers itself: no test"
    assert result["due"] is True
    assert result["released"] > 80 * MiB
    assert result["after"] < result["held"] - 80 * MiB
    assert result["due_after"] is False


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _push_concurrently(url: str, count: int, size: int) -> None:
    async with aiohttp.ClientSession() as session:
        async def push(i: int) -> None:
            data = bytes([i + 1]) * size
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            async with session.post(f"{url}/v2/mem/p{i}/blobs/uploads/") as response:
                assert response.status == 202
                location = response.headers["Location"]
            location = location if location.startswith("http") else url + location
            separator = "&" if "?" in location else "?"
            body = io.BytesIO(data)
            async with session.put(f"{location}{separator}digest={digest}", data=body) as response:
                assert response.status == 201, await response.text()

        await asyncio.gather(*(push(i) for i in range(count)))


def test_server_comes_back_near_its_idle_size_after_an_upload_burst(tmp_path: Path) -> None:
    server = RegistryProcess(tmp_path).start()
    try:
        assert server.process is not None
        time.sleep(1)
        idle = _rss(server.process.pid)
        for _ in range(3):
            asyncio.run(_push_concurrently(server.url, 8, 40 * MiB))
        deadline = time.monotonic() + 20  # the trimmer looks every 5 s
        while _rss(server.process.pid) > idle + 24 * MiB and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _rss(server.process.pid) <= idle + 24 * MiB, (idle, _rss(server.process.pid))
    finally:
        server.stop()
