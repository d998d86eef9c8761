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
from app.actors.uploads import Lease, UploadBusy, UploadLimits
from app.digits import decimal
from app.grammar import Digest
from app.locks.base import Lease as LockLease
from app.locks.base import LockStore, LockTimeout
from app.services.blobs import BlobService
from app.storage import NotFound, Storage, UploadWriter, layout, resumable_hash
from app.storage import locks as lock_names


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


# How long a request waits for another request (of any process sharing the lock store) to release a
# session: a client that resumes right after a disconnect sees the stored size before the request it
# abandoned has finished, and must not get a 409 for it.
LEASE_WAIT = 5.0


def session_lock(upload_id: str) -> str:
    """The lock held while a request writes to, completes or cancels a session, and while an expired
    one is removed: in the lock store, so that no two processes sharing the store write to one
    session at once."""
    return lock_names.upload(upload_id)


def range_header(size: int) -> str:
    """The `Range` an upload answers with: `0-<last byte>` (`0-0` for an empty session, per spec)."""
    return f"0-{max(size - 1, 0)}"


class UploadService:
    def __init__(self, storage: Storage, actor: ActorHandle, locks: LockStore, blobs: BlobService,
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
        """The stored size: another process sharing the store may have appended since this one last
        wrote to the session, so what this process remembers is not an answer."""
        await self.actor.call("status", namespace, upload_id)  # refuses a session being expired
        return await self._stored_size(namespace, upload_id)

    async def _stored_size(self, namespace: str, upload_id: str) -> int:
        if await self.storage.stat(layout.upload_started_at(namespace, upload_id)) is None:
            raise errors.BlobUploadUnknown(f"upload {upload_id} is unknown in repository {namespace}")
        try:
            return (await self.storage.upload_writer(layout.upload_data(namespace, upload_id))).size
        except NotFound:
            return 0  # started, nothing written yet

    async def _writer(self, namespace: str, upload_id: str) -> UploadWriter:
        """The session's data as stored (by any process); a session nothing was written to yet starts
        empty."""
        key = layout.upload_data(namespace, upload_id)
        try:
            return await self.storage.upload_writer(key)
        except NotFound:
            if await self.storage.stat(layout.upload_started_at(namespace, upload_id)) is None:
                raise errors.BlobUploadUnknown(
                    f"upload {upload_id} is unknown in repository {namespace}") from None
            return await self.storage.upload_writer(key, create=True)

    async def _lease(self, namespace: str, upload_id: str) -> tuple[Lease, UploadWriter]:
        """Exclusive use of the session, and its writer. Storage is the truth: when the size this
        process remembers is not the stored one (another replica appended meanwhile), or it remembers
        nothing (a restart), the running hash comes from the stored checkpoint, else from the bytes."""
        # The caller holds the session's lock, so no other request of this process leases it now (the
        # previous holder's release was told to the actor before that lock was given up).
        lease: Lease | None = await self.actor.call("lease", namespace, upload_id)
        if lease is not None:
            try:
                writer = await self._writer(namespace, upload_id)
            except BaseException:
                self.actor.tell("release", upload_id, lease.size, lease.hasher)
                raise
            if writer.size == lease.size:
                return lease, writer
            self.actor.tell("forget", upload_id)  # stale: rebuilt below, as after a restart
        # Rebuilt under the session's lock, which the caller holds (the expiry of sessions known only
        # in storage takes it too: a session is never rebuilt from a folder being removed).
        writer = await self._writer(namespace, upload_id)
        hasher = await self._rebuilt_hash(namespace, upload_id, writer)
        started = await self.storage.stat(layout.upload_started_at(namespace, upload_id))
        started_at = started.modified if started else time.time()
        result: Lease = await self.actor.call("adopt", namespace, upload_id, writer.size, hasher,
                                              started_at)
        return result, writer

    @contextlib.asynccontextmanager
    async def _exclusive(self, upload_id: str) -> AsyncIterator[LockLease]:
        """The session's lock for one request: across every process that shares the lock store."""
        try:
            async with self.locks.hold(session_lock(upload_id), wait=LEASE_WAIT) as held:
                yield held
        except LockTimeout:
            raise UploadBusy() from None

    async def _rebuilt_hash(self, namespace: str, upload_id: str, writer: UploadWriter) -> Any:
        if writer.checkpoint is not None:
            restored = resumable_hash.ResumableSha256.restore(writer.checkpoint)
            if restored is not None:
                return restored
        hasher = resumable_hash.new_sha256()
        if writer.size:
            try:
                async for chunk in self.storage.read(layout.upload_data(namespace, upload_id),
                                                     chunk_size=self.chunk_size):
                    hasher.update(chunk)
            except NotFound:  # an object store cannot read back what it has not completed
                raise errors.BlobUploadUnknown(
                    f"upload {upload_id} cannot be resumed here (its hash state is not stored); "
                    "start a new upload") from None
        return hasher

    async def _append(self, lease: Lease, writer: UploadWriter, hasher: Any,
                      body: AsyncIterator[bytes] | None, content_range: ContentRange | None,
                      content_length: int | None) -> int:
        """Stream `body` into the session, hashing it into `hasher`, make it durable with the hash's
        checkpoint, and return the new size.

        A Content-Range is checked before a byte is written (its start against the stored size, its
        length against Content-Length): nothing is ever written that would have to be taken back.
        Raises ClientDisconnected (after keeping every byte that arrived) when the client goes away.
        Any other failure may leave bytes and hash disagreeing: the caller then forgets the session.
        """
        if content_range is not None:
            problem = None
            if content_range.start != lease.size:
                problem = (f"Content-Range starts at {content_range.start} but the upload has "
                           f"{lease.size} bytes")
            elif body is None:  # a range covers at least one byte; none was sent
                problem = f"Content-Range {content_range.start}-{content_range.end} came with an empty body"
            elif content_length is None:
                problem = "a Content-Range needs a Content-Length"
            elif content_length != content_range.end - content_range.start + 1:
                problem = (f"Content-Range {content_range.start}-{content_range.end} does not match "
                           f"Content-Length {content_length}")
            if problem is not None:
                raise errors.RangeInvalid(problem, status=416, headers={"Range": range_header(lease.size)})
        if body is None:
            return lease.size
        loop = asyncio.get_running_loop()
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
                await writer.close(resumable_hash.checkpoint_of(hasher))
                gone.size = writer.size
                raise
            if buffer:
                await flush()
            await settle()
            return writer.size
        finally:
            if pending is not None:  # an error mid-body: let the flush finish first
                await asyncio.gather(pending, return_exceptions=True)

    async def append(self, namespace: str, upload_id: str, body: AsyncIterator[bytes] | None,
                     content_range: ContentRange | None, content_length: int | None = None) -> int:
        async with self._exclusive(upload_id) as held, _removed_underneath(upload_id):
            return await self._append_held(namespace, upload_id, body, content_range, content_length, held)

    async def _append_held(self, namespace: str, upload_id: str, body: AsyncIterator[bytes] | None,
                           content_range: ContentRange | None, content_length: int | None,
                           held: LockLease) -> int:
        lease, writer = await self._lease(namespace, upload_id)
        hasher = lease.hasher
        try:
            size = await self._append(lease, writer, hasher, body, content_range, content_length)
            held.check()  # a lost lock: another process may own the session now; keep no checkpoint
            await writer.close(resumable_hash.checkpoint_of(hasher))
        except errors.RangeInvalid:
            self.actor.tell("release", upload_id, lease.size, lease.hasher)  # nothing was written
            raise
        except ClientDisconnected as gone:
            # What arrived is kept and hashed: the session stays usable from its new size.
            self.actor.tell("release", upload_id, gone.size, hasher)
            raise
        except BaseException:
            # Bytes and hash may disagree: forget the session; the next request rebuilds it from storage.
            self.actor.tell("forget", upload_id)
            raise
        self.actor.tell("release", upload_id, size, hasher)
        return size

    async def complete(self, namespace: str, upload_id: str, digest: Digest,
                       body: AsyncIterator[bytes] | None) -> None:
        """Append the final body, verify the digest, commit the blob and link it into the namespace."""
        async with self._exclusive(upload_id) as held, _removed_underneath(upload_id):
            await self._complete_held(namespace, upload_id, digest, body, held)

    async def _complete_held(self, namespace: str, upload_id: str, digest: Digest,
                             body: AsyncIterator[bytes] | None, held: LockLease) -> None:
        lease, writer = await self._lease(namespace, upload_id)
        try:
            whole: bytes | None = None
            if body is not None and lease.size == 0:
                # A monolithic PUT whose body fits in one chunk is committed straight from memory: no
                # session data is written, appended, closed and renamed.
                whole, body = await self._small_body(body)
            if whole is not None:
                if await self._hash(whole, digest.algorithm) != digest.hex:
                    await self._discard(namespace, upload_id, writer)
                    raise self._mismatch(digest)
                held.check()
                async with self.locks.hold(lock_names.blob(digest)):
                    if not await self.blobs.exists(digest):
                        await self.storage.put(layout.blob_data(digest), whole)
                    await self.blobs.link(namespace, digest)
                await self._discard(namespace, upload_id, writer)
                return
            await self._append(lease, writer, lease.hasher, body, None, None)
            held.check()  # never commit what another process may be writing to now
            await self._commit(namespace, upload_id, writer, lease.hasher, digest)
        finally:
            # Completed, discarded, or failed half-way: in every case the next request (if any)
            # must look at storage again.
            self.actor.tell("forget", upload_id)

    async def _commit(self, namespace: str, upload_id: str, writer: UploadWriter, hasher: Any,
                      digest: Digest) -> None:
        """Verify, then make the session's data the blob's (unless another upload stored it first)."""
        if digest.algorithm == "sha256":
            if hasher.copy().hexdigest() != digest.hex:
                await self._discard(namespace, upload_id, writer)
                raise self._mismatch(digest)
            async with self.locks.hold(lock_names.blob(digest)):
                if not await self.blobs.exists(digest):
                    await writer.commit(layout.blob_data(digest))
                await self.blobs.link(namespace, digest)
            await self._discard(namespace, upload_id, writer)
            return
        # Another algorithm (sha512): the bytes are read back once, from a key of the session's own
        # (an object store cannot read a session it has not completed), and only then become the blob.
        staged = layout.upload_verify(namespace, upload_id)
        await writer.commit(staged)
        other = hashlib.new(digest.algorithm)
        async for chunk in self.storage.read(staged, chunk_size=self.chunk_size):
            other.update(chunk)
        if other.hexdigest() != digest.hex:
            await self._discard(namespace, upload_id, None)
            raise self._mismatch(digest)
        async with self.locks.hold(lock_names.blob(digest)):
            if not await self.blobs.exists(digest):
                await self.storage.copy(staged, layout.blob_data(digest))
            await self.blobs.link(namespace, digest)
        await self._discard(namespace, upload_id, None)

    @staticmethod
    def _mismatch(digest: Digest) -> errors.RegistryError:
        return errors.DigestInvalid(f"digest {digest} does not match the uploaded content")

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

    async def _discard(self, namespace: str, upload_id: str, writer: UploadWriter | None) -> None:
        """Remove the session: the writer's data (an object store's multipart upload too), then the
        session's folder."""
        if writer is not None:
            await writer.cancel()
        await self.storage.delete_tree(layout.upload_dir(namespace, upload_id))

    async def discard_stored(self, namespace: str, upload_id: str) -> None:
        """Remove a session known only in storage (expired; no request holds it)."""
        try:
            writer = await self.storage.upload_writer(layout.upload_data(namespace, upload_id))
        except NotFound:
            writer = None
        await self._discard(namespace, upload_id, writer)

    async def cancel(self, namespace: str, upload_id: str) -> None:
        await self._stored_size(namespace, upload_id)  # BLOB_UPLOAD_UNKNOWN when absent
        # Exclusive: cancelling while another request writes to the session answers "busy".
        async with self._exclusive(upload_id):
            await self.actor.call("lease", namespace, upload_id)
            await self.discard_stored(namespace, upload_id)
            self.actor.tell("forget", upload_id)


@contextlib.asynccontextmanager
async def _removed_underneath(upload_id: str) -> AsyncIterator[None]:
    """A session whose data vanished while a request wrote to it (removed by a process that does not
    share this one's locks, e.g. scrub on an S3 store without Redis) is unknown, not a server error."""
    try:
        yield
    except NotFound:
        raise errors.BlobUploadUnknown(
            f"upload {upload_id} was removed while this request was writing to it") from None


async def _replay(prefix: bytes, rest: AsyncIterator[bytes],
                  error: BaseException | None) -> AsyncIterator[bytes]:
    """`prefix`, then `error` if any, else the rest of the stream."""
    if prefix:
        yield prefix
    if error is not None:
        raise error
    async for chunk in rest:
        yield chunk
