"""What pull-through tests run around a real upstream (CNCF distribution 2.8): a token server that signs
JWTs the way Docker Hub's does, htpasswd files, and a counting (optionally throttling, redirecting or
lying) proxy in front of distribution. Each runs an aiohttp app on its own thread and loop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import jwt
import requests
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.oci import Image, digest_of
from tests.helpers.server import free_port, toml_value


class BackgroundApp:
    """An aiohttp application served on 127.0.0.1:<free port> from a thread with its own event loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def build(self) -> web.Application:
        raise NotImplementedError

    async def on_stop(self) -> None:
        """Release what the app opened (client sessions)."""

    def start(self) -> BackgroundApp:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._runner = web.AppRunner(self.build(), access_log=None, handle_signals=False)
                loop.run_until_complete(self._runner.setup())
                loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            except BaseException as exc:
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.on_stop())
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=type(self).__name__)
        self._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


# --- htpasswd (distribution accepts bcrypt only) ---------------------------------------------------
def write_htpasswd(path: Path, username: str, password: str) -> Path:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{username}:{hashed}\n")
    return path


# --- token auth -------------------------------------------------------------------------------------
def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
                 issuer_key: ec.EllipticCurvePrivateKey, ca: bool, ip: str | None = None) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(days=1))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    path.with_suffix(".crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path.with_suffix(".crt"), path.with_suffix(".key")


def issue_tls_files(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("upstream test CA", ca_key, "upstream test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("127.0.0.1", server_key, "upstream test CA", ca_key, ca=False, ip="127.0.0.1")
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("pull-through cache", client_key, "upstream test CA", ca_key, ca=False)
    ca_path, _ = _pem(folder / "ca", ca, ca_key)
    server_cert, server_key_path = _pem(folder / "server", server, server_key)
    client_cert, client_key_path = _pem(folder / "client", client, client_key)
    return {"ca": ca_path, "server_cert": server_cert, "server_key": server_key_path,
            "client_cert": client_cert, "client_key": client_key_path}


class TokenServer(BackgroundApp):
    """Docker's token flow: `GET /token?service=&scope=` (Basic credentials when configured) → a JWT.

    distribution 2.8 (`registry/auth/token`) finds the signing key from the JWT header's `x5c` chain,
    verified against `rootcertbundle`; it then checks `iss`, `aud` (= the service), `nbf`/`exp` and
    that the `access` claim grants the requested actions. So the server has a CA (the root bundle) and a
    signing certificate issued by it, sent as `x5c`.
    """

    def __init__(self, workdir: Path, service: str = "test-upstream", issuer: str = "test-token-issuer",
                 username: str | None = None, password: str | None = None, expires_in: int | None = 300,
                 field: str = "token") -> None:
        super().__init__()
        self.service, self.issuer = service, issuer
        self.username, self.password = username, password
        self.expires_in, self.field = expires_in, field
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("pull-through test CA", ca_key, "pull-through test CA", ca_key, ca=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        leaf = _certificate("token signer", self._key, "pull-through test CA", ca_key, ca=False)
        self._x5c = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
        self.root_bundle = workdir / "token-root.pem"
        self.root_bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict[str, str]] = []  # query of every token request, in order
        self.refused = 0

    def distribution_auth(self) -> dict[str, Any]:
        return {"token": {"realm": f"{self.url}/token", "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(self.root_bundle)}}

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._token)
        return app

    def _authenticated(self, request: web.Request) -> bool | None:
        """True/False for credentials sent; None for an anonymous request."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        username, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return username == self.username and password == self.password

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        authenticated = self._authenticated(request)
        if authenticated is False or (self.username is not None and not authenticated):
            self.refused += 1
            return web.json_response({"details": "incorrect username or password"}, status=401)
        access = []
        for scope in request.query.getall("scope", []):
            kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else ("", "", "")
            if kind == "repository":
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": self.username or "anonymous", "aud": self.service,
                  "iat": now, "nbf": now - 10, "exp": now + (self.expires_in or 60), "jti": uuid.uuid4().hex,
                  "access": access}
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": self._x5c})
        body: dict[str, Any] = {self.field: token}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return web.json_response(body)


# --- a counting, throttling, redirecting or lying proxy -----------------------------------------------
class Proxy(BackgroundApp):
    """Forwards everything to `target` and counts requests by (method, path).

    `throttle`: bytes per second for blob bodies (so clients can be seen to get bytes before the
    upstream transfer ends). `lie_about`: blob digests or manifest references whose bytes are
    corrupted on the way (same length, wrong content). `redirect_blobs_to`: answer blob GETs with a
    307 to that base URL (a CDN), keeping the query. `fail_with`: answer everything with this status.
    `stall_after`: go silent for `stall_seconds` once that many bytes of a blob body were sent.
    `rate_limit`: answer everything with Docker Hub's 429 TOOMANYREQUESTS and this `Retry-After` value
    (`""`: no header); None forwards. `seen_authorization`: the Authorization header of every request,
    by path; `seen_user_agents`: the User-Agent of every request, in order.
    """

    def __init__(self, target: str, throttle: float | None = None, lie_about: set[str] | None = None,
                 redirect_blobs_to: str | None = None, fail_with: int | None = None,
                 stall_after: int | None = None, stall_seconds: float = 30.0) -> None:
        super().__init__()
        self.target = target.rstrip("/")
        self.throttle = throttle
        self.lie_about = lie_about or set()
        self.redirect_blobs_to = redirect_blobs_to
        self.fail_with = fail_with
        self.stall_after, self.stall_seconds = stall_after, stall_seconds
        self.rate_limit: str | None = None
        self.counts: Counter[tuple[str, str]] = Counter()
        self.seen_authorization: dict[str, list[str | None]] = {}
        self.seen_user_agents: list[str | None] = []
        self.bytes_sent = 0
        self.finished_at: dict[str, float] = {}  # path -> when its body was completely sent
        self._session: aiohttp.ClientSession | None = None

    def get_count(self, path: str) -> int:
        return self.counts[("GET", path)]

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def on_stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.counts[(request.method, request.path)] += 1
        self.seen_authorization.setdefault(request.path, []).append(request.headers.get("Authorization"))
        self.seen_user_agents.append(request.headers.get("User-Agent"))
        if self.rate_limit is not None:
            headers = {"Retry-After": self.rate_limit} if self.rate_limit else {}
            return web.json_response({"errors": [{"code": "TOOMANYREQUESTS", "message": (
                "You have reached your pull rate limit. You may increase the limit by authenticating "
                "and upgrading: https://www.docker.com/increase-rate-limit")}]}, status=429, headers=headers)
        if self.fail_with is not None:
            return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": "broken"}]},
                                     status=self.fail_with)
        is_blob = "/blobs/sha256:" in request.path
        if is_blob and self.redirect_blobs_to and request.method == "GET":
            return web.Response(status=307, headers={
                "Location": f"{self.redirect_blobs_to}{request.path_qs}"})
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        body = await request.read()
        async with self._session.request(request.method, self.target + request.path_qs, headers=headers,
                                         data=body or None, allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in ("transfer-encoding", "content-encoding", "connection", "date",
                                        "server"):
                    response.headers.add(name, value)
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):  # the client went away (or gave up on a stall)
                await self._relay(request, response, upstream, is_blob)
            return response

    async def _relay(self, request: web.Request, response: web.StreamResponse,
                     upstream: aiohttp.ClientResponse, is_blob: bool) -> None:
        # A lie is about a blob digest, or about a manifest reference (a tag or a digest).
        lie = request.path.rsplit("/", 1)[-1] in self.lie_about and request.method == "GET"
        started = time.monotonic()
        sent = 0
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            if is_blob and self.stall_after is not None and sent >= self.stall_after:
                self.stall_after = None  # a one-off: the next request goes through
                await asyncio.sleep(self.stall_seconds)
            if lie:
                chunk = bytes(b ^ 0xFF for b in chunk[:16]) + chunk[16:]
            await response.write(chunk)
            sent += len(chunk)
            self.bytes_sent += len(chunk)
            if self.throttle and is_blob:
                delay = started + sent / self.throttle - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        await response.write_eof()
        self.finished_at[request.path] = time.time()


def pull_through_counters(metrics_text: str, repository: str = "cache") -> dict[str, float]:
    """The registry_pull_through_*_total counters of one repository, from /metrics text."""
    found = {"hits": 0.0, "misses": 0.0, "upstream_bytes": 0.0, "upstream_errors": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            name = sample.name.removeprefix("registry_pull_through_").removesuffix("_total")
            mine = sample.labels.get("repository") == repository
            if sample.name.endswith("_total") and name in found and mine:
                found[name] = sample.value
    return found


def pull_through_config(upstreams: list[dict[str, Any]], prefix: str = "cache", namespace: str | None = None,
                        extra: str = "", open_globally: bool = True, **settings: Any) -> str:
    """TOML for one pull-through repository open to everyone, with `upstreams` in order; `settings` are
    more keys of the repository (e.g. `immutable_tags=True`). `open_globally` adds a global policy
    allowing everything (`/v2/`, `/metrics`); leave it out of a second repository's part."""
    lines = ["[global.access_policy]", "default_allow = true"] if open_globally else []
    lines.append(f'[repository."{prefix}"]')
    if namespace is not None:
        lines.append(f"namespace = {toml_value(namespace)}")
    lines += [f"{key} = {toml_value(value)}" for key, value in settings.items()]
    lines += [f'[repository."{prefix}".access_policy]', "default_allow = true"]
    for upstream in upstreams:
        lines.append(f'[[repository."{prefix}".upstream]]')
        lines += [f"{key} = {toml_value(value)}" for key, value in upstream.items()]
    return "\n".join(lines) + "\n" + extra


# --- pushing to distribution (which has no monolithic `POST ?digest=` upload) ---------------------
def upload_blob(session: requests.Session, url: str, name: str, data: bytes) -> None:
    started = session.post(f"{url}/v2/{name}/blobs/uploads/", timeout=60)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    location = location if location.startswith("http") else url + location
    done = session.put(location, params={"digest": digest_of(data)}, data=data, timeout=120,
                       headers={"Content-Type": "application/octet-stream"})
    assert done.status_code == 201, done.text


def push(session: requests.Session, url: str, name: str, image: Image, tag: str | None = None) -> None:
    for blob in image.blobs.values():
        upload_blob(session, url, name, blob)
    response = session.put(f"{url}/v2/{name}/manifests/{tag or image.digest}", data=image.manifest,
                           headers={"Content-Type": image.media_type}, timeout=60)
    assert response.status_code == 201, response.text
