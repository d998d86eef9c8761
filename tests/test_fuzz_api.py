"""Property-based fuzzing of the running server (issue 10): whatever a client sends, never a 5xx, and
every error answered on /v2 carries the OCI envelope with `Content-Type: application/json`.

Requests go over raw sockets, so nothing normalizes what is sent: query parameters (n, last, digest,
mount, from, tag, artifactType, ns), headers (Range, Content-Range, Content-Length, Content-Type,
Authorization, Accept), path segments (names, tags, digests, upload ids: raw bytes, %-encodings,
unicode, NUL, `..`) and manifest bodies (random JSON, mutated valid manifests, mutated bytes).

Derandomized and without an example database: every run (and CI) sends the same requests. Requests
aiohttp's parser refuses before any middleware (a NUL or a byte above 0x7f in the request line, a
control character in a header, a malformed Content-Length) are answered `HTTP/1.0 400` by the
connection handler (app/http/connections.py), in the envelope too.
"""

from __future__ import annotations

import base64
import json
import socket
import string
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import auth
from tests.helpers.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    digest_of,
    make_image,
    push_image,
)
from tests.helpers.server import RegistryProcess
from tests.test_api_bad_input import assert_envelope

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ZERO_DIGEST = "sha256:" + "0" * 64
MANIFEST = OCI_MANIFEST.encode()


# --- the server, and raw requests to it -----------------------------------------------------------
class Target:
    """The server and what is in it (a plain class: a failing example prints its repr, not the image)."""

    def __init__(self, registry: RegistryProcess, name: str, image: Image) -> None:
        self.registry = registry
        self.name = name
        self.image = image

    def __repr__(self) -> str:
        return f"Target({self.registry.url}, {self.name})"

    @property
    def blob(self) -> str:
        return digest_of(self.image.layers[0])

    def session(self) -> str:
        """A fresh upload session's path."""
        response = self.registry.post(f"/v2/{self.name}/blobs/uploads/")
        assert response.status_code == 202, response.text
        return urlsplit(response.headers["Location"]).path


@pytest.fixture(scope="module")
def target(shared_registry: RegistryProcess) -> Iterator[Target]:
    """A repository with an image (so reads find something) on the module's server; at the end, the
    server must have logged no failure of its own (a 5xx, or an exception outside the middleware)."""
    image = make_image()
    pushed = push_image(shared_registry.session, shared_registry.url, "fuzz/repo", image, "v1")
    assert pushed.status_code == 201, pushed.text
    yield Target(shared_registry, "fuzz/repo", image)
    failures = [line[:1500] for line in shared_registry.logs().splitlines()
                if '"unhandled error' in line or '"Unhandled exception"' in line]
    assert failures == []


@dataclass
class Answer:
    version: str
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def not_http(self) -> bool:
        """The answer to a request the HTTP parser could not parse (sent before routing)."""
        return self.version == "HTTP/1.0" and self.status == 400


def send(target: Target, method: str, path: bytes, headers: list[tuple[bytes, bytes]] | None = None,
         body: bytes = b"", content_length: bytes | None = None) -> Answer:
    lines = [method.encode() + b" " + path + b" HTTP/1.1", f"Host: {target.registry.host}".encode(),
             b"Connection: close", b"Content-Length: " + (content_length or str(len(body)).encode())]
    given_names = {name.lower() for name, _ in headers or []}
    if b"authorization" not in given_names:
        lines += [line.encode() for line in auth.header_lines(target.registry).splitlines()]
    lines += [name + b": " + value for name, value in headers or []]
    with socket.create_connection(("127.0.0.1", target.registry.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ")
    parsed = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        parsed[key.strip().lower()] = value.strip()
    return Answer(version, int(status), parsed, rest)


def check(answer: Answer, method: str, path: bytes) -> None:
    """Never a 5xx; every /v2 error with a body is the OCI envelope."""
    assert answer.status < 500, (method, path[:300], answer.status, answer.body[:500])
    if answer.status < 400 or method == "HEAD" or not (path.startswith(b"/v2") or answer.not_http):
        return
    assert_envelope(answer.status, answer.headers.get("content-type", ""), answer.body)


# --- what is sent ---------------------------------------------------------------------------------
# Numbers are where int() meets client text: ASCII, Unicode digits (`²` is "a digit" to str.isdigit), huge.
NUMBERS = st.one_of(
    st.sampled_from(["0", "1", "7", "-1", "²", "٣", "१०", "\U0001d7d7", "9" * 19, "9" * 20, "9" * 5000,
                     "0" * 5000 + "1", "1e3", "0x10", " 1", "1 ", "+1", "1.0", "1_0", ""]),
    st.integers(-10, 2**70).map(str),
    st.text(alphabet=st.one_of(st.characters(categories=("Nd", "No")), st.sampled_from("0123456789")),
            min_size=1, max_size=6),
    # CPython's int() refuses more than 4300 digits
    st.tuples(st.sampled_from("0123456789"), st.integers(4200, 4400)).map(lambda d: d[0] * d[1]))
SPECIAL = st.sampled_from(["..", "../..", "%", "%00", "\x00", "\\", "/", "//", "a/../b", "*", "é", "\u202e",
                           ZERO_DIGEST, "sha256:" + "0" * 65, "sha256:..%2f..", "sha512:" + "a" * 128,
                           "x" * 300, "x" * 5000, "library/alpine", "docker.io", "localhost:5000",
                           "a:" + "9" * 5000, "a:0", "UPPER", "v1", "latest", "application/json",
                           "application/vnd.oci.image.manifest.v1+json"])
TEXT = st.one_of(NUMBERS, SPECIAL, st.text(max_size=30),
                 st.binary(max_size=16).map(lambda data: data.decode("latin-1")))
# What each endpoint reads from its query (anything else is sent too, now and then).
PARAMETERS = {"catalog": ["n", "last"], "tags": ["n", "last", "ns"], "manifest-get": ["ns"],
              "manifest-put": ["tag", "ns"], "upload-start": ["mount", "from", "digest", "ns"],
              "upload-complete": ["digest"], "referrers": ["artifactType", "ns"], "blob": ["ns"]}
ALL_PARAMETERS = sorted({key for keys in PARAMETERS.values() for key in keys})


def _query_value(value: str, how: str) -> str:
    if how == "raw" and all(c in string.ascii_letters + string.digits + "-._~:/%" for c in value):
        return value  # unencoded, `%` included: broken %-escapes are sent as they are
    if how == "bytes":
        return "".join(f"%{b:02X}" for b in value.encode("utf-8", "surrogatepass"))
    return quote(value, safe="")


Headers = list[tuple[bytes, bytes]]


def _endpoint(target: Target, endpoint: str, data: bytes) -> tuple[str, str, bytes, Headers]:
    """Method, path, body and headers of a request that succeeds without a query."""
    name, image = target.name, target.image
    if endpoint == "catalog":
        return "GET", "/v2/_catalog", b"", []
    if endpoint == "tags":
        return "GET", f"/v2/{name}/tags/list", b"", []
    if endpoint == "manifest-get":
        return "GET", f"/v2/{name}/manifests/v1", b"", []
    if endpoint == "manifest-put":
        return "PUT", f"/v2/{name}/manifests/{image.digest}", image.manifest, [(b"Content-Type", MANIFEST)]
    if endpoint == "upload-start":
        return "POST", f"/v2/{name}/blobs/uploads/", data, []
    if endpoint == "upload-complete":
        return "PUT", target.session(), data, []
    if endpoint == "referrers":
        return "GET", f"/v2/{name}/referrers/{image.digest}", b"", []
    return "GET", f"/v2/{name}/blobs/{target.blob}", b"", []


@st.composite
def endpoint_and_query(draw: st.DrawFn) -> tuple[str, list[tuple[str, str, str]]]:
    endpoint = draw(st.sampled_from(sorted(PARAMETERS)))
    keys = st.one_of(st.sampled_from(PARAMETERS[endpoint]), st.sampled_from(ALL_PARAMETERS))
    query = draw(st.lists(st.tuples(keys, TEXT, st.sampled_from(["quote", "raw", "bytes"])), min_size=1,
                          max_size=3))
    return endpoint, query


@settings(FUZZ, max_examples=300)
@given(endpoint_query=endpoint_and_query(), with_body=st.booleans())
def test_query_parameters(target: Target, endpoint_query: tuple[str, list[tuple[str, str, str]]],
                          with_body: bool) -> None:
    endpoint, query = endpoint_query
    method, path, body, headers = _endpoint(target, endpoint, b"data" if with_body else b"")
    encoded = "&".join(f"{key}={_query_value(value, how)}" for key, value, how in query)
    full = f"{path}?{encoded}".encode("latin-1")
    check(send(target, method, full, headers, body), method, full)


@settings(FUZZ, max_examples=200)
@given(n=NUMBERS, last=st.one_of(st.none(), TEXT), catalog=st.booleans())
def test_pagination_numbers(target: Target, n: str, last: str | None, catalog: bool) -> None:
    """`n` (and `last`) of both listings: whatever the number, 200 or 400 PAGINATION_NUMBER_INVALID."""
    path = "/v2/_catalog" if catalog else f"/v2/{target.name}/tags/list"
    query = f"n={quote(n, safe='')}" + ("" if last is None else f"&last={quote(last, safe='')}")
    full = f"{path}?{query}".encode()
    answer = send(target, "GET", full)
    check(answer, "GET", full)
    assert answer.status in (200, 400), answer.body[:300]


# Mapped, so that one_of(..., HEADER_TEXT) counts it as one choice, not as its four.
HEADER_TEXT = st.one_of(
    NUMBERS.map(str.encode), SPECIAL.map(lambda t: t.encode("utf-8")),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
            max_size=40).map(lambda t: t.encode("latin-1")),
    st.binary(max_size=24).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b""))).map(bytes)
POSITION = st.one_of(NUMBERS, st.just(""))  # "": the open and suffix forms
BYTE_RANGE = st.tuples(POSITION, POSITION).map(lambda pair: f"bytes={pair[0]}-{pair[1]}".encode())
UPLOAD_RANGE = st.tuples(POSITION, POSITION).map(lambda pair: f"{pair[0]}-{pair[1]}".encode())
RANGES = st.one_of(
    BYTE_RANGE, UPLOAD_RANGE, HEADER_TEXT,
    st.tuples(st.sampled_from(["bytes=", "bytes=", "bytes=", "bytes =", "BYTES=", "items=", "bytes ", ""]),
              POSITION, st.sampled_from(["-", "-", "-", ",", "--", ""]), POSITION,
              st.sampled_from(["", "", "/*", "/5", ",0-1"]))
    .map(lambda parts: "".join(parts).encode("utf-8")))


@settings(FUZZ, max_examples=300)
@given(value=st.one_of(BYTE_RANGE, RANGES), method=st.sampled_from(["GET", "HEAD"]))
def test_range_header(target: Target, value: bytes, method: str) -> None:
    path = f"/v2/{target.name}/blobs/{target.blob}".encode()
    check(send(target, method, path, [(b"Range", value)]), method, path)


@settings(FUZZ, max_examples=300)
@given(value=st.one_of(UPLOAD_RANGE, RANGES), body=st.binary(max_size=8))
def test_content_range_header(target: Target, value: bytes, body: bytes) -> None:
    path = target.session().encode()
    check(send(target, "PATCH", path, [(b"Content-Range", value)], body), "PATCH", path)


def _content_length(value: bytes, body: bytes) -> bool:
    """False for a valid length longer than the body: the server would wait for the rest (a slow
    client, tested elsewhere). A length beyond 64 bits is the parser's 400 at once."""
    text = value.decode("latin-1").strip(" \t")
    return not (text.isascii() and text.isdigit() and len(text) <= 20 and len(body) < int(text) < 2**64)


@FUZZ
@given(value=st.one_of(HEADER_TEXT, st.integers(0, 2**80).map(lambda n: str(n).encode())),
       kind=st.sampled_from(["manifest", "patch"]))
def test_content_length_header(target: Target, value: bytes, kind: str) -> None:
    body = target.image.manifest if kind == "manifest" else b"some bytes"
    if not _content_length(value, body):
        return
    path = (f"/v2/{target.name}/manifests/cl" if kind == "manifest" else target.session()).encode()
    method = "PUT" if kind == "manifest" else "PATCH"
    check(send(target, method, path, [(b"Content-Type", MANIFEST)], body, content_length=value), method, path)


CONTENT_TYPES = st.sampled_from([OCI_MANIFEST, OCI_INDEX, f"{OCI_MANIFEST}; charset=utf-8",
                                 f"{OCI_MANIFEST};", ";", "application/", "*/*"]).map(str.encode)


@FUZZ
@given(value=st.one_of(HEADER_TEXT, CONTENT_TYPES), index=st.booleans())
def test_content_type_header(target: Target, value: bytes, index: bool) -> None:
    body = (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode() if index
            else target.image.manifest)
    path = f"/v2/{target.name}/manifests/ct".encode()
    check(send(target, "PUT", path, [(b"Content-Type", value)], body), "PUT", path)


AUTHORIZATION = st.one_of(
    HEADER_TEXT,
    st.tuples(st.sampled_from([b"Basic ", b"Bearer ", b"basic ", b"Digest ", b"Basic", b""]),
              st.one_of(HEADER_TEXT, st.binary(max_size=40).map(base64.b64encode),
                        st.sampled_from([b"a.b.c", b"eyJhbGciOiJub25lIn0.e30.", b"..", b"=" * 10])))
    .map(lambda parts: parts[0] + parts[1]))


@FUZZ
@given(value=AUTHORIZATION, endpoint=st.sampled_from(["/v2/", "/v2/_catalog", "tags", "manifest", "/token"]))
def test_authorization_header(target: Target, value: bytes, endpoint: str) -> None:
    path = {"tags": f"/v2/{target.name}/tags/list",
            "manifest": f"/v2/{target.name}/manifests/v1"}.get(endpoint, endpoint).encode()
    check(send(target, "GET", path, [(b"Authorization", value)]), "GET", path)


@FUZZ
@given(value=HEADER_TEXT, method=st.sampled_from(["GET", "HEAD"]))
def test_accept_header(target: Target, value: bytes, method: str) -> None:
    path = f"/v2/{target.name}/manifests/v1".encode()
    check(send(target, method, path, [(b"Accept", value)]), method, path)


CODINGS = st.sampled_from([b"gzip", b"deflate", b"br", b"zstd", b"x-gzip", b"gzip, gzip", b"identity",
                           b"compress"])
ENCODED = st.tuples(st.binary(max_size=64), st.sampled_from([31, 15, -15])).map(
    lambda plain: zlib.compress(plain[0], wbits=plain[1]))  # gzip, zlib and raw deflate streams


@FUZZ
@given(encoding=st.one_of(CODINGS, CODINGS.map(bytes.upper), HEADER_TEXT),
       body=st.one_of(st.binary(max_size=64), ENCODED),
       kind=st.sampled_from(["manifest", "patch", "post"]))
def test_content_encoding_header(target: Target, encoding: bytes, body: bytes, kind: str) -> None:
    """Bodies are stored as sent whatever they claim to be encoded with (aiohttp inflated them: a 500
    for bytes that are no such stream)."""
    method, path = {
        "manifest": ("PUT", f"/v2/{target.name}/manifests/encoded"),
        "patch": ("PATCH", target.session() if kind == "patch" else ""),
        "post": ("POST", f"/v2/{target.name}/blobs/uploads/?digest={digest_of(body)}"),
    }[kind]
    answer = send(target, method, path.encode(), [(b"Content-Encoding", encoding),
                                                  (b"Content-Type", MANIFEST)], body)
    check(answer, method, path.encode())
    if kind == "post" and not answer.not_http:
        assert answer.status == 201, answer.body  # the digest of the bytes sent verifies


SEGMENT = st.one_of(
    st.sampled_from([b"..", b".", b"%2e%2e", b"%2E%2E", b"%2f", b"%2F", b"%5c", b"\\", b"%00", b"\x00",
                     b"a%00b", b"%ff", b"%", b"%zz", b"%C3%A9", "é".encode(), ZERO_DIGEST.encode(),
                     b"sha256%3A" + b"0" * 64, b"x" * 300, b"UPPER", b"a..b", b"-lead", b"_a", b"a__b", b"~",
                     b"a;b", b"a?b", b"a#b", b"*", b"v1", b"fuzz", b"repo", b"uploads", b"blobs",
                     b"manifests"]),
    st.binary(max_size=12).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b"")),
    st.text(max_size=12).map(lambda text: quote(text, safe="").encode()),
    st.text(alphabet=string.ascii_lowercase + string.digits + "._-/", max_size=24).map(str.encode),
    st.text(max_size=8).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
SHAPES = ["/v2/{a}/tags/list", "/v2/{a}/manifests/{b}", "/v2/{a}/blobs/{b}", "/v2/{a}/blobs/uploads/",
          "/v2/{a}/blobs/uploads/{b}", "/v2/{a}/referrers/{b}", "/v2/{a}/{b}", "/v2/{a}", "/{a}/{b}",
          "/v2/fuzz/repo/manifests/{a}", "/v2/fuzz/repo/blobs/{a}", "/v2/fuzz/repo/blobs/uploads/{a}",
          "/v2/fuzz/repo/referrers/{a}", "/v2/_catalog{a}"]


@FUZZ
@given(shape=st.sampled_from(SHAPES), a=st.lists(SEGMENT, min_size=1, max_size=3), b=SEGMENT,
       method=st.sampled_from(["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"]), manifest_body=st.booleans())
def test_path_segments(target: Target, shape: str, a: list[bytes], b: bytes, method: str,
                       manifest_body: bool) -> None:
    path = shape.encode().replace(b"{a}", b"/".join(a)).replace(b"{b}", b)
    body = target.image.manifest if manifest_body and method in ("PUT", "PATCH", "POST") else b""
    headers = [(b"Content-Type", MANIFEST)] if body else []
    check(send(target, method, path.replace(b" ", b"%20"), headers, body), method, path)


@FUZZ
@given(path=st.binary(max_size=60).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b"")),
       method=st.sampled_from(["GET", "PUT", "DELETE", "OPTIONS", "BREW", "get"]))
def test_raw_targets(target: Target, path: bytes, method: str) -> None:
    full = b"/v2/" + path
    check(send(target, method, full), method, full)


# --- manifest bodies ------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | SPECIAL,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30)
MEDIA_TYPES = st.sampled_from([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST,
                               "application/vnd.docker.distribution.manifest.v1+prettyjws",
                               "application/json", "", "text/plain; charset=utf-8", f"{OCI_MANIFEST}; x=y"])


def _put_manifest(target: Target, body: bytes, media_type: str, by_digest: bool) -> None:
    reference = digest_of(body) if by_digest else "fuzzed"
    path = f"/v2/{target.name}/manifests/{reference}".encode()
    headers = [(b"Content-Type", media_type.encode())] if media_type else []
    check(send(target, "PUT", path, headers, body), "PUT", path)


def _nested(depth: int, opening: bytes, closing: bytes, balanced: bool) -> bytes:
    """Nesting written as bytes (json.dumps itself recurses, and stops near 1000 levels)."""
    return opening * depth + (b"1" + closing * depth if balanced else b"")


BODIES = st.one_of(
    JSON_VALUES.map(lambda document: json.dumps(document).encode()),
    st.builds(_nested, st.integers(1, 200_000), st.sampled_from([b"[", b'{"a":', b'[{"a":']),
              st.sampled_from([b"]", b"}", b"}]"]), st.booleans()),
    st.binary(max_size=64))


@FUZZ
@given(body=BODIES, media_type=MEDIA_TYPES, by_digest=st.booleans())
def test_random_json_manifests(target: Target, body: bytes, media_type: str, by_digest: bool) -> None:
    _put_manifest(target, body, media_type, by_digest)


FIELDS = ["schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "annotations",
          "artifactType", "config.digest", "config.size", "config.mediaType", "config.urls", "layers.0",
          "layers.0.digest", "layers.0.size", "layers.0.mediaType", "layers.0.urls", "layers.0.annotations",
          "subject.digest"]


def _mutate(document: dict[str, Any], field: str, value: Any, delete: bool) -> None:
    *parents, last = field.split(".")
    node: Any = document
    for part in parents:
        if isinstance(node, list):
            if not node:
                return
            node = node[int(part) % len(node)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            return
    if isinstance(node, list):
        if node and last.isdigit():
            if delete:
                node.pop(int(last) % len(node))
            else:
                node[int(last) % len(node)] = value
        return
    if delete:
        node.pop(last, None)
    else:
        node[last] = value


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(FIELDS), JSON_VALUES, st.booleans()), min_size=1,
                          max_size=4),
       copies=st.sampled_from([0, 1, 2, 500, 10_001]), media_type=MEDIA_TYPES, by_digest=st.booleans())
def test_mutated_manifests(target: Target, mutations: list[tuple[str, Any, bool]], copies: int,
                           media_type: str, by_digest: bool) -> None:
    document = json.loads(target.image.manifest)
    document["layers"] = document["layers"] * copies
    for field, value, delete in mutations:
        _mutate(document, field, value, delete)
    _put_manifest(target, json.dumps(document).encode(), media_type, by_digest)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 3), st.binary(max_size=4)), min_size=1,
                      max_size=6),
       media_type=MEDIA_TYPES)
def test_mutated_manifest_bytes(target: Target, edits: list[tuple[int, int, bytes]], media_type: str) -> None:
    body = bytearray(target.image.manifest)
    for position, removed, inserted in edits:
        at = position % (len(body) + 1)
        body[at:at + removed] = inserted
    _put_manifest(target, bytes(body), media_type, by_digest=False)
