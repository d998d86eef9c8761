"""Blobs of a pull-through repository: local storage first, else one upstream fetch shared by every client.

A miss joins (or starts) the single flight for its digest. The leader task spools the upstream body to an
upload-like object while hashing it; every client reads that spool as it grows (the last byte is held
back until the digest is verified), so nobody waits for the whole download and upstream is asked once.
A verified blob is committed at once (the driver's spool commit: a rename, or an object store's
server-side copy) and linked into the namespace; a wrong digest aborts every client and stores
nothing. A Range request on a miss is forwarded upstream and not cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from app import errors
from app.actors.fetch_coordinator import DONE, FAILED, STARTING
from app.grammar import Digest
from app.locks.base import LockStore
from app.services.blobs import BlobService
from app.services.flights import Flights, Leader, Reader, error_of, raise_error
from app.services.remote import BlobStreamAborted, RemoteBlob
from app.storage import Body, NotFound, SpoolWriter, Stat, Storage, layout
from app.storage import locks as lock_names
from app.upstream import metrics
from app.upstream.errors import UpstreamInvalid, UpstreamUnavailable
from app.upstream.pool import Mirror


def read_only(mirror: Mirror) -> errors.RegistryError:
    return errors.Unsupported(
        f"repository {mirror.prefix} is a pull-through cache of {mirror.describe()}: it is read-only, "
        "push to the upstream registry instead (deleting evicts from the cache)")


def _fetch_id(flight_id: str) -> str:
    return f"fetch-{flight_id}"


# How long a replica waits for another one's fetch of the same blob before fetching it itself.
FETCH_WAIT = 3600.0

class PullThroughBlobs:
    """The blob service of one pull-through repository (same methods the handlers use on BlobService)."""

    def __init__(self, local: BlobService, storage: Storage, locks: LockStore, flights: Flights,
                 mirror: Mirror, chunk_size: int) -> None:
        self.local = local
        self.storage = storage
        self.locks = locks
        self.flights = flights
        self.mirror = mirror
        self.chunk_size = chunk_size

    # --- what the local service does as well --------------------------------------------------
    async def stat(self, namespace: str, digest: Digest) -> Stat:
        return await self.local.stat(namespace, digest)

    async def body(self, namespace: str, digest: Digest) -> Body:
        return await self.local.body(namespace, digest)

    async def unlink(self, namespace: str, digest: Digest) -> None:
        await self.local.unlink(namespace, digest)  # eviction: the next pull fetches it again

    async def mount(self, namespace: str, digest: Digest, source: str | None) -> bool:
        raise read_only(self.mirror)

    # --- misses ---------------------------------------------------------------------------------
    async def open_remote(self, namespace: str, digest: Digest, method: str,
                          range_header: str | None) -> RemoteBlob | None:
        """None when local storage serves the blob; otherwise the upstream's answer (HEAD, range, flight)."""
        prefix = self.mirror.prefix
        if await self.local.exists(digest):
            if not await self.local.is_linked(namespace, digest):
                # Stored for another namespace: visible here once upstream says this repository has it.
                if not await self._upstream_has(namespace, digest):
                    raise errors.BlobUnknown(f"blob {digest} is unknown upstream for {namespace}")
                # Linked like a mount (the GC protocol): the sweeper cannot delete it in between.
                async with self.locks.hold(lock_names.blob(digest), shared=True):
                    if not await self.local.exists(digest):
                        return await self.open_remote(namespace, digest, method, range_header)
                    await self.local.link(namespace, digest)
            metrics.hit(prefix)
            return None
        metrics.miss(prefix)
        if method == "HEAD":
            return await self._head(namespace, digest)
        if range_header:
            return await self._forward_range(namespace, digest, range_header)
        return await self._follow(namespace, digest)

    def _headers(self, digest: Digest) -> dict[str, str]:
        return {"Docker-Content-Digest": str(digest), "Accept-Ranges": "bytes", "ETag": f'"{digest}"'}

    async def _upstream_has(self, namespace: str, digest: Digest) -> bool:
        async with self.mirror.open("HEAD", namespace, f"blobs/{digest}", f"blob {digest}") as (_, response):
            return response.status == 200

    async def _head(self, namespace: str, digest: Digest) -> RemoteBlob:
        what = f"blob {digest}"
        async with self.mirror.open("HEAD", namespace, f"blobs/{digest}", what) as (client, response):
            if response.status == 404:
                raise errors.BlobUnknown(f"blob {digest} is unknown upstream ({client.name})")
            if response.status != 200:
                raise UpstreamInvalid(f"{client.name} answered {response.status} to HEAD {what}")
            return RemoteBlob(200, self._headers(digest), response.content_length)

    async def _forward_range(self, namespace: str, digest: Digest, range_header: str) -> RemoteBlob:
        what = f"blob {digest}"
        stack = contextlib.AsyncExitStack()
        client, response = await stack.enter_async_context(self.mirror.open(
            "GET", namespace, f"blobs/{digest}", what, headers={"Range": range_header}))
        try:
            if response.status == 404:
                raise errors.BlobUnknown(f"blob {digest} is unknown upstream ({client.name})")
            if response.status == 416:
                raise errors.RegistryError("requested range not satisfiable", status=416, headers={
                    "Content-Range": response.headers.get("Content-Range", "bytes */*")})
            if response.status not in (200, 206):
                raise UpstreamInvalid(f"{client.name} answered {response.status} to GET {what}")
        except BaseException:
            await stack.aclose()
            raise
        headers = self._headers(digest)
        if response.status == 206 and "Content-Range" in response.headers:
            headers["Content-Range"] = response.headers["Content-Range"]
        return RemoteBlob(response.status, headers, response.content_length,
                          self._relay(response), on_close=[stack.aclose])

    async def _relay(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.content.iter_chunked(self.chunk_size):
                metrics.upstream_bytes(self.mirror.prefix, len(chunk))
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.upstream_error(self.mirror.prefix)
            raise BlobStreamAborted(f"upstream failed mid-body: {exc}") from exc

    # --- the single flight ----------------------------------------------------------------------
    async def _follow(self, namespace: str, digest: Digest) -> RemoteBlob:
        reader = await self.flights.join(
            f"blob:{digest}", namespace,
            lambda flight_id: layout.upload_data(namespace, _fetch_id(flight_id)),
            lambda leader: self._lead(leader, namespace, digest))
        try:
            progress = await reader.wait_until(lambda p: p.state != STARTING)
            if progress.state == FAILED:
                raise_error(progress.error)
            if reader.ticket.namespace != namespace and not await self._upstream_has(namespace, digest):
                raise errors.BlobUnknown(f"blob {digest} is unknown upstream for {namespace}")
        except BaseException:
            reader.leave()
            raise

        async def leave() -> None:
            reader.leave()

        return RemoteBlob(200, self._headers(digest), progress.total, self._read(reader, namespace, digest),
                          on_close=[leave])

    async def _read(self, reader: Reader, namespace: str, digest: Digest) -> AsyncIterator[bytes]:
        """The flight's bytes as they are spooled; the last byte only once the digest was verified."""
        position = 0
        linked = reader.ticket.namespace == namespace
        try:
            while True:
                change = reader.next_change()
                progress = await reader.status()
                if progress.state == FAILED:
                    reason = progress.error.message if progress.error else "upstream fetch failed"
                    raise BlobStreamAborted(reason)
                done = progress.state == DONE
                if done and not linked:
                    await self.local.link(namespace, digest)
                    linked = True
                limit = progress.size if done else max(progress.size - 1, 0)
                spool = None if done else reader.spool()
                if position < limit and (done or spool is not None):
                    try:
                        chunks = (self.storage.read(layout.blob_data(digest), position, limit - position,
                                                    self.chunk_size) if spool is None else
                                  spool.read(position, min(limit, spool.size) - position, self.chunk_size))
                        async for chunk in chunks:
                            position += len(chunk)
                            yield chunk
                    except NotFound:
                        if done:
                            raise BlobStreamAborted("the fetched blob disappeared from storage") from None
                        await change.wait()  # committed or discarded just now: the next state says which
                    continue
                if done:
                    return
                await change.wait()
        finally:
            reader.leave()

    async def _lead(self, leader: Leader, namespace: str, digest: Digest) -> None:
        """The one upstream GET of a flight: spool, hash, verify, commit; runs detached from any client.

        This process's flight has one leader (the FetchCoordinator); across replicas sharing the lock
        store, the digest's fetch lock makes one of them fetch while the others wait, then find the blob
        committed and serve it from the store (a replica that dies mid-fetch loses the lock by ttl)."""
        async with self.locks.hold(lock_names.fetch(digest), wait=FETCH_WAIT):
            await self._lead_held(leader, namespace, digest)

    async def _lead_held(self, leader: Leader, namespace: str, digest: Digest) -> None:
        blob_key = layout.blob_data(digest)
        stored = await self.storage.stat(blob_key)
        if stored is not None:  # committed meanwhile (another flight, a push elsewhere)
            await self.local.link(namespace, digest)
            leader.started(stored.size)
            leader.finish(stored.size)
            return
        what = f"blob {digest}"
        async with self.mirror.open("GET", namespace, f"blobs/{digest}", what) as (client, response):
            if response.status == 404:
                raise errors.BlobUnknown(f"blob {digest} is unknown upstream ({client.name})")
            if response.status != 200:
                raise UpstreamInvalid(f"{client.name} answered {response.status} to GET {what}")
            await self._spool_and_commit(leader, namespace, digest, client.name, response)

    async def _spool_and_commit(self, leader: Leader, namespace: str, digest: Digest, source: str,
                                response: aiohttp.ClientResponse) -> None:
        upload_id = _fetch_id(leader.ticket.flight_id)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()
        writer: SpoolWriter | None = None
        committed = False
        try:
            # Upload-like, so a crash leaves something `scrub --uploads` (and distribution) clean up.
            await self.storage.put(layout.upload_started_at(namespace, upload_id), stamp)
            writer = await self.storage.spool_writer(leader.ticket.spool)
            leader.spooling(writer)
            leader.started(response.content_length)
            hasher = digest.hasher()
            await self._spool(leader, digest, source, response, writer, hasher)
            if hasher.hexdigest() != digest.hex:
                metrics.upstream_error(self.mirror.prefix)
                raise UpstreamInvalid(
                    f"upstream {source} sent content whose digest is "
                    f"{digest.algorithm}:{hasher.hexdigest()}, not {digest}; nothing was stored")
            size = writer.size
            async with self.locks.hold(lock_names.blob(digest)):
                if await self.storage.stat(layout.blob_data(digest)) is None:
                    await writer.commit(layout.blob_data(digest))
                    committed = True
                await self.local.link(namespace, digest)
            leader.finish(size)  # readers read the committed blob from here on
        except BaseException as exc:
            leader.fail(error_of(exc))  # before the spool goes away, so readers learn why it did
            raise
        finally:
            leader.spooling(None)
            if writer is not None and not committed:
                await writer.cancel()
            await self.storage.delete_tree(layout.upload_dir(namespace, upload_id))

    async def _spool(self, leader: Leader, digest: Digest, source: str, response: aiohttp.ClientResponse,
                     writer: SpoolWriter, hasher: Any) -> None:
        """Write the upstream body to the spool while hashing it, reporting progress after each write."""
        loop = asyncio.get_running_loop()
        content = response.content
        buffer = bytearray()
        try:
            while data := await content.readany():
                buffer += data
                # Coalesce what already arrived (up to a chunk), never wait for more before writing.
                while len(buffer) < self.chunk_size and (more := content.read_nowait(
                        self.chunk_size - len(buffer))):
                    buffer += more
                chunk = bytes(buffer)
                buffer.clear()
                await asyncio.gather(writer.write(chunk), loop.run_in_executor(None, hasher.update, chunk))
                metrics.upstream_bytes(self.mirror.prefix, len(chunk))
                leader.progress(writer.size)
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.upstream_error(self.mirror.prefix)
            raise UpstreamUnavailable(
                f"upstream {source} failed in the middle of blob {digest}: {type(exc).__name__}: {exc}",
                status=504 if isinstance(exc, TimeoutError) else 502) from exc
