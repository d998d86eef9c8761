"""Upload sessions: streamed appends with a running hash, resumable after a restart, atomic commit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from app import errors
from app.actors.bridge import ActorHandle
from app.actors.locks import Locks
from app.actors.uploads import Lease, UploadBusy, UploadLimits
from app.digits import decimal
from app.grammar import Digest
from app.services.blobs import BlobService
from app.storage import Storage, layout


@dataclass(frozen=True)
class ContentRange:
    start: int
    end: int  # inclusive

    @classmethod
    def parse(cls, header: str | None) -> ContentRange | None:
        """`<start>-<end>` (or `bytes <start>-<end>/<total>`): ASCII digits, at most 19 of them (no
        upload reaches 10**19 bytes), `end >= start`; anything else is 416."""
        if header is None:
            return None
        text = header.strip()
        if text.startswith("bytes "):
            text = text[6:].split("/", 1)[0]
        first, sep, last = text.partition("-")
        start, end = decimal(first), decimal(last)
        if not sep or start is None or end is None or end < start:
            raise errors.RangeInvalid(f"invalid Content-Range {header[:100]!r}", status=416)
        return cls(start, end)


class ClientDisconnected(Exception):
    """The client went away in the middle of a request body; `size` is what the upload kept."""

    size = 0


# How long a request waits for another one rebuilding the same session (it would then be busy anyway).
REBUILD_WAIT = 10.0


def session_lock(upload_id: str) -> str:
    """The lock held while a session is rebuilt from storage or removed from it as expired."""
    return f"upload:{upload_id}"


def range_header(size: int) -> str:
    """The `Range` an upload answers with: `0-<last byte>` (`0-0` for an empty session, per spec)."""
    return f"0-{max(size - 1, 0)}"


class UploadService:
    def __init__(self, storage: Storage, actor: ActorHandle, locks: Locks, blobs: BlobService,
                 chunk_size: int) -> None:
        self.storage = storage
        self.actor = actor
        self.locks = locks
        self.blobs = blobs
        self.chunk_size = chunk_size
        self.limits = UploadLimits()

    def configure(self, limits: UploadLimits) -> None:
        """Session expiry and caps from the configuration (at start and on every reload)."""
        self.limits = limits
        self.actor.tell("configure", limits)

    async def start(self, namespace: str, client: str | None = None) -> str:
        """A new session, counted against `client` (who asks: an identity or an address) for the caps."""
        upload_id = str(uuid.uuid4())
        started_at = time.time()
        # Admitted before anything is stored: a refused session leaves no folder behind.
        await self.actor.call("create", namespace, upload_id, started_at, client)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)).encode()
        try:
            await self.storage.put(layout.upload_started_at(namespace, upload_id), stamp)
        except BaseException:
            self.actor.tell("forget", upload_id)
            raise
        return upload_id

    async def status(self, namespace: str, upload_id: str) -> int:
        size = await self.actor.call("status", namespace, upload_id)
        if size is not None:
            return int(size)
        return await self._stored_size(namespace, upload_id)

    async def _stored_size(self, namespace: str, upload_id: str) -> int:
        if await self.storage.stat(layout.upload_started_at(namespace, upload_id)) is None:
            raise errors.BlobUploadUnknown(f"upload {upload_id} is unknown in repository {namespace}")
        stat = await self.storage.stat(layout.upload_data(namespace, upload_id))
        return stat.size if stat else 0

    async def _lease(self, namespace: str, upload_id: str) -> Lease:
        lease: Lease | None = await self.actor.call("lease", namespace, upload_id)
        if lease is not None:
            return lease
        # Not held by this process (restart, another replica): rebuild the hash from stored bytes,
        # under the session's lock, which the expiry of sessions known only in storage also takes (a
        # session is never rebuilt from a folder being removed).
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.locks.hold(session_lock(upload_id), wait=REBUILD_WAIT))
            except TimeoutError:
                raise UploadBusy("another request is rebuilding this upload session") from None
            lease = await self.actor.call("lease", namespace, upload_id)  # rebuilt while we waited
            if lease is not None:
                return lease
            size = await self._stored_size(namespace, upload_id)
            hasher = hashlib.sha256()
            if size:
                async for chunk in self.storage.read(layout.upload_data(namespace, upload_id),
                                                     chunk_size=self.chunk_size):
                    hasher.update(chunk)
            started = await self.storage.stat(layout.upload_started_at(namespace, upload_id))
            started_at = started.modified if started else time.time()
            result: Lease = await self.actor.call("adopt", namespace, upload_id, size, hasher, started_at)
            return result

    async def _append(self, namespace: str, upload_id: str, lease: Lease, hasher: Any,
                      body: AsyncIterator[bytes] | None, content_range: ContentRange | None) -> int:
        """Stream `body` into the session, hashing it into `hasher`, and return the new size.

        Raises ClientDisconnected (after keeping every byte that arrived) when the client goes away.
        Any other failure may leave bytes and hash disagreeing: the caller then forgets the session.
        """
        if content_range is not None and content_range.start != lease.size:
            raise errors.RangeInvalid(
                f"Content-Range starts at {content_range.start} but the upload has {lease.size} bytes",
                status=416, headers={"Range": range_header(lease.size)})
        if body is None:
            if content_range is not None:  # a range covers at least one byte; none was sent
                raise errors.RangeInvalid(
                    f"Content-Range {content_range.start}-{content_range.end} came with an empty body",
                    status=416, headers={"Range": range_header(lease.size)})
            return lease.size
        loop = asyncio.get_running_loop()
        writer = await self.storage.open_append(layout.upload_data(namespace, upload_id))
        buffer = bytearray()
        # Double buffering: one chunk is written and hashed (in threads) while the next one arrives, so the
        # socket keeps flowing. At most one flush is in flight: memory stays bounded to ~2 chunks.
        pending: asyncio.Future[Any] | None = None

        async def settle() -> None:
            nonlocal pending
            if pending is not None:
                flight, pending = pending, None
                await flight

        async def flush() -> None:
            nonlocal buffer, pending
            await settle()
            data, buffer = buffer, bytearray()
            pending = asyncio.gather(writer.write(data), loop.run_in_executor(None, hasher.update, data))

        try:
            try:
                async for chunk in body:
                    buffer += chunk
                    if len(buffer) >= self.chunk_size:
                        await flush()
            except ClientDisconnected as gone:
                if buffer:
                    await flush()
                await settle()
                gone.size = writer.size
                raise
            if buffer:
                await flush()
            await settle()
            if content_range is not None and writer.size - 1 != content_range.end:
                await writer.truncate(lease.size)
                raise errors.RangeInvalid(
                    f"Content-Range ends at {content_range.end} but {writer.size - lease.size} "
                    "bytes were sent", status=416, headers={"Range": range_header(lease.size)})
            return writer.size
        finally:
            if pending is not None:  # an error mid-body: let the flush finish before the file closes
                await asyncio.gather(pending, return_exceptions=True)
            await writer.close()

    async def append(self, namespace: str, upload_id: str, body: AsyncIterator[bytes] | None,
                     content_range: ContentRange | None) -> int:
        lease = await self._lease(namespace, upload_id)
        # A chunk with a Content-Range may be rejected after it was written (wrong length): it is then
        # truncated away, so it is hashed into a copy that only replaces the session's hash on success.
        hasher = lease.hasher.copy() if content_range is not None else lease.hasher
        try:
            size = await self._append(namespace, upload_id, lease, hasher, body, content_range)
        except errors.RangeInvalid:
            self.actor.tell("release", upload_id, lease.size, lease.hasher)
            raise
        except ClientDisconnected as gone:
            # What arrived is kept and hashed: the session stays usable from its new size.
            self.actor.tell("release", upload_id, gone.size, hasher)
            raise
        except BaseException:
            # Bytes and hash may disagree: forget the session; the next request rebuilds it.
            self.actor.tell("forget", upload_id)
            raise
        self.actor.tell("release", upload_id, size, hasher)
        return size

    async def complete(self, namespace: str, upload_id: str, digest: Digest,
                       body: AsyncIterator[bytes] | None) -> None:
        """Append the final body, verify the digest, commit the blob and link it into the namespace."""
        lease = await self._lease(namespace, upload_id)
        try:
            whole: bytes | None = None
            if body is not None and lease.size == 0:
                # A monolithic PUT whose body fits in one chunk is committed straight from memory: no
                # session file is written, appended, closed and renamed.
                whole, body = await self._small_body(body)
            source: str | bytes
            if whole is not None:
                actual = await self._hash(whole, digest.algorithm)
                source = whole
            else:
                size = await self._append(namespace, upload_id, lease, lease.hasher, body, None)
                actual = await self._digest(namespace, upload_id, lease.hasher, digest.algorithm, size)
                source = layout.upload_data(namespace, upload_id) if size else b""
            if actual != digest.hex:
                await self._discard(namespace, upload_id)
                raise errors.DigestInvalid(
                    f"digest {digest} does not match the uploaded content ({digest.algorithm}:{actual})")
            async with self.locks.hold(f"blob:{digest}"):
                if not await self.blobs.exists(digest):  # else the session's bytes go with its folder
                    if isinstance(source, bytes):
                        await self.storage.put(layout.blob_data(digest), source)
                    else:
                        await self.storage.move(source, layout.blob_data(digest))
                await self.blobs.link(namespace, digest)
            await self._discard(namespace, upload_id)
        finally:
            # Completed, discarded, or failed half-way: in every case the next request (if any)
            # must look at storage again.
            self.actor.tell("forget", upload_id)

    async def _small_body(self, body: AsyncIterator[bytes]) -> tuple[bytes | None, AsyncIterator[bytes]]:
        """The whole body if it ends within one chunk, else None and an iterator over all of it.

        Bytes read before the client went away are replayed ahead of the disconnect, so the caller's
        streaming path keeps them exactly as it would have.
        """
        buffer = bytearray()
        stream = aiter(body)
        try:
            while len(buffer) <= self.chunk_size:
                try:
                    buffer += await anext(stream)
                except StopAsyncIteration:
                    return bytes(buffer), stream
        except ClientDisconnected as gone:
            return None, _replay(bytes(buffer), stream, gone)
        return None, _replay(bytes(buffer), stream, None)

    async def _hash(self, data: bytes, algorithm: str) -> str:
        hasher = hashlib.new(algorithm)
        if len(data) <= 64 * 1024:
            hasher.update(data)  # cheaper than a trip to a thread
        else:
            await asyncio.get_running_loop().run_in_executor(None, hasher.update, data)
        return hasher.hexdigest()

    async def _digest(self, namespace: str, upload_id: str, hasher: Any, algorithm: str, size: int) -> str:
        if algorithm == "sha256":
            return str(hasher.copy().hexdigest())
        other = hashlib.new(algorithm)
        if size:
            async for chunk in self.storage.read(layout.upload_data(namespace, upload_id),
                                                 chunk_size=self.chunk_size):
                other.update(chunk)
        return other.hexdigest()

    async def _discard(self, namespace: str, upload_id: str) -> None:
        await self.storage.delete_tree(layout.upload_dir(namespace, upload_id))

    async def cancel(self, namespace: str, upload_id: str) -> None:
        await self._stored_size(namespace, upload_id)  # BLOB_UPLOAD_UNKNOWN when absent
        # Exclusive: cancelling while another request writes to the session answers "busy".
        await self.actor.call("lease", namespace, upload_id)
        await self._discard(namespace, upload_id)
        self.actor.tell("forget", upload_id)


async def _replay(prefix: bytes, rest: AsyncIterator[bytes],
                  error: BaseException | None) -> AsyncIterator[bytes]:
    """`prefix`, then `error` if any, else the rest of the stream."""
    if prefix:
        yield prefix
    if error is not None:
        raise error
    async for chunk in rest:
        yield chunk
