"""Hostile input (issue 10, SPEC section 13): numbers, JSON and request bodies parsed defensively.

Every case here answered 500, or did worse, before: `n=²`, 5000-digit numbers in `n`, `Range` and
`Content-Range` (CPython refuses to convert more than 4300 digits), JSON nested 100000 deep, manifests
listing tens of thousands of descriptors, and `Content-Encoding: gzip` request bodies that aiohttp
inflated (a 1 MiB request stored 1 GiB).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import digits, errors, json_shape, manifest
from app.actors.supervisor import Actors, start_actors
from app.grammar import Digest
from app.services.blobs import BlobService
from app.services.manifests import REFERENCE_CHECKS_IN_FLIGHT, ManifestService, first_false
from app.storage import Stat
from app.storage.fs import FsStorage
from tests.helpers.oci import (
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    digest_of,
    layer_tar,
    make_image,
    push_blob,
    push_image,
)
from tests.helpers.server import RegistryProcess
from tests.test_api_bad_input import assert_envelope, assert_error, start_session, unique, with_digest

HUGE = "9" * 5000  # past CPython's int-conversion limit of 4300 digits


# --- numbers --------------------------------------------------------------------------------------
def _tagged(registry: RegistryProcess) -> str:
    name = unique()
    assert push_image(registry.session, registry.url, name, make_image(), "v1").status_code == 201
    return name


@pytest.mark.parametrize("n", ["²", "٣", "\U0001d7d7", "1²", "१०"],
                         ids=["superscript", "arabic", "math", "mixed", "devanagari"])
def test_n_with_unicode_digits_is_invalid(shared_registry: RegistryProcess, n: str) -> None:
    """`"²".isdigit()` is true and `int("²")` raises (500); `int("٣")` is 3 (a page of 3): both are
    no ASCII number, so 400 PAGINATION_NUMBER_INVALID."""
    name = _tagged(shared_registry)
    for path in (f"/v2/{name}/tags/list", "/v2/_catalog"):
        assert_error(shared_registry.get(path, params={"n": n}), 400, "PAGINATION_NUMBER_INVALID")


def test_n_with_5000_digits_is_the_largest_page(shared_registry: RegistryProcess) -> None:
    """A valid but huge n is clamped to the largest page, without converting 5000 digits (500 before)."""
    name = _tagged(shared_registry)
    for n in (HUGE, "0" * 4999 + "1"):
        response = shared_registry.get(f"/v2/{name}/tags/list", params={"n": n})
        assert response.status_code == 200, response.text
        assert response.json()["tags"] == ["v1"]
        assert shared_registry.get("/v2/_catalog", params={"n": n}).status_code == 200


def _blob(registry: RegistryProcess, data: bytes) -> str:
    name = unique()
    assert push_blob(registry.session, registry.url, name, data).status_code == 201
    return f"/v2/{name}/blobs/{digest_of(data)}"


def test_range_with_5000_digits(shared_registry: RegistryProcess) -> None:
    """RFC 9110 numbers of any length: a first-pos past the end is 416, a last-pos or suffix longer
    than the blob is clamped (206 of all of it); none is converted whole (500 before)."""
    data = b"0123456789"
    path = _blob(shared_registry, data)
    past = shared_registry.get(path, headers={"Range": f"bytes={HUGE}-"})
    assert past.status_code == 416, past.text
    assert past.headers["Content-Range"] == "bytes */10"
    assert_envelope(416, past.headers["Content-Type"], past.content)
    assert shared_registry.head(path, headers={"Range": f"bytes={HUGE}-"}).status_code == 416
    for header in (f"bytes=0-{HUGE}", f"bytes=-{HUGE}"):
        whole = shared_registry.get(path, headers={"Range": header})
        assert whole.status_code == 206, (header, whole.text)
        assert whole.content == data
        assert whole.headers["Content-Range"] == "bytes 0-9/10"
    tail = shared_registry.get(path, headers={"Range": f"bytes={'0' * 5000}7-"})
    assert (tail.status_code, tail.content) == (206, b"789")


@pytest.mark.parametrize("header", ["bytes=٣-", "bytes=²-", "bytes=0-٣", "bytes=-٣"])
def test_range_with_unicode_digits_is_ignored(shared_registry: RegistryProcess, header: str) -> None:
    """`\\d` matched `٣` and int() read it as 3 (a 206 nobody asked for), or raised on `²` (500):
    a Range of no ASCII number is unparsable, so ignored (200, the whole blob)."""
    data = b"0123456789"
    # Sent as UTF-8 (what a client would send; aiohttp decodes it back to the same characters).
    response = shared_registry.get(_blob(shared_registry, data), headers={"Range": header.encode()})
    assert response.status_code == 200, response.text
    assert response.content == data


@pytest.mark.parametrize("header", [f"{HUGE}-1", f"0-{HUGE}", f"bytes {HUGE}-1/*", "²-5", "0-²", "٣-٤",
                                    "1" * 20 + "-" + "1" * 20])
def test_content_range_with_huge_or_unicode_numbers(shared_registry: RegistryProcess, header: str) -> None:
    """416 BLOB_UPLOAD_INVALID (500 before), and the session is untouched and still completes."""
    name = unique()
    path = start_session(shared_registry, name)
    response = shared_registry.patch(path, data=b"hello", headers={"Content-Range": header.encode()})
    assert response.status_code == 416, response.text
    assert_envelope(416, response.headers["Content-Type"], response.content, "BLOB_UPLOAD_INVALID")
    assert response.headers["Range"] == "0-0"  # where the upload stands, as the spec asks of a 416
    assert shared_registry.get(path).headers["Range"] == "0-0"
    assert shared_registry.put(with_digest(path, digest_of(b"hello")), data=b"hello").status_code == 201


def test_query_strings_are_bounded(shared_registry: RegistryProcess) -> None:
    name = _tagged(shared_registry)
    last = {"last": "a" * 5000}
    assert_error(shared_registry.get(f"/v2/{name}/tags/list", params=last), 400, "TAG_INVALID")
    assert_error(shared_registry.get("/v2/_catalog", params=last), 400, "NAME_INVALID")
    long_type = shared_registry.get(f"/v2/{name}/referrers/sha256:{'0' * 64}",
                                    params={"artifactType": "a/" + "b" * 5000})
    assert_error(long_type, 400, "UNSUPPORTED")
    assert "at most 255" in long_type.json()["errors"][0]["message"]
    assert len(long_type.content) < 1000  # the value is not echoed whole


@pytest.mark.parametrize("text, expected", [("0", 0), ("007", 7), ("9" * 19, 10**19 - 1), ("9" * 20, None),
                                            ("0" * 5000 + "12", 12), ("²", None), ("٣", None), ("", None),
                                            (" 1", None), ("+1", None), ("-1", None), ("1_0", None)])
def test_decimal(text: str, expected: int | None) -> None:
    assert digits.decimal(text) == expected


def test_decimal_at_most() -> None:
    assert digits.decimal_at_most(HUGE, 1000) == 1000
    assert digits.decimal_at_most("0" * 5000 + "5", 1000) == 5
    assert digits.decimal_at_most("1001", 1000) == 1000
    assert digits.decimal_at_most("²", 1000) is None


# --- JSON nesting and size ------------------------------------------------------------------------
def _nested(depth: int) -> Any:
    value: Any = []
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return value


def _manifest_with(extra: Any, layers: int = 1) -> bytes:
    layer = {"mediaType": OCI_LAYER, "digest": "sha256:" + "0" * 64, "size": 2}
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "0" * 64,
                   "size": 2},
        "layers": [layer] * layers, "extra": extra,
    }).encode()


@pytest.mark.parametrize("opening, closing", [(b"[", b"]"), (b'{"a":', b"}")], ids=["arrays", "objects"])
def test_json_nested_100000_deep(shared_registry: RegistryProcess, opening: bytes, closing: bytes) -> None:
    """RecursionError (500) before; now 400 MANIFEST_INVALID, refused before it is parsed."""
    name = unique()
    for body in (opening * 100_000 + b"1" + closing * 100_000, opening * 100_000):
        response = shared_registry.put(f"/v2/{name}/manifests/deep", data=body,
                                       headers={"Content-Type": OCI_MANIFEST})
        assert_error(response, 400, "MANIFEST_INVALID")
        assert "deeper than 64" in response.json()["errors"][0]["message"]
    assert shared_registry.get("/v2/").status_code == 200


def test_nesting_limit_is_64(shared_registry: RegistryProcess) -> None:
    """A manifest 64 levels deep passes the JSON checks (then lacks its blobs); 65 is MANIFEST_INVALID."""
    name = unique()
    fits = shared_registry.put(f"/v2/{name}/manifests/fits", data=_manifest_with(_nested(63)),
                               headers={"Content-Type": OCI_MANIFEST})
    assert_error(fits, 400, "MANIFEST_BLOB_UNKNOWN")
    deep = shared_registry.put(f"/v2/{name}/manifests/deep", data=_manifest_with(_nested(64)),
                               headers={"Content-Type": OCI_MANIFEST})
    assert_error(deep, 400, "MANIFEST_INVALID")
    # Brackets inside strings are text, not nesting.
    text = shared_registry.put(f"/v2/{name}/manifests/text", data=_manifest_with("[{" * 1000 + '\\"]'),
                               headers={"Content-Type": OCI_MANIFEST})
    assert_error(text, 400, "MANIFEST_BLOB_UNKNOWN")


def test_recursion_error_is_caught_when_the_scan_lets_it_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shape check is the guard; RecursionError from the parser is MANIFEST_INVALID all the same."""
    monkeypatch.setattr(json_shape, "check", lambda *args: None)
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(errors.ManifestInvalid, match="deeper than 64"):
        manifest.parse(body, OCI_MANIFEST, Digest.of(body))
    assert manifest.sniff_media_type(body) == manifest.OCI_MANIFEST


def test_millions_of_empty_containers_refused_before_parsing() -> None:
    """4 MiB of `[[],[],…]` is 1.3 million lists and ~0.7 s of parsing: refused by the count first."""
    body = b"[" + b"[]," * 1_300_000 + b"[]]"
    with pytest.raises(errors.ManifestInvalid, match="JSON objects and arrays"):
        manifest.parse(body, OCI_MANIFEST, Digest.of(body))


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _containers(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_containers(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_containers(v) for v in value)
    return 0


TRICKY_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\ax\n/'), max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY_TEXT, inner, max_size=4),
    max_leaves=40)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(document=JSON_VALUES, limit=st.integers(min_value=0, max_value=8))
def test_shape_check_agrees_with_the_parsed_document(document: Any, limit: int) -> None:
    """Brackets and escaped quotes inside strings never count; depth and count are exact."""
    body = json.dumps(document).encode()
    too_deep = _depth(document) > limit
    try:
        json_shape.check(body, limit, None)
    except json_shape.TooComplex:
        assert too_deep, body
    else:
        assert not too_deep, body
    count = _containers(document)
    json_shape.check(body, 64, count)  # exactly at the limit: accepted
    if count:
        with pytest.raises(json_shape.TooComplex, match="objects and arrays"):
            json_shape.check(body, 64, count - 1)


# --- how many references, and how they are checked ------------------------------------------------
def test_manifest_over_the_reference_limit(start_registry: Callable[..., RegistryProcess]) -> None:
    """Config + layers (+ subject) beyond `max_manifest_references` is 400 naming the limit; at the
    limit it is accepted. The same for an index's children."""
    registry = start_registry(extra_config="[global]\nmax_manifest_references = 5\n")
    name = unique()
    layers = [layer_tar({"file": f"layer-{i}".encode()}) for i in range(2)]
    at_limit = make_image(layers=[layers[0], layers[1], layers[0], layers[1]])  # 1 config + 4 layers
    assert push_image(registry.session, registry.url, name, at_limit, "fits").status_code == 201
    over = make_image(layers=[layers[0], layers[1]] * 3)
    response = registry.put(f"/v2/{name}/manifests/over", data=over.manifest,
                            headers={"Content-Type": OCI_MANIFEST})
    assert_error(response, 400, "MANIFEST_INVALID")
    assert "max_manifest_references (5)" in response.json()["errors"][0]["message"]
    def index(children: int) -> bytes:
        child = {"mediaType": OCI_MANIFEST, "digest": at_limit.digest, "size": len(at_limit.manifest)}
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child] * children}
        return json.dumps(document).encode()

    over_index = registry.put(f"/v2/{name}/manifests/idx", data=index(6), headers={"Content-Type": OCI_INDEX})
    assert_error(over_index, 400, "MANIFEST_INVALID")
    assert registry.put(f"/v2/{name}/manifests/idx", data=index(5),
                        headers={"Content-Type": OCI_INDEX}).status_code == 201


def test_default_reference_limit_is_10000(shared_registry: RegistryProcess) -> None:
    """10001 layers (of 3 distinct, all pushed, so accepted before) exceed the default limit."""
    name = unique()
    blobs = [layer_tar({"file": name.encode()}) for name in "abc"]
    over = make_image(layers=[blobs[i % 3] for i in range(10_000)], config=b"{}")
    for blob in [b"{}", *blobs]:
        assert push_blob(shared_registry.session, shared_registry.url, name, blob).status_code == 201
    response = shared_registry.put(f"/v2/{name}/manifests/over", data=over.manifest,
                                   headers={"Content-Type": OCI_MANIFEST})
    assert_error(response, 400, "MANIFEST_INVALID")
    assert "10001 descriptors" in response.json()["errors"][0]["message"]
    fits = make_image(layers=[blobs[i % 3] for i in range(9_999)], config=b"{}")
    assert shared_registry.put(f"/v2/{name}/manifests/fits", data=fits.manifest,
                               headers={"Content-Type": OCI_MANIFEST}).status_code == 201


class CountingStorage(FsStorage):
    """Counts stat calls per key and the most in flight at once (each takes a little while)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.stats: Counter[str] = Counter()
        self.in_flight = 0
        self.peak = 0

    async def stat(self, key: str) -> Stat | None:
        self.stats[key] += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.0005)
            return await super().stat(key)
        finally:
            self.in_flight -= 1


async def _counting_service(root: Path) -> tuple[ManifestService, CountingStorage, Actors]:
    storage = CountingStorage(root)
    actors = start_actors()
    service = ManifestService(storage, actors.index, actors.locks, BlobService(storage), 4 * 1024 * 1024)
    return service, storage, actors


async def _store_blobs(service: ManifestService, namespace: str, blobs: list[bytes]) -> None:
    for data in blobs:
        digest = Digest.of(data)
        await service.storage.put(f"docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data", data)
        await service.blobs.link(namespace, digest)


async def test_duplicate_heavy_manifest_checks_each_digest_once(tmp_path: Path) -> None:
    """3000 layers over 20 distinct blobs: 21 link checks (not 3001), at most 8 in flight (not 3001)."""
    service, storage, actors = await _counting_service(tmp_path)
    try:
        blobs = [layer_tar({"file": f"blob-{i}".encode()}) for i in range(20)]
        image = make_image(layers=[blobs[i % 20] for i in range(3000)], config=b"{}")
        await _store_blobs(service, "ns", [b"{}", *blobs])
        storage.stats.clear()
        await service.put("ns", "v1", image.manifest, OCI_MANIFEST, [])
        links = {key: count for key, count in storage.stats.items() if "/_layers/" in key}
        assert len(links) == 21
        assert max(links.values()) == 1
        assert storage.peak <= REFERENCE_CHECKS_IN_FLIGHT
    finally:
        actors.stop()
        await storage.close()


async def test_duplicate_heavy_index_checks_each_child_once(tmp_path: Path) -> None:
    service, storage, actors = await _counting_service(tmp_path)
    try:
        child = make_image(layers=[], config=b"{}")
        await _store_blobs(service, "ns", [b"{}"])
        await service.put("ns", "child", child.manifest, OCI_MANIFEST, [])
        descriptor = {"mediaType": OCI_MANIFEST, "digest": child.digest, "size": len(child.manifest)}
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor] * 2000}
        index = json.dumps(document).encode()
        parsed = manifest.parse(index, OCI_INDEX, Digest.of(index))
        assert [str(d.digest) for d in parsed.children] == [child.digest]
        await service.put("ns", "idx", index, OCI_INDEX, [])
    finally:
        actors.stop()
        await storage.close()


async def test_first_missing_reference_in_order_is_reported(tmp_path: Path) -> None:
    """With bounded concurrency the answer is still the first missing digest as listed."""
    service, storage, actors = await _counting_service(tmp_path)
    try:
        present = [layer_tar({"file": f"present-{i}".encode()}) for i in range(40)]
        missing = [layer_tar({"file": b"missing-early"}), layer_tar({"file": b"missing-late"})]
        layers = [*present[:25], missing[0], *present[25:], missing[1]]
        await _store_blobs(service, "ns", [b"{}", *present])
        image = make_image(layers=layers, config=b"{}")
        with pytest.raises(errors.ManifestBlobUnknown) as raised:
            await service.put("ns", "v1", image.manifest, OCI_MANIFEST, [])
        assert raised.value.detail == {"digest": digest_of(missing[0])}
        # Checks stop being started after the first miss: the last one was never looked at.
        late = Digest.of(missing[1])
        assert not any(late.hex in key for key in storage.stats)
    finally:
        actors.stop()
        await storage.close()


async def test_first_false_bounds_and_orders() -> None:
    running = 0
    peak = 0
    started: list[int] = []

    def check(index: int, answer: bool) -> Callable[[], Any]:
        async def run() -> bool:
            nonlocal running, peak
            started.append(index)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.001 * (index % 3))
            running -= 1
            return answer
        return run

    checks = [check(i, i not in (30, 31)) for i in range(100)]
    assert await first_false(checks, 4) == 30
    assert peak <= 4
    assert max(started) < 40  # nothing far past the first miss was started
    assert await first_false([check(i, True) for i in range(10)], 8) is None
    assert await first_false([], 8) is None


# --- request bodies are stored as sent ------------------------------------------------------------
def gzip_bomb(inflated_mib: int) -> bytes:
    """A valid gzip stream of `inflated_mib` MiB of zeros, ~1 KiB per MiB, built without compressing
    it all: after a full flush the compressor starts afresh, so every MiB compresses to the same bytes."""
    chunk = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(inflated_mib):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (inflated_mib << 20) % 2**32)
    return header + block * inflated_mib + compressor.flush() + trailer


def _peak_rss_kib(registry: RegistryProcess) -> int:
    assert registry.process is not None
    status = Path(f"/proc/{registry.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def test_gzip_bomb_is_stored_as_sent(registry: RegistryProcess) -> None:
    """1 MiB sent with `Content-Encoding: gzip` that inflates to 1 GiB: stored as the 1 MiB sent, its
    digest (of the bytes sent) verifies, and the server's memory does not grow. aiohttp inflated it
    (digest mismatch, 1 GiB written to the upload) before."""
    bomb = gzip_bomb(1024)
    assert len(bomb) < 1_100_000
    name = unique()
    peak_before = _peak_rss_kib(registry)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    monolithic = registry.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest_of(bomb)}, data=bomb,
                               headers=headers)
    assert monolithic.status_code == 201, monolithic.text
    blob = registry.get(f"/v2/{name}/blobs/{digest_of(bomb)}")
    assert blob.headers["Content-Length"] == str(len(bomb))
    assert hashlib.sha256(blob.content).hexdigest() == hashlib.sha256(bomb).hexdigest()
    # The streamed path: a PATCH, then the PUT.
    path = start_session(registry, name)
    patched = registry.patch(path, data=bomb[:500_000], headers=headers)
    assert patched.status_code == 202, patched.text
    assert patched.headers["Range"] == "0-499999"
    final = registry.put(with_digest(path, digest_of(bomb)), data=bomb[500_000:], headers=headers)
    assert final.status_code == 201, final.text
    assert _peak_rss_kib(registry) - peak_before < 64 * 1024
    stored = list(registry.root.rglob(f"blobs/sha256/*/{digest_of(bomb).split(':')[1]}/data"))
    assert [p.stat().st_size for p in stored] == [len(bomb)]


def test_broken_gzip_body_is_just_bytes(shared_registry: RegistryProcess) -> None:
    """Bytes that are no gzip stream under `Content-Encoding: gzip`: aiohttp's inflater raised (500)."""
    name = unique()
    data = b"hello, not gzip"
    response = shared_registry.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest_of(data)},
                                    data=data, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 201, response.text
    assert shared_registry.get(f"/v2/{name}/blobs/{digest_of(data)}").content == data


def test_gzip_encoded_manifest_is_not_inflated(shared_registry: RegistryProcess) -> None:
    """A manifest sent gzip-encoded is the gzip bytes (distribution's answer: not JSON), never the
    inflated manifest stored under a digest the client did not compute."""
    name = unique()
    image = make_image()
    for blob in image.blobs.values():
        assert push_blob(shared_registry.session, shared_registry.url, name, blob).status_code == 201
    body = zlib.compress(image.manifest, wbits=31)
    response = shared_registry.put(f"/v2/{name}/manifests/v1", data=body,
                                   headers={"Content-Type": OCI_MANIFEST, "Content-Encoding": "gzip"})
    assert_error(response, 400, "MANIFEST_INVALID")
    assert shared_registry.head(f"/v2/{name}/manifests/{image.digest}").status_code == 404
