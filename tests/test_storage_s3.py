"""What only the S3 driver has, against moto in server mode: the key layout under `key_prefix` (the one
distribution's s3 driver uses), the objects kept beside a session's key, the multipart uploads scrub
lists, presigned redirects, a commit cut short, and S3 going away and coming back.

The contract itself (shared with fs) is tests/test_storage_contract.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import ValidationError

from app.config import S3StoreConfig
from app.storage import NotFound, StorageError
from app.storage.s3 import S3Storage
from app.storage.s3_writers import STATE_SUFFIX, TAIL_SUFFIX, multipart_etag
from tests.helpers.drivers import MIB, PART_SIZE, DriverSpec, pattern, pattern_stream
from tests.helpers.moto import MotoServer
from tests.helpers.server import REPO_ROOT

UPLOAD = "docker/registry/v2/repositories/library/app/_uploads/0c0ffee0/data"
BLOB = "docker/registry/v2/blobs/sha256/ab/ab12/data"


@pytest.fixture
def spec(moto_server: MotoServer, s3_bucket: str) -> DriverSpec:
    return DriverSpec("s3", endpoint=moto_server.endpoint, bucket=s3_bucket, key_prefix="/registry/root/")


@pytest.fixture
async def s3(spec: DriverSpec) -> AsyncIterator[S3Storage]:
    driver = spec.open()
    assert isinstance(driver, S3Storage)
    yield driver
    await driver.close()


def raw_keys(moto: MotoServer, bucket: str) -> list[str]:
    pages = moto.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [entry["Key"] for page in pages for entry in page.get("Contents", ())]


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def write_all(writer: Any, offset: int, length: int) -> None:
    for data in pattern_stream(offset, length):
        await writer.write(data)


# --- configuration ----------------------------------------------------------------------------------
def test_configuration_limits() -> None:
    base = {"access_key_id": "a", "secret_key": "b", "bucket": "c"}
    config = S3StoreConfig(**base)
    assert (config.redirect, config.multipart_part_size, config.multipart_copy_threshold) == \
        (False, 10 * MIB, 5 * 1024 * MIB)
    assert S3StoreConfig(**base, multipart_part_size="5MiB", redirect=True).redirect is True
    for wrong in ({"multipart_part_size": "4MiB"}, {"multipart_part_size": "6GiB"},
                  {"multipart_copy_threshold": "6GiB"}, {"multipart_copy_chunk_size": "1MiB"},
                  {"multipart_copy_jobs": 0}, {"read_timeout": 0}):
        with pytest.raises(ValidationError):
            S3StoreConfig(**base, **wrong)


def test_aws_stack_loaded_only_for_an_s3_store(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from app.config import StoreConfig\n"
        "from app.storage import open_storage\n"
        f"open_storage(StoreConfig(fs={{'root_dir': {str(tmp_path)!r}}}))\n"
        "assert not {'aioboto3', 'botocore', 'app.storage.s3'} & set(sys.modules), sys.modules.keys()\n"
        "storage = open_storage(StoreConfig(s3={'access_key_id': 'a', 'secret_key': 'b', 'bucket': 'c'}))\n"
        "assert 'app.storage.s3' in sys.modules and 'aioboto3' not in sys.modules  # not before first use\n"
    )
    subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, check=True, timeout=60)


# --- the layout in the bucket -----------------------------------------------------------------------
async def test_keys_live_under_the_prefix_as_distribution_joins_them(
        s3: S3Storage, moto_server: MotoServer, s3_bucket: str) -> None:
    # distribution: strings.TrimLeft(strings.TrimRight(rootdirectory, "/") + "/docker/...", "/")
    await s3.put(BLOB, b"blob")
    await s3.put("docker/registry/v2/repositories/a/_layers/sha256/ab12/link", b"sha256:ab12")
    assert raw_keys(moto_server, s3_bucket) == [
        "registry/root/docker/registry/v2/blobs/sha256/ab/ab12/data",
        "registry/root/docker/registry/v2/repositories/a/_layers/sha256/ab12/link",
    ]
    assert await s3.list_dir("") == ["docker"]
    assert [key async for key in s3.walk("docker/registry/v2/blobs")] == [BLOB]
    at_root = DriverSpec("s3", endpoint=moto_server.endpoint, bucket=s3_bucket).open()
    try:
        await at_root.put(BLOB, b"at the root")
        assert "docker/registry/v2/blobs/sha256/ab/ab12/data" in raw_keys(moto_server, s3_bucket)
        assert await at_root.list_dir("") == ["docker", "registry"]
    finally:
        await at_root.close()


async def test_session_objects_beside_its_key(s3: S3Storage, moto_server: MotoServer, s3_bucket: str) -> None:
    full = f"registry/root/{UPLOAD}"
    writer = await s3.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, PART_SIZE + 100)
    await writer.close(b"\x00\x01checkpoint")
    keys = raw_keys(moto_server, s3_bucket)
    assert full not in keys  # nothing at the session key before the commit
    assert full + STATE_SUFFIX in keys
    tails = [key for key in keys if key.startswith(full + TAIL_SUFFIX)]
    assert len(tails) == 1
    state = json.loads(await s3.get(UPLOAD + STATE_SUFFIX))
    assert state["size"] == PART_SIZE + 100 and len(state["parts"]) == 1
    assert state["parts"][0][0] == 1 and state["parts"][0][2] == PART_SIZE
    assert state["tail"] == tails[0].removeprefix("registry/root/")
    assert await s3.get(state["tail"]) == pattern(PART_SIZE, 100)
    # The next close switches to a new tail and removes the old one.
    writer = await s3.upload_writer(UPLOAD)
    await write_all(writer, PART_SIZE + 100, 50)
    await writer.close(b"next")
    keys = raw_keys(moto_server, s3_bucket)
    assert [key for key in keys if key.startswith(full + TAIL_SUFFIX)] != tails
    assert len([key for key in keys if key.startswith(full + TAIL_SUFFIX)]) == 1
    uploads = await s3.multipart_uploads()
    assert [(key, upload_id) for key, upload_id, _ in uploads] == [(UPLOAD, state["upload_id"])]
    writer = await s3.upload_writer(UPLOAD)
    await writer.commit(BLOB)
    assert raw_keys(moto_server, s3_bucket) == [f"registry/root/{BLOB}"]
    assert await s3.multipart_uploads() == []


# --- multipart uploads for scrub, and the purge of orphans ------------------------------------------
async def test_orphan_uploads_listed_and_purged(s3: S3Storage, moto_server: MotoServer,
                                                s3_bucket: str) -> None:
    orphan = await s3.create_multipart_upload(BLOB)  # a commit's, its process killed
    outside = moto_server.client().create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/data")
    writer = await s3.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, PART_SIZE + 1)
    await writer.close(b"live")
    listed = {(key, upload_id) for key, upload_id, _ in await s3.multipart_uploads()}
    live = json.loads(await s3.get(UPLOAD + STATE_SUFFIX))["upload_id"]
    assert listed == {(BLOB, orphan), (UPLOAD, live)}  # not what lies outside the prefix
    assert all(isinstance(initiated, float) for _, _, initiated in await s3.multipart_uploads())
    assert await s3.purge_temporary(50 * 365 * 86400) == 0  # none older than that (moto says 2010)
    assert await s3.purge_temporary(0) == 1  # the orphan, never the live session's
    assert [(key, upload_id) for key, upload_id, _ in await s3.multipart_uploads()] == [(UPLOAD, live)]
    writer = await s3.upload_writer(UPLOAD)
    await writer.commit(BLOB)
    assert await collect(s3.read(BLOB)) == pattern(0, PART_SIZE + 1)
    client = moto_server.client()
    client.abort_multipart_upload(Bucket=s3_bucket, Key="elsewhere/data", UploadId=outside["UploadId"])


async def test_delete_tree_aborts_uploads_below(s3: S3Storage) -> None:
    writer = await s3.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, PART_SIZE + 1)
    await writer.close(b"cp")
    await s3.delete_tree(UPLOAD.rsplit("/", 1)[0])
    assert await s3.multipart_uploads() == []
    with pytest.raises(NotFound):
        await s3.upload_writer(UPLOAD)


async def test_killed_upload_is_listed_for_scrub(spec: DriverSpec, s3: S3Storage) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.helpers.drivers", spec.dumps(), "stream-until-killed", UPLOAD,
        str(1000), BLOB, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    try:
        while int(await asyncio.wait_for(child.stdout.readline(), 60) or 0) < 2 * PART_SIZE:
            pass
    finally:
        child.kill()
        await child.wait()
    assert [key for key, _, _ in await s3.multipart_uploads()] == [UPLOAD]
    assert await s3.stat(BLOB) is None
    writer = await s3.upload_writer(UPLOAD)  # the closed session, exactly
    assert (writer.size, writer.checkpoint) == (1000, b"closed")
    await writer.cancel()
    assert await s3.multipart_uploads() == []


# --- a commit cut short -----------------------------------------------------------------------------
async def _complete_behind_its_back(s3: S3Storage, tail: bytes) -> None:
    """What a commit killed right after CompleteMultipartUpload leaves: the whole object at the session
    key, the state still naming the (now completed) upload."""
    state = json.loads(await s3.get(UPLOAD + STATE_SUFFIX))
    parts = [{"PartNumber": number, "ETag": etag} for number, etag, _ in state["parts"]]
    etag = await s3.upload_part(UPLOAD, state["upload_id"], len(parts) + 1, tail)
    await s3.complete_multipart_upload(UPLOAD, state["upload_id"], [*parts, {"PartNumber": len(parts) + 1,
                                                                             "ETag": etag}])


async def test_commit_retried_after_a_completed_upload(s3: S3Storage) -> None:
    writer = await s3.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, PART_SIZE + 10)
    await writer.close(b"cp")
    await _complete_behind_its_back(s3, pattern(PART_SIZE, 10) + pattern(PART_SIZE + 10, 5))
    writer = await s3.upload_writer(UPLOAD)
    assert (writer.size, writer.checkpoint) == (PART_SIZE + 10, b"cp")
    await writer.write(pattern(PART_SIZE + 10, 5))  # the retried PUT's body, once more
    await writer.commit(BLOB)  # recognised by its ETag: copied, not completed again
    assert await collect(s3.read(BLOB)) == pattern(0, PART_SIZE + 15)


async def test_commit_refuses_a_session_completed_with_other_content(s3: S3Storage) -> None:
    writer = await s3.upload_writer(UPLOAD, create=True)
    await write_all(writer, 0, PART_SIZE + 10)
    await writer.close(b"cp")
    await _complete_behind_its_back(s3, pattern(PART_SIZE, 10) + b"other")
    writer = await s3.upload_writer(UPLOAD)
    await writer.write(b"final")
    with pytest.raises(NotFound):
        await writer.commit(BLOB)
    assert await s3.stat(BLOB) is None


def test_multipart_etag_is_the_s3_formula() -> None:
    # MD5 of the concatenated binary MD5s of the parts, then the count (AWS's documented behaviour).
    assert multipart_etag(['"d41d8cd98f00b204e9800998ecf8427e"']) == '"59adb24ef3cdbe0297f05b395827453f-1"'


# --- redirects --------------------------------------------------------------------------------------
async def test_redirect_url_is_presigned(moto_server: MotoServer, s3_bucket: str) -> None:
    spec = DriverSpec("s3", endpoint=moto_server.endpoint, bucket=s3_bucket, key_prefix="r", redirect=True)
    driver = spec.open()
    try:
        await driver.put(BLOB, b"fetched from S3 directly")
        url = await (await driver.body(BLOB)).redirect_url()
        assert url is not None and url.startswith(f"{moto_server.endpoint}/{s3_bucket}/r/docker/registry/")
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=1200" in url
        response = await asyncio.to_thread(requests.get, url, timeout=10)
        assert response.status_code == 200 and response.content == b"fetched from S3 directly"
    finally:
        await driver.close()


# --- S3 going away ----------------------------------------------------------------------------------
@pytest.fixture
def own_moto(tmp_path: Path) -> Any:
    """A moto of this test alone: it is stopped and started again."""
    server = MotoServer(tmp_path / "moto.log").start()
    yield server
    server.stop()


async def test_unreachable_s3_is_a_storage_error_and_recovers(own_moto: MotoServer) -> None:
    bucket = own_moto.create_bucket()
    driver = DriverSpec("s3", endpoint=own_moto.endpoint, bucket=bucket, key_prefix="p").open()
    assert isinstance(driver, S3Storage)
    try:
        await driver.put("small", b"v")
        await driver.put("big", pattern(0, 24 * MIB))  # more than socket buffers hold
        writer = await driver.upload_writer(UPLOAD, create=True)
        await write_all(writer, 0, 1000)
        await writer.close(b"cp")
        stream = driver.read("big", chunk_size=65536)
        assert await anext(stream) == pattern(0, 65536)

        own_moto.stop()  # S3 is gone, mid-read too
        attempts: list[Any] = [
            driver.get("small"), driver.put("small", b"w"), driver.create("new", b"x"), driver.stat("small"),
            driver.list_dir("docker"), collect(driver.walk("docker")), driver.delete("small"),
            driver.delete_tree("docker"), driver.copy("small", "other"), driver.upload_writer(UPLOAD),
            driver.upload_writer(UPLOAD, create=True), driver.purge_temporary(0), driver.body("small"),
            collect(stream),
        ]
        for attempt in attempts:
            with pytest.raises(StorageError) as failure:
                await asyncio.wait_for(attempt, 60)  # bounded by timeouts and retries, never a hang
            assert bucket in str(failure.value) and own_moto.endpoint in str(failure.value)
        with pytest.raises(StorageError):
            await asyncio.wait_for(write_all(writer, 1000, 2 * PART_SIZE), 60)

        own_moto.start()  # back, on the same port (empty: moto keeps nothing)
        own_moto.create_bucket(bucket)
        await driver.put("small", b"again")  # the same driver, not recreated
        assert await driver.get("small") == b"again"
        writer = await driver.upload_writer(UPLOAD, create=True)
        await write_all(writer, 0, PART_SIZE + 1)
        await writer.commit(BLOB)
        assert await collect(driver.read(BLOB)) == pattern(0, PART_SIZE + 1)
    finally:
        await driver.close()


async def test_hanging_s3_times_out_and_keeps_the_closed_session(own_moto: MotoServer) -> None:
    bucket = own_moto.create_bucket()
    spec = DriverSpec("s3", endpoint=own_moto.endpoint, bucket=bucket, key_prefix="p")
    driver = spec.open(connect_timeout=1, read_timeout=2)
    assert own_moto.process is not None
    try:
        writer = await driver.upload_writer(UPLOAD, create=True)
        await write_all(writer, 0, PART_SIZE + 10)
        await writer.close(b"closed")
        writer = await driver.upload_writer(UPLOAD)
        await writer.write(b"more, before S3 hangs")
        own_moto.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            with pytest.raises(StorageError, match="S3 is unavailable"):
                await asyncio.wait_for(driver.get(UPLOAD + STATE_SUFFIX), 60)
            with pytest.raises(StorageError):
                await asyncio.wait_for(writer.close(b"never stored"), 60)
            with pytest.raises(StorageError):  # a part that cannot be uploaded...
                await asyncio.wait_for(write_all(writer, PART_SIZE + 31, 2 * PART_SIZE), 60)
            with pytest.raises(StorageError):  # ...is never closed over
                await asyncio.wait_for(writer.close(b"with a hole"), 60)
        finally:
            own_moto.process.send_signal(signal.SIGCONT)
        writer = await driver.upload_writer(UPLOAD)  # the session of the last close() that succeeded
        assert (writer.size, writer.checkpoint) == (PART_SIZE + 10, b"closed")
        await writer.commit(BLOB)
        assert await collect(driver.read(BLOB)) == pattern(0, PART_SIZE + 10)
    finally:
        await driver.close()


async def test_missing_bucket_names_it(own_moto: MotoServer) -> None:
    driver = DriverSpec("s3", endpoint=own_moto.endpoint, bucket="no-such-bucket").open()
    try:
        with pytest.raises(StorageError, match="no-such-bucket"):
            await driver.put("k", b"v")
    finally:
        await driver.close()
