"""The S3 driver's connection: one aioboto3 client per driver, its failures, and its keys.

The client is opened lazily on the running loop (aioboto3 is imported only then) and kept open: one
connection pool for the driver's life. Every failure that means "S3 is not answering" (refused, timed
out, 5xx or throttled after botocore's retries) becomes a `StorageError` naming the bucket and the
endpoint; a missing key or upload becomes `NotFound`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from app.config import S3StoreConfig
from app.storage.base import NotFound, StorageError

_MISSING = {"NoSuchKey", "NotFound", "404", "NoSuchUpload"}

T = TypeVar("T")


class RequestBody(io.BytesIO):
    """A request body that notes when the HTTP client last took bytes from it.

    aiohttp sends a BytesIO in 64 KiB writes that each wait for the socket (a bytes body goes in one
    write: the transport then keeps a copy of what the socket did not take, and aiohttp warns above
    1 MiB). It has no write timeout, though: a store that stops reading (a stopped process, a closed
    TCP window) would hold the request for ever, so `S3Connection.sending` watches its progress.
    """

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        super().__init__(data)  # shares a bytes object; copies a bytearray (the caller then drops it)
        self.length = len(data)
        self.touched = time.monotonic()

    def read(self, size: int | None = -1, /) -> bytes:
        self.touched = time.monotonic()
        return super().read(size)


Data = bytes | bytearray | memoryview | RequestBody


def request_body(data: Data) -> RequestBody:
    if isinstance(data, RequestBody):
        data.seek(0)
        return data
    return RequestBody(data)


class S3Connection:
    def __init__(self, config: S3StoreConfig) -> None:
        self.config = config
        self.bucket = config.bucket
        self.endpoint = config.endpoint or f"AWS S3 ({config.region})"
        self._prefix = config.key_prefix.strip("/")
        self._client: Any = None
        self._client_context: Any = None
        self._client_lock: asyncio.Lock | None = None

    async def client(self) -> Any:
        """The driver's one S3 client, created on first use on the running loop and kept open."""
        if self._client is not None:
            return self._client
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._client is None:
                import aioboto3  # here, not at import: only a configured S3 store pays for it
                from aiobotocore.config import AioConfig

                config = AioConfig(
                    connect_timeout=self.config.connect_timeout, read_timeout=self.config.read_timeout,
                    retries={"mode": "standard", "max_attempts": self.config.max_attempts},
                    # Emulators and MinIO serve buckets below the endpoint, not as subdomains.
                    s3={"addressing_style": "path" if self.config.endpoint else "auto"},
                    signature_version="s3v4",  # presigned URLs too (botocore would sign those v2)
                    # botocore >= 1.36 adds CRC32 checksums to every upload by default, which several
                    # S3-compatible stores refuse; only the operations that require one send it.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    max_pool_connections=max(32, 2 * self.config.multipart_copy_jobs))
                context = aioboto3.Session().client(
                    "s3", endpoint_url=self.config.endpoint, region_name=self.config.region,
                    aws_access_key_id=self.config.access_key_id,
                    aws_secret_access_key=self.config.secret_key, config=config)
                self._client = await context.__aenter__()
                self._client_context = context
        return self._client

    async def close(self) -> None:
        context, self._client_context, self._client = self._client_context, None, None
        if context is not None:
            await context.__aexit__(None, None, None)

    @contextlib.contextmanager
    def errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Translate what botocore and aiohttp raise into the storage layer's two errors."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, action, key) from exc
        except NotFound:
            raise
        except (BotoCoreError, aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise StorageError(f"S3 is unavailable: {action} {key or ''} in bucket {self.bucket!r} at "
                               f"{self.endpoint} failed: {exc}") from exc

    def _client_error(self, exc: ClientError, action: str, key: str | None) -> Exception:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _MISSING:
            return NotFound(f"{key}: no such {'upload' if code == 'NoSuchUpload' else 'object'}")
        if code == "NoSuchBucket":
            return StorageError(f"S3 bucket {self.bucket!r} does not exist at {self.endpoint}")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return StorageError(f"S3 {action} {key or ''} in bucket {self.bucket!r} at {self.endpoint} "
                            f"failed: {status} {code} {error.get('Message', '')}".rstrip())

    async def sending(self, body: RequestBody, request: Coroutine[Any, Any, T]) -> T:
        """`request`, failed with a timeout when its body stops moving (see RequestBody); once the body
        is sent, the response is aiohttp's read timeout's."""
        allowance = self.config.connect_timeout + self.config.read_timeout
        task = asyncio.ensure_future(request)
        try:
            while True:
                done, _ = await asyncio.wait([task], timeout=allowance / 4)
                if done:
                    return task.result()
                if body.tell() < body.length and time.monotonic() - body.touched > allowance:
                    raise TimeoutError(f"the request body moved no byte for {allowance:.0f}s")
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    @staticmethod
    def error_code(exc: BaseException) -> str:
        cause = exc.__cause__ if isinstance(exc, StorageError | NotFound) else exc
        if isinstance(cause, ClientError):
            return str(cause.response.get("Error", {}).get("Code", ""))
        return ""

    # --- keys ---------------------------------------------------------------------------------------
    def full_key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _folder(self, prefix: str) -> str:
        """The S3 prefix of everything below the layout folder `prefix` (with the trailing slash)."""
        prefix = prefix.strip("/")
        return self.full_key(prefix) + "/" if prefix else (self._prefix + "/" if self._prefix else "")

    def layout_key(self, full: str) -> str:
        return full[len(self._prefix) + 1:] if self._prefix else full

