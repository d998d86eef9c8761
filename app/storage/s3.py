"""S3 storage driver (aioboto3): the contract of app/storage/base.py kept by an object store.

Keys are `<key_prefix>/` + the layout key, exactly as distribution's s3 driver joins its
`rootdirectory` (`strings.TrimLeft(strings.TrimRight(root, "/") + path, "/")`), so one bucket and
root can be served by either registry. Small writes are single PUTs (atomic in S3), creates are
conditional PUTs (`If-None-Match: *`), copies are server-side (multipart above the threshold). The
writers of large objects are in app/storage/s3_writers.py; docs/storage.md describes the objects they
keep beside a session's key.

The client, the translation of its failures and the keys are app/storage/s3_client.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from app.config import S3StoreConfig
from app.storage.base import Body, NotFound, SpoolWriter, Stat, Storage, StorageError, UploadWriter
from app.storage.s3_client import Data, RequestBody, S3Connection, request_body

__all__ = ["MAX_PARTS", "Piece", "RequestBody", "S3Storage"]

# S3's own limits (also those of the S3-compatible stores we know).
MAX_PARTS = 10_000
MAX_SINGLE_COPY = 5 * 1024**3
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
PRESIGNED_LIFETIME = 20 * 60  # distribution's URLFor default
# How often a create waits out AWS's 409 ConditionalRequestConflict (a concurrent conditional write of
# the same key still in progress): AWS asks the client to retry, after which one of them has won.
CREATE_CONFLICT_RETRIES = 8

# A copy piece of a multipart assembly: (source layout key, first byte, last byte), or data.
Piece = tuple[str, int, int] | bytes | bytearray | RequestBody


class S3Storage(S3Connection, Storage):
    def __init__(self, config: S3StoreConfig) -> None:
        super().__init__(config)
        self.part_size = int(config.multipart_part_size)
        self.copy_threshold = min(int(config.multipart_copy_threshold), MAX_SINGLE_COPY)
        self.copy_chunk_size = int(config.multipart_copy_chunk_size)
        self.copy_jobs = config.multipart_copy_jobs

    # --- small objects ------------------------------------------------------------------------------
    async def get(self, key: str) -> bytes:
        client = await self.client()
        with self.errors("GET", key):
            response = await client.get_object(Bucket=self.bucket, Key=self.full_key(key))
            stream = response["Body"]
            async with stream:  # (its __aenter__ returns the aiohttp response, not the stream)
                return bytes(await stream.read())

    async def put_object(self, key: str, data: Data, **extra: Any) -> str:
        """One PUT (atomic in S3); the object's ETag."""
        client = await self.client()
        with self.errors("PUT", key):
            body = request_body(data)
            response = await self.sending(body, client.put_object(
                Bucket=self.bucket, Key=self.full_key(key), Body=body, **extra))
        return str(response.get("ETag", ""))

    async def put(self, key: str, data: bytes) -> None:
        await self.put_object(key, data)

    async def create(self, key: str, data: bytes, *, private: bool = False) -> bool:
        # `private` needs nothing more: objects are readable only with the bucket's credentials (an ACL
        # would be refused by buckets that enforce object ownership, and by several compatibles).
        for attempt in range(CREATE_CONFLICT_RETRIES):
            try:
                await self.put_object(key, data, IfNoneMatch="*")
                return True
            except StorageError as exc:
                code = self.error_code(exc)
                if code == "PreconditionFailed":
                    return False  # it exists: the first creator won
                if code != "ConditionalRequestConflict" or attempt == CREATE_CONFLICT_RETRIES - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def head(self, key: str) -> dict[str, Any] | None:
        client = await self.client()
        try:
            with self.errors("HEAD", key):
                return dict(await client.head_object(Bucket=self.bucket, Key=self.full_key(key)))
        except NotFound:
            return None

    async def stat(self, key: str) -> Stat | None:
        head = await self.head(key)
        if head is None:
            return None
        return Stat(int(head["ContentLength"]), head["LastModified"].timestamp())

    # --- reading ------------------------------------------------------------------------------------
    async def read(self, key: str, offset: int = 0, length: int | None = None,
                   chunk_size: int = 1 << 20, if_match: str | None = None) -> AsyncIterator[bytes]:
        """One (ranged) GET streamed in chunks of at most `chunk_size`; `if_match`: only that version."""
        if length == 0:
            if await self.head(key) is None:
                raise NotFound(key)
            return
        client = await self.client()
        extra: dict[str, Any] = {"IfMatch": if_match} if if_match else {}
        if offset or length is not None:
            extra["Range"] = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        try:
            with self.errors("GET", key):
                response = await client.get_object(Bucket=self.bucket, Key=self.full_key(key), **extra)
        except StorageError as exc:
            if self.error_code(exc) == "InvalidRange":
                return  # the object exists, and `offset` is at or past its end
            raise
        stream = response["Body"]
        async with stream:  # released (the connection too, when not read to the end) however we leave
            pending = bytearray()
            while True:
                with self.errors("GET", key):
                    piece = await stream.read(chunk_size - len(pending))
                if not piece:
                    break
                if not pending and len(piece) == chunk_size:
                    yield piece
                    continue
                pending += piece
                if len(pending) >= chunk_size:
                    yield bytes(pending)
                    pending.clear()
            if pending:
                yield bytes(pending)

    async def body(self, key: str) -> Body:
        from app.storage.s3_writers import S3Body

        head = await self.head(key)
        if head is None:
            raise NotFound(key)
        return S3Body(self, key, int(head["ContentLength"]), str(head.get("ETag") or "") or None)

    async def presigned_url(self, key: str) -> str:
        client = await self.client()
        with self.errors("presign", key):
            return str(await client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.full_key(key)},
                ExpiresIn=PRESIGNED_LIFETIME))

    # --- listing and deleting -----------------------------------------------------------------------
    async def list_pages(self, action: str, **params: Any) -> AsyncIterator[dict[str, Any]]:
        client = await self.client()
        token: str | None = None
        while True:
            with self.errors(action, params.get("Prefix")):
                page = await client.list_objects_v2(Bucket=self.bucket, **params,
                                                    **({"ContinuationToken": token} if token else {}))
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    async def list_dir(self, prefix: str) -> list[str]:
        folder = self._folder(prefix)
        names: set[str] = set()
        async for page in self.list_pages("LIST", Prefix=folder, Delimiter="/"):
            names.update(entry["Prefix"][len(folder):].rstrip("/")
                         for entry in page.get("CommonPrefixes", ()))
            names.update(entry["Key"][len(folder):] for entry in page.get("Contents", ()))
        names.discard("")  # a "folder marker" object some tools create at `<folder>/`
        return sorted(names)

    async def walk(self, prefix: str, start_after: str | None = None) -> AsyncIterator[str]:
        params: dict[str, Any] = {"Prefix": self._folder(prefix)}
        if start_after is not None:
            params["StartAfter"] = self.full_key(start_after)
        # S3 lists in UTF-8 byte order, which is Python's str order: the contract's lexical order.
        async for page in self.list_pages("LIST", **params):
            for entry in page.get("Contents", ()):
                yield self.layout_key(entry["Key"])

    async def delete(self, key: str) -> bool:
        # DeleteObject answers 204 whether or not the key existed: the HEAD tells which.
        if await self.head(key) is None:
            return False
        await self.delete_objects([key])
        return True

    async def delete_objects(self, keys: list[str]) -> None:
        """DeleteObjects in batches of 1000; absent keys are fine."""
        client = await self.client()
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            with self.errors("DELETE", batch[0]):
                response = await client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self.full_key(key)} for key in batch], "Quiet": True})
            failed = response.get("Errors") or []
            if failed:
                first = failed[0]
                raise StorageError(f"S3 DELETE of {len(failed)} objects in bucket {self.bucket!r} at "
                                   f"{self.endpoint} failed, first {first.get('Key')}: "
                                   f"{first.get('Code')} {first.get('Message', '')}")

    async def delete_tree(self, prefix: str) -> None:
        # Page by page, each listing resuming after the last key deleted: millions of keys never sit in
        # memory, and a key that keeps reappearing cannot loop us.
        client = await self.client()
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._folder(prefix),
                                  "MaxKeys": DELETE_BATCH}
        while True:
            with self.errors("LIST", prefix):
                page = await client.list_objects_v2(**params)
            keys = [self.layout_key(entry["Key"]) for entry in page.get("Contents", ())]
            if not keys:
                break
            await self.delete_objects(keys)
            params["StartAfter"] = self.full_key(keys[-1])
        # Multipart uploads below it (an upload session's) are part of the tree: they cost storage too.
        for key, upload_id, _initiated in await self.multipart_uploads(prefix):
            await self.abort_multipart_upload(key, upload_id)

    # --- copies -------------------------------------------------------------------------------------
    async def copy(self, source: str, destination: str) -> None:
        head = await self.head(source)
        if head is None:
            raise NotFound(source)
        size, etag = int(head["ContentLength"]), str(head.get("ETag") or "")
        if size <= self.copy_threshold:
            await self.copy_object(source, destination)
            return
        chunk = max(self.copy_chunk_size, math.ceil(size / MAX_PARTS))
        pieces: list[Piece] = [(source, start, min(start + chunk, size) - 1)
                               for start in range(0, size, chunk)]
        await self.assemble(destination, pieces, source_etag=etag or None)

    async def copy_object(self, source: str, destination: str) -> None:
        client = await self.client()
        with self.errors("COPY", f"{source} to {destination}"):
            await client.copy_object(Bucket=self.bucket, Key=self.full_key(destination),
                                     CopySource={"Bucket": self.bucket, "Key": self.full_key(source)})

    async def assemble(self, destination: str, pieces: list[Piece], source_etag: str | None = None) -> None:
        """One multipart upload at `destination` made of `pieces` (server-side copies of byte ranges,
        `copy_jobs` at a time, or bytes), completed at once; aborted when anything fails."""
        if len(pieces) > MAX_PARTS:
            raise StorageError(f"{destination}: {len(pieces)} parts exceed S3's {MAX_PARTS}")
        client = await self.client()
        upload_id = await self.create_multipart_upload(destination)
        jobs = asyncio.Semaphore(self.copy_jobs)

        async def part(number: int, piece: Piece) -> dict[str, Any]:
            async with jobs:
                if not isinstance(piece, tuple):
                    etag = await self.upload_part(destination, upload_id, number, piece)
                    return {"PartNumber": number, "ETag": etag}
                source, first, last = piece
                extra = {"CopySourceIfMatch": source_etag} if source_etag else {}
                with self.errors("COPY", f"{source} to {destination}"):
                    response = await client.upload_part_copy(
                        Bucket=self.bucket, Key=self.full_key(destination), UploadId=upload_id,
                        PartNumber=number, CopySource={"Bucket": self.bucket, "Key": self.full_key(source)},
                        CopySourceRange=f"bytes={first}-{last}", **extra)
                return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(part(number, piece)) for number, piece in enumerate(pieces, 1)]
            await self.complete_multipart_upload(destination, upload_id, [task.result() for task in tasks])
        except BaseException as exc:
            with contextlib.suppress(StorageError, NotFound):
                await self.abort_multipart_upload(destination, upload_id)
            if isinstance(exc, BaseExceptionGroup):
                raise exc.exceptions[0] from None  # one failure is enough to tell
            raise

    # --- multipart uploads --------------------------------------------------------------------------
    async def create_multipart_upload(self, key: str) -> str:
        client = await self.client()
        with self.errors("CREATE MULTIPART UPLOAD", key):
            response = await client.create_multipart_upload(Bucket=self.bucket, Key=self.full_key(key))
        return str(response["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, data: Data) -> str:
        client = await self.client()
        with self.errors("UPLOAD PART", key):
            body = request_body(data)
            response = await self.sending(body, client.upload_part(
                Bucket=self.bucket, Key=self.full_key(key), UploadId=upload_id, PartNumber=number,
                Body=body))
        return str(response["ETag"])

    async def complete_multipart_upload(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        client = await self.client()
        with self.errors("COMPLETE MULTIPART UPLOAD", key):
            await client.complete_multipart_upload(Bucket=self.bucket, Key=self.full_key(key),
                                                   UploadId=upload_id, MultipartUpload={"Parts": parts})

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts (for scrub, too); one already gone is fine."""
        client = await self.client()
        with contextlib.suppress(NotFound), self.errors("ABORT MULTIPART UPLOAD", key):
            await client.abort_multipart_upload(Bucket=self.bucket, Key=self.full_key(key),
                                                UploadId=upload_id)

    async def multipart_uploads(self, prefix: str = "") -> list[tuple[str, str, float]]:
        """Multipart uploads in progress below the layout folder `prefix` (all of ours by default):
        (layout key, upload id, initiated, seconds since the epoch). Scrub aborts the orphans."""
        client = await self.client()
        found: list[tuple[str, str, float]] = []
        markers: dict[str, str] = {}
        while True:
            with self.errors("LIST MULTIPART UPLOADS", prefix):
                page = await client.list_multipart_uploads(Bucket=self.bucket, Prefix=self._folder(prefix),
                                                           **markers)
            found.extend((self.layout_key(upload["Key"]), str(upload["UploadId"]),
                          upload["Initiated"].timestamp()) for upload in page.get("Uploads", ()))
            if not page.get("IsTruncated"):
                return found
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    # --- large objects ------------------------------------------------------------------------------
    async def upload_writer(self, key: str, *, create: bool = False) -> UploadWriter:
        from app.storage.s3_writers import open_upload_writer

        return await open_upload_writer(self, key, create)

    async def upload_modified(self, key: str) -> float | None:
        from app.storage.s3_writers import STATE_SUFFIX

        stat = await self.stat(key + STATE_SUFFIX)  # rewritten by every close()
        return stat.modified if stat is not None else None

    async def spool_writer(self, key: str) -> SpoolWriter:
        from app.storage.s3_writers import S3SpoolWriter

        return S3SpoolWriter(self, key)

    # --- housekeeping -------------------------------------------------------------------------------
    async def purge_temporary(self, older_than: float) -> int:
        """Abort the multipart uploads older than `older_than` that no live upload session refers to.

        Small writes need no temporary objects (a PUT is atomic). What a killed process leaves is
        multipart uploads: a commit's or copy's at its destination, or a session's whose state was never
        written or is gone. A session's own upload is spared (the session's expiry removes it); the
        other objects a driver keeps beside a session's key go with the session's folder.
        """
        from app.storage.s3_writers import session_upload_id

        deadline = time.time() - older_than
        removed = 0
        for key, upload_id, initiated in await self.multipart_uploads():
            if initiated >= deadline or await session_upload_id(self, key) == upload_id:
                continue
            await self.abort_multipart_upload(key, upload_id)
            removed += 1
        return removed
