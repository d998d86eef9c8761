"""The S3 driver's writers of large objects and its sendable body (see app/storage/base.py).

An upload session at `<key>` is one S3 multipart upload at `<key>` plus two small objects beside it:

- `<key>.state` (JSON): the multipart UploadId, the parts completed so far (number, ETag, size), the
  session's size, the caller's checkpoint and the name of the tail object. It is written last by every
  `close()`, so it switches from one consistent session to the next at once;
- `<key>.tail-<random>`: the bytes after the last full part (fewer than `multipart_part_size`; S3
  refuses smaller parts except the last). Each close writes a new name, so the state never points at a
  half-written tail; the old one is deleted after the state moved on.

Resuming reads the state (and, when more is written, the tail): never what was uploaded. Memory is at
most one part being filled plus one part being uploaded. A commit completes the multipart upload at
the session key and copies it server-side to the destination (S3 cannot complete an upload under
another key), or, when no part was uploaded, PUTs the buffered bytes there: the destination only ever
sees a whole object.

What a SIGKILL leaves, window by window: parts uploaded but no new state: the next close uploads those
part numbers again (S3 keeps the last upload of a number, and completion names the parts it keeps); a
tail written but no new state: an unreferenced tail, removed with the session; a commit killed after
completing the upload: the whole content at the session key, which a retried commit recognises by its
ETag (derived from the parts' ETags) and copies; after the state was deleted: the session is cleanly
unknown, its leftovers go with its folder. A new multipart upload is recorded in the state as soon as it
exists, so `purge_temporary` can tell a live session's upload from an orphan.

A spool writes each full part as an object of its own (`<key>.part-<n>`) and keeps the part being
filled in memory, so readers follow it while it grows (S3 cannot read an unfinished multipart upload);
its commit assembles the part objects into the destination by server-side part copies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from app.storage.base import Body, NotFound, SpoolWriter, StorageError, UploadWriter

# s3.py imports this module only inside its methods, so this is no import cycle.
from app.storage.s3 import MAX_PARTS, Piece, RequestBody, S3Storage

STATE_SUFFIX = ".state"
TAIL_SUFFIX = ".tail-"
PART_SUFFIX = ".part-"
STATE_VERSION = 1


class S3Body(Body):
    def __init__(self, storage: S3Storage, key: str, size: int, etag: str | None) -> None:
        self._storage = storage
        self._key = key
        self._etag = etag
        self.size = size

    def read(self, offset: int = 0, length: int | None = None,
             chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        # Pinned to the version that was measured: a replaced object fails the read, never mixes.
        return self._storage.read(self._key, offset, length, chunk_size, if_match=self._etag)

    async def redirect_url(self) -> str | None:
        if not self._storage.config.redirect:
            return None
        return await self._storage.presigned_url(self._key)


@dataclass(frozen=True)
class SessionState:
    """What `<key>.state` holds: the session as the last `close()` left it."""

    upload_id: str | None = None
    parts: list[tuple[int, str, int]] = field(default_factory=list)  # (number, ETag, size)
    size: int = 0
    checkpoint: bytes | None = None
    tail: str | None = None  # the layout key of the tail object; None when the tail is empty

    def encode(self) -> bytes:
        return json.dumps({
            "version": STATE_VERSION, "upload_id": self.upload_id, "parts": [list(p) for p in self.parts],
            "size": self.size, "tail": self.tail,
            "checkpoint": None if self.checkpoint is None else base64.b64encode(self.checkpoint).decode(),
        }).encode()

    @classmethod
    def decode(cls, data: bytes) -> SessionState:
        saved = json.loads(data)
        if saved.get("version") != STATE_VERSION:
            raise ValueError(f"state version {saved.get('version')!r}")
        parts = [(int(number), str(etag), int(size)) for number, etag, size in saved["parts"]]
        checkpoint = saved.get("checkpoint")
        state = cls(upload_id=saved.get("upload_id"), parts=parts, size=int(saved["size"]),
                    checkpoint=None if checkpoint is None else base64.b64decode(checkpoint),
                    tail=saved.get("tail"))
        if state.size < state.uploaded or (state.parts and state.upload_id is None):
            raise ValueError("inconsistent sizes")
        return state

    @property
    def uploaded(self) -> int:
        return sum(size for _number, _etag, size in self.parts)


async def read_state(storage: S3Storage, key: str) -> SessionState | None:
    try:
        data = await storage.get(key + STATE_SUFFIX)
    except NotFound:
        return None
    try:
        return SessionState.decode(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise NotFound(f"{key}: the upload session's state is unreadable ({exc})") from None


async def session_upload_id(storage: S3Storage, key: str) -> str | None:
    """The multipart upload the session at `key` refers to, if `key` is a session's."""
    with contextlib.suppress(NotFound):
        state = await read_state(storage, key)
        return state.upload_id if state else None
    return None


async def open_upload_writer(storage: S3Storage, key: str, create: bool) -> S3UploadWriter:
    if not create:
        state = await read_state(storage, key)
        if state is None:
            raise NotFound(f"{key}: no upload session")
        return S3UploadWriter(storage, key, state)
    try:
        previous = await read_state(storage, key)
    except NotFound:  # unreadable: its upload (if any) is an orphan for purge_temporary and scrub
        previous = SessionState()
    if previous is not None:  # (a new session, the common case, costs one GET and one PUT)
        await remove_session(storage, key, previous.upload_id)
    fresh = SessionState()
    # Stored at once, as a new file is on a filesystem: the empty session resumes by key.
    await storage.put_object(key + STATE_SUFFIX, fresh.encode())
    return S3UploadWriter(storage, key, fresh)


async def remove_session(storage: S3Storage, key: str, upload_id: str | None) -> None:
    """The state first (from then on the session is cleanly unknown), then its upload and objects."""
    await storage.delete_objects([key + STATE_SUFFIX])
    if upload_id is not None:
        await storage.abort_multipart_upload(key, upload_id)
    leftovers = [key]  # a completed upload's object, when a commit was cut short
    async for page in storage.list_pages("LIST", Prefix=storage.full_key(key + TAIL_SUFFIX)):
        leftovers.extend(storage.layout_key(entry["Key"]) for entry in page.get("Contents", ()))
    await storage.delete_objects(leftovers)


def multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 gives a completed multipart upload: MD5 of the parts' MD5s, dash, part count."""
    digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in part_etags)
    return f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(part_etags)}"'


class S3UploadWriter(UploadWriter):
    def __init__(self, storage: S3Storage, key: str, stored: SessionState) -> None:
        self.key = key
        self._storage = storage
        self._stored = stored
        self._upload_id = stored.upload_id
        self._parts = list(stored.parts)
        # The bytes after the last part; None while they are only in the stored tail (fetched on the
        # first write, close or commit that needs them: a status request never reads them).
        self._buffer: bytearray | None = None
        self._buffer_stored = True  # the buffer is what the stored tail object holds
        self._inflight: asyncio.Task[tuple[int, str, int]] | None = None
        self._failed = False
        self._finished = False
        self.size = stored.size
        self.checkpoint = stored.checkpoint

    async def _load_buffer(self) -> bytearray:
        if self._buffer is None:
            data = b""
            if self._stored.tail is not None:
                try:
                    data = await self._storage.get(self._stored.tail)
                except NotFound:
                    raise NotFound(f"{self.key}: the upload session's tail object is gone") from None
            if len(data) != self._stored.size - self._stored.uploaded:
                raise NotFound(f"{self.key}: the upload session's tail does not match its state")
            self._buffer = bytearray(data)
        return self._buffer

    def _check_usable(self) -> None:
        if self._finished:
            raise NotFound(f"{self.key}: the upload session was committed or cancelled")
        if self._failed:
            raise StorageError(f"{self.key}: a part of this upload failed; resume the session from storage")

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check_usable()
        if not len(data):
            return
        buffer = await self._load_buffer()
        buffer += data
        self.size += len(data)
        self._buffer_stored = False
        try:
            while len(self._buffer or b"") >= self._storage.part_size:
                await self._send_full_part()
        except BaseException:
            self._failed = True  # bytes counted may be in no part: never close over them
            raise

    async def _send_full_part(self) -> None:
        await self._await_inflight()  # at most one part in flight, one being filled
        full = self._buffer
        assert full is not None
        self._buffer = full[self._storage.part_size:]
        del full[self._storage.part_size:]
        part, size = RequestBody(full), len(full)
        del full
        number = self._next_part_number()
        upload_id = await self._ensure_upload()

        async def send() -> tuple[int, str, int]:
            return number, await self._storage.upload_part(self.key, upload_id, number, part), size

        self._inflight = asyncio.create_task(send())

    def _next_part_number(self) -> int:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageError(f"{self.key}: larger than S3's {MAX_PARTS} parts of "
                               f"{self._storage.part_size} bytes (raise multipart_part_size)")
        return number

    async def _await_inflight(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            try:
                part = await task
            except BaseException:
                self._failed = True  # a hole in the parts: never close over it
                raise
            self._parts.append(part)

    async def _ensure_upload(self) -> str:
        if self._upload_id is None:
            self._upload_id = await self._storage.create_multipart_upload(self.key)
            # Recorded at once with the durable content unchanged: a live session's upload is never
            # one that purge_temporary takes for an orphan.
            stored = replace(self._stored, upload_id=self._upload_id)
            await self._storage.put_object(self.key + STATE_SUFFIX, stored.encode())
            self._stored = stored
        return self._upload_id

    async def close(self, checkpoint: bytes | None = None) -> None:
        self._check_usable()
        await self._await_inflight()
        unchanged = self._buffer_stored and self._parts == self._stored.parts
        if unchanged and checkpoint == self._stored.checkpoint:
            return  # nothing new since the state was written
        tail = self._stored.tail
        if not self._buffer_stored:
            assert self._buffer is not None
            tail = f"{self.key}{TAIL_SUFFIX}{uuid.uuid4().hex}" if self._buffer else None
            if tail is not None:
                await self._storage.put_object(tail, self._buffer)
        state = SessionState(self._upload_id, list(self._parts), self.size, checkpoint, tail)
        await self._storage.put_object(self.key + STATE_SUFFIX, state.encode())
        previous, self._stored = self._stored, state
        self._buffer_stored = True
        self.checkpoint = checkpoint
        if previous.tail is not None and previous.tail != tail:
            with contextlib.suppress(StorageError):  # an unreferenced tail goes with the session anyway
                await self._storage.delete_objects([previous.tail])

    async def commit(self, destination: str) -> None:
        self._check_usable()
        await self._await_inflight()
        buffer = await self._load_buffer()
        if not self._parts:
            await self._storage.put_object(destination, buffer)  # a small blob: one PUT, no multipart
            if self._upload_id is not None:  # created for a part that never made it into the state
                await self._storage.abort_multipart_upload(self.key, self._upload_id)
        else:
            await self._complete(buffer)
            await self._storage.copy(self.key, destination)
        self._finished = True
        await remove_session(self._storage, self.key, None)

    async def _complete(self, buffer: bytearray) -> None:
        assert self._upload_id is not None
        parts: list[dict[str, Any]] = [{"PartNumber": number, "ETag": etag}
                                       for number, etag, _size in self._parts]
        found = await self._storage.head(self.key)
        if found is not None:
            # A commit cut short after completing: the whole content is at the session key already,
            # and S3 derived its ETag from the parts', which tells whether it is this content.
            tail_etags = [f'"{hashlib.md5(buffer, usedforsecurity=False).hexdigest()}"'] if buffer else []
            if found.get("ETag") == multipart_etag([etag for _n, etag, _s in self._parts] + tail_etags):
                return
            raise NotFound(f"{self.key}: the upload session was completed with other content")
        if buffer:
            number = self._next_part_number()
            parts.append({"PartNumber": number,
                          "ETag": await self._storage.upload_part(self.key, self._upload_id, number, buffer)})
        await self._storage.complete_multipart_upload(self.key, self._upload_id, parts)

    async def cancel(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.wait([self._inflight])  # its end, whatever it was (the upload is aborted)
            self._inflight = None
        if self._finished:
            return  # committed: nothing of the session is left
        self._finished = True
        await remove_session(self._storage, self.key, self._upload_id)


class S3SpoolWriter(SpoolWriter):
    def __init__(self, storage: S3Storage, key: str) -> None:
        self._storage = storage
        self._key = key
        self._stored_parts = 0  # full parts stored as objects
        self._buffer = bytearray()  # the part being filled
        # The part being stored (also the request's body): readers are served from it until its
        # object exists.
        self._inflight: tuple[RequestBody, asyncio.Task[Any]] | None = None
        self.size = 0

    def _part_key(self, index: int) -> str:
        return f"{self._key}{PART_SUFFIX}{index + 1}"

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        self.size += len(data)
        size = self._storage.part_size
        while len(self._buffer) >= size:
            await self._await_inflight()
            if self._stored_parts + 1 >= MAX_PARTS:
                raise StorageError(f"{self._key}: larger than S3's {MAX_PARTS} parts of {size} bytes")
            full = self._buffer
            self._buffer = full[size:]
            del full[size:]
            part = RequestBody(full)
            del full
            task = asyncio.create_task(self._storage.put_object(self._part_key(self._stored_parts), part))
            self._inflight = (part, task)

    async def _await_inflight(self) -> None:
        if self._inflight is not None:
            await self._inflight[1]
            self._inflight = None
            self._stored_parts += 1

    async def read(self, offset: int, length: int, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        size = self._storage.part_size
        position, end = offset, offset + length
        if end > self.size:
            raise ValueError(f"{self._key}: reading to {end}, beyond the {self.size} bytes written")
        while position < end:
            # Where the bytes are is decided again for every chunk: a part may be stored meanwhile.
            index, within = divmod(position, size)
            if index < self._stored_parts:
                async for chunk in self._storage.read(self._part_key(index), within,
                                                      min(end, (index + 1) * size) - position, chunk_size):
                    position += len(chunk)
                    yield chunk
                continue
            want = min(chunk_size, end - position)
            if self._inflight is not None and index == self._stored_parts:
                # Its buffer, not its read position (which the request moves).
                with self._inflight[0].getbuffer() as view:
                    chunk = bytes(view[within:within + want])
            else:
                within = position - (self._stored_parts + (self._inflight is not None)) * size
                chunk = bytes(self._buffer[within:within + want])
            if not chunk:
                raise StorageError(f"{self._key}: spool lost bytes at {position}")
            position += len(chunk)
            yield chunk

    async def commit(self, destination: str) -> None:
        await self._await_inflight()
        if self._stored_parts == 0:
            await self._storage.put_object(destination, self._buffer)
        elif self._stored_parts == 1 and not self._buffer:
            await self._storage.copy_object(self._part_key(0), destination)
        else:
            size = self._storage.part_size
            pieces: list[Piece] = [(self._part_key(index), 0, size - 1)
                                   for index in range(self._stored_parts)]
            if self._buffer:
                pieces.append(self._buffer)
            await self._storage.assemble(destination, pieces)
        await self._remove()

    async def cancel(self) -> None:
        if self._inflight is not None:
            await asyncio.wait([self._inflight[1]])  # let it end, so that its object is deleted below
            self._inflight = None
            self._stored_parts += 1
        await self._remove()

    async def _remove(self) -> None:
        self._buffer = bytearray()
        await self._storage.delete_objects([self._part_key(index) for index in range(self._stored_parts)])
        self._stored_parts = 0
        self.size = 0

