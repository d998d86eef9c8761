"""Storage drivers for the contract suite, described so that another process can open the same store.

`DriverSpec` is JSON-able: the suite hands it to a child process (`python -m tests.helpers.drivers`)
that opens the same store and resumes a writer there, or streams until it is killed.
"""

from __future__ import annotations

import array
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.config import S3StoreConfig
from app.storage import Storage

MIB = 1024 * 1024
# The smallest part S3 allows: the suite's sizes are chosen around it, so that S3 runs several parts.
PART_SIZE = 5 * MIB
# Low enough that the suite's copies and commits of a few parts take the multipart-copy path on S3.
COPY_THRESHOLD = 6 * MIB


@dataclass(frozen=True)
class DriverSpec:
    kind: str  # "fs" or "s3"
    root: str = ""  # fs
    endpoint: str = ""  # s3
    bucket: str = ""
    key_prefix: str = ""
    redirect: bool = False

    def s3_config(self, **overrides: Any) -> S3StoreConfig:
        from tests.helpers.moto import ACCESS_KEY_ID, REGION, SECRET_KEY

        values: dict[str, Any] = {
            "access_key_id": ACCESS_KEY_ID, "secret_key": SECRET_KEY, "endpoint": self.endpoint,
            "bucket": self.bucket, "region": REGION, "key_prefix": self.key_prefix,
            "multipart_part_size": PART_SIZE, "multipart_copy_threshold": COPY_THRESHOLD,
            "multipart_copy_chunk_size": PART_SIZE, "multipart_copy_jobs": 3, "redirect": self.redirect,
            # Short, so that an unreachable S3 fails a test in seconds rather than hanging it.
            "connect_timeout": 2, "read_timeout": 20, "max_attempts": 2,
        }
        values.update(overrides)
        return S3StoreConfig(**values)

    def open(self, **overrides: Any) -> Storage:
        if self.kind == "fs":
            from app.storage.fs import FsStorage

            return FsStorage(Path(self.root))
        from app.storage.s3 import S3Storage

        return S3Storage(self.s3_config(**overrides))

    def dumps(self) -> str:
        return json.dumps(asdict(self))


def pattern(offset: int, length: int) -> bytes:
    """Deterministic bytes of a stream at [offset, offset + length): every 8-byte word is its own
    position, so a byte in the wrong place (a mix of two writes, a part twice) shows."""
    first = offset - offset % 8
    words = array.array("Q", range(first, offset + length + 8, 8))
    if sys.byteorder == "big":
        words.byteswap()
    start = offset - first
    return words.tobytes()[start:start + length]


def pattern_stream(offset: int, length: int, chunk: int = MIB) -> Any:
    for start in range(offset, offset + length, chunk):
        yield pattern(start, min(chunk, offset + length - start))


async def _append(spec: DriverSpec, key: str, offset: int, length: int, checkpoint: str) -> None:
    """Resume the session at `key` (which must hold `offset` bytes), append, close with `checkpoint`."""
    driver = spec.open()
    try:
        writer = await driver.upload_writer(key)
        assert writer.size == offset, (writer.size, offset)
        for data in pattern_stream(offset, length):
            await writer.write(data)
        await writer.close(checkpoint.encode())
    finally:
        await driver.close()


async def _stream_until_killed(spec: DriverSpec, key: str, closed: int, destination: str) -> None:
    """A fresh session: `closed` bytes closed with checkpoint "closed", then writes that never end (each
    megabyte reported on stdout); it would commit to `destination`, but it is killed first."""
    driver = spec.open()
    writer = await driver.upload_writer(key, create=True)
    for data in pattern_stream(0, closed):
        await writer.write(data)
    await writer.close(b"closed")
    offset = closed
    while True:
        data = pattern(offset, MIB)
        await writer.write(data)
        offset += len(data)
        print(offset, flush=True)
        if offset > 10_000 * MIB:  # never reached: the test kills us long before
            await writer.commit(destination)
            return


def main(argv: list[str]) -> None:
    spec = DriverSpec(**json.loads(argv[1]))
    action = argv[2]
    if action == "append":
        asyncio.run(_append(spec, argv[3], int(argv[4]), int(argv[5]), argv[6]))
    elif action == "stream-until-killed":
        asyncio.run(_stream_until_killed(spec, argv[3], int(argv[4]), argv[5]))
    else:
        raise SystemExit(f"unknown action {action}")
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv)
