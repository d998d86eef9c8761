"""Running the black-box suites on each blob store.

With `REGISTRY_TEST_STORAGE=s3` (and `REGISTRY_TEST_S3_ENDPOINT` naming a moto server) every
`RegistryProcess` that does not configure its own store gets a new bucket on that server as its
`[blob_store.s3]`; without it, its `[blob_store.fs]` folder. tests/test_conformance_storage.py runs the
API suites and the skopeo and podman interop tests that way. Tests look at what the registry stored
through `StoreView`, by key, the same on either store (never by peeking at the filesystem).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.helpers.drivers import DriverSpec

STORAGE_VARIABLE = "REGISTRY_TEST_STORAGE"
ENDPOINT_VARIABLE = "REGISTRY_TEST_S3_ENDPOINT"
KEY_PREFIX = "registry"


def mode() -> str:
    return "s3" if os.environ.get(STORAGE_VARIABLE) == "s3" else "fs"


def _new_bucket(endpoint: str) -> str:
    bucket = f"registry-{uuid.uuid4().hex[:16]}"
    # Path-style and unsigned: moto does not check signatures.
    response = requests.put(f"{endpoint}/{bucket}", timeout=10)
    response.raise_for_status()
    return bucket


def s3_section(spec: DriverSpec, table: str = "blob_store", **settings: object) -> str:
    """A `[<table>.s3]` section for the bucket of `spec` on moto, with extra `settings`."""
    from tests.helpers.moto import ACCESS_KEY_ID, REGION, SECRET_KEY
    from tests.helpers.server import toml_value

    values: dict[str, object] = {"access_key_id": ACCESS_KEY_ID, "secret_key": SECRET_KEY,
                                 "endpoint": spec.endpoint, "bucket": spec.bucket, "region": REGION,
                                 "key_prefix": spec.key_prefix, **settings}
    return f"[{table}.s3]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items())


def new_s3_store(endpoint: str) -> DriverSpec:
    """A new, empty bucket on the moto server at `endpoint`, under our test key prefix."""
    return DriverSpec("s3", endpoint=endpoint, bucket=_new_bucket(endpoint), key_prefix=KEY_PREFIX)


def blob_store(root: Path) -> tuple[str, DriverSpec]:
    """The `[blob_store.*]` section of a test server, and how a test opens the same store."""
    from tests.helpers.server import toml_value

    if mode() == "fs":
        return f"[blob_store.fs]\nroot_dir = {toml_value(root)}\n", DriverSpec("fs", root=str(root))
    spec = new_s3_store(os.environ[ENDPOINT_VARIABLE])
    return s3_section(spec), spec


class StoreView:
    """Synchronous, key-level access to a server's store for black-box tests (a fresh driver each call:
    the tests are synchronous and the server owns the store)."""

    def __init__(self, spec: DriverSpec) -> None:
        self.spec = spec

    async def _with_driver(self, action: str, key: str, data: bytes = b"") -> object:
        driver = self.spec.open()
        try:
            if action == "read":
                stat = await driver.stat(key)
                return None if stat is None else await driver.get(key)
            if action == "write":
                await driver.put(key, data)
                return None
            return [found async for found in driver.walk(key)]
        finally:
            await driver.close()

    def read(self, key: str) -> bytes | None:
        """The object at `key`, or None."""
        found = asyncio.run(self._with_driver("read", key))
        assert found is None or isinstance(found, bytes)
        return found

    def write(self, key: str, data: bytes) -> None:
        asyncio.run(self._with_driver("write", key, data))

    def keys(self, prefix: str) -> list[str]:
        """Every key below the folder `prefix` ("" for all), in lexical order."""
        found = asyncio.run(self._with_driver("keys", prefix))
        assert isinstance(found, list)
        return found


def section_of_each_kind(request: Any, tmp_path: Path) -> tuple[str, DriverSpec]:
    """For a fixture parametrized with "fs" and "s3": the `[blob_store]` section of a new store of
    that kind (fs under tmp_path; S3 on the session's moto, a new bucket, the smallest part size S3
    allows, so a session of a few MiB has a multipart upload) and the spec to read it by key."""
    if request.param == "fs":
        spec = DriverSpec("fs", root=str(tmp_path / "store"))
        return f'[blob_store.fs]\nroot_dir = "{(tmp_path / "store").as_posix()}"\n', spec
    moto = request.getfixturevalue("moto_server")
    spec = DriverSpec("s3", endpoint=moto.endpoint, bucket=request.getfixturevalue("s3_bucket"),
                      key_prefix="registry")
    return s3_section(spec, multipart_part_size="5MiB"), spec

