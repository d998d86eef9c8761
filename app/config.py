"""Configuration: TOML files merged in order, `REGISTRY__…` environment overrides, zero-config defaults.

Errors name the file (or environment variable), the key path and the reason. Unknown keys are errors.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from app.grammar import NAME_RE
from app.registry_hosts import parse_host
from app.units import ByteSize, Duration

APP_NAME = "registry"
ENV_PREFIX = "REGISTRY__"


class ConfigError(Exception):
    """An invalid configuration, with a message naming file, key and reason."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TLSConfig(Section):
    server_certificate_bundle: Path
    server_private_key: Path
    client_ca_bundle: Path | None = None
    client_auth: Literal["optional", "required"] = "optional"


class ServerConfig(Section):
    bind_address: str = "127.0.0.1"
    port: int = Field(5000, ge=0, le=65535)
    query_timeout: Duration = 3600.0
    query_timeout_grace_period: Duration = 60.0
    streaming_chunk_size: ByteSize = Field(1024 * 1024, ge=4096)
    tls: TLSConfig | None = None


class AccessPolicy(Section):
    default_allow: bool = False
    rules: list[str] = []

    @field_validator("rules")
    @classmethod
    def _rules_compile(cls, rules: list[str]) -> list[str]:
        if not rules:
            return rules
        from app.cel_policy import check_rules  # cel-python is imported only when rules exist

        return check_rules(rules)


def _regexes(patterns: list[str]) -> list[str]:
    from app.immutable import compile_exclusions

    compile_exclusions(patterns)
    return patterns


class RetentionPolicy(Section):
    rules: list[str] = []

    @field_validator("rules")
    @classmethod
    def _rules_compile(cls, rules: list[str]) -> list[str]:
        if not rules:
            return rules
        from app.retention import check_rules  # cel-python is imported only when rules exist

        return check_rules(rules)


class GCConfig(Section):
    """Online garbage collection in the server (docs/gc.md)."""

    enabled: bool = True
    interval: Duration = Field(3600.0, gt=0)
    # Blobs (and untagged manifests) written or linked more recently than this are never collected.
    grace_period: Duration = Field(3600.0, ge=0)
    delete_untagged: bool = False
    # Mark and report what would be deleted (the log line, /metrics), delete nothing.
    dry_run: bool = False


class LimitsConfig(Section):
    """What keeps one client (or a few stalled ones) from starving the others (docs/security.md)."""

    # Concurrent requests one client (address) may have in progress; beyond it: 429 at once.
    max_requests_per_client: int = Field(48, ge=1)
    # Concurrent body transfers (uploads and downloads) of one client (identity, else address).
    max_transfers_per_client: int = Field(64, ge=1)
    # A new connection, or one between two requests, must send complete request headers within this.
    header_read_timeout: Duration = Field(30.0, gt=0)
    # An idle keep-alive connection is closed after this.
    keepalive_timeout: Duration = Field(75.0, gt=0)
    # A request or response body that moves no byte for this long is cut.
    body_inactivity_timeout: Duration = Field(60.0, gt=0)
    # A body transfer slower than this (bytes per second, judged over each `transfer_rate_window`) is
    # cut; 0 disables the check.
    min_transfer_rate: ByteSize = 1024
    transfer_rate_window: Duration = Field(30.0, gt=0)


class GlobalConfig(Section):
    max_concurrent_requests: int = Field(64, ge=1)
    max_concurrent_cache_jobs: int = Field(4, ge=1)
    update_pull_time: bool = True
    # How often recorded pull times are written to storage (and at shutdown): app/services/pull_times.py.
    pull_time_flush_interval: Duration = Field(10.0, gt=0)
    max_manifest_size: ByteSize = Field(4 * 1024 * 1024, ge=1024)
    # Descriptors (config, layers, index children, subject) one manifest may list (app/manifest.py).
    max_manifest_references: int = Field(10000, ge=1)
    access_policy: AccessPolicy | None = None
    retention_policy: RetentionPolicy | None = None
    immutable_tags: bool = False
    immutable_tags_exclusions: list[str] = []
    authorization_webhook: str | None = None
    trusted_proxies: list[str] = []
    # Upload sessions: one untouched for `upload_timeout` expires (its data is removed); caps on open
    # sessions, in all and per client (the identity, else the address): beyond them 429.
    upload_timeout: Duration = Field(86400.0, gt=0)
    max_upload_sessions: int = Field(10000, ge=1)
    max_upload_sessions_per_client: int = Field(1000, ge=1)
    # Namespaces the manifest index caches (least recently used ones are dropped, then read again).
    index_max_namespaces: int = Field(1000, ge=1)
    gc: GCConfig = Field(default_factory=GCConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP network (CIDR)") from None
        return value

    _exclusions = field_validator("immutable_tags_exclusions")(_regexes)


class RedisLockConfig(Section):
    """The Redis lock store (app/locks/redis.py, docs/locking.md)."""

    url: str
    # How long a lock outlives a holder that stops renewing it (renewed every ttl/3 while held).
    ttl: Duration = Field(10.0, gt=0)
    key_prefix: str = ""
    # A command that fails to reach Redis is retried every `retry_delay_ms` (jittered), at most
    # `max_retries` times and never longer than `timeout`; a waiter polls a busy lock as often.
    max_retries: int = Field(100, ge=0)
    retry_delay_ms: int = Field(10, ge=1)
    # Connect and command timeout of the Redis client: an unreachable Redis answers 503 this fast.
    timeout: Duration = Field(1.0, gt=0)


class FsStoreConfig(Section):
    root_dir: Path
    sync_to_disk: bool = False
    redis: RedisLockConfig | None = None


class S3StoreConfig(Section):
    """An S3 bucket (AWS or an S3-compatible store); keys live under `<key_prefix>/` (docs/storage.md)."""

    access_key_id: str
    secret_key: str
    # An S3-compatible endpoint (MinIO, Ceph, an emulator): addressed path-style (`<endpoint>/<bucket>`).
    endpoint: str | None = None
    bucket: str
    region: str = "us-east-1"
    # distribution's `rootdirectory`: one bucket and root can be served by either registry.
    key_prefix: str = ""
    # S3's limits: every part but the last is 5 MiB to 5 GiB; CopyObject copies up to 5 GiB.
    multipart_part_size: ByteSize = Field(10 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3)
    multipart_copy_threshold: ByteSize = Field(5 * 1024**3, le=5 * 1024**3)
    multipart_copy_chunk_size: ByteSize = Field(100 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3)
    multipart_copy_jobs: int = Field(4, ge=1)
    # Blob GETs answered 307 to a presigned URL of the object (valid 20 minutes): clients fetch from S3.
    redirect: bool = False
    # Per request attempt; botocore's "standard" retries (connection errors, 5xx, throttling) with
    # backoff, then the store answers 503.
    connect_timeout: Duration = Field(10.0, gt=0)
    read_timeout: Duration = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=10)
    redis: RedisLockConfig | None = None


class StoreConfig(Section):
    fs: FsStoreConfig | None = None
    s3: S3StoreConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StoreConfig:
        if (self.fs is None) == (self.s3 is None):
            raise ValueError("configure exactly one of `fs` or `s3`")
        return self


class RedisCacheConfig(Section):
    url: str
    key_prefix: str = ""


class CacheConfig(Section):
    redis: RedisCacheConfig | None = None


class IdentityConfig(Section):
    username: str
    password: str
    groups: list[str] = []

    @field_validator("password")
    @classmethod
    def _argon2_hash(cls, value: str) -> str:
        from argon2 import extract_parameters
        from argon2.exceptions import InvalidHashError

        try:
            extract_parameters(value)
        except (InvalidHashError, ValueError):
            raise ValueError("not an Argon2 PHC hash (create one with `registry argon`)") from None
        return value


class OIDCConfig(Section):
    provider: Literal["github", "generic"]
    issuer: str | None = None
    jwks_uri: str | None = None
    jwks_refresh_interval: Duration = 3600.0
    required_audience: str | None = None
    clock_skew_tolerance: Duration = 60.0
    allowed_algorithms: list[str] = ["RS256", "ES256"]
    # The claim whose value (a string or a list of strings) gives `identity.groups`.
    groups_claim: str | None = None

    @model_validator(mode="after")
    def _usable(self) -> OIDCConfig:
        from app.auth.oidc import KEY_TYPES

        if self.provider == "generic" and not self.issuer:
            raise ValueError("a generic provider needs `issuer`")
        refused = [a for a in self.allowed_algorithms if a not in KEY_TYPES]
        if refused or not self.allowed_algorithms:
            raise ValueError(f"allowed_algorithms: {', '.join(refused) or 'empty'}: only asymmetric "
                             f"algorithms can be verified with a JWKS ({', '.join(KEY_TYPES)})")
        return self


class BasicAuthConfig(Section):
    username: str
    password: str


class WebhookConfig(Section):
    url: str
    timeout_ms: int = 1000
    bearer_token: str | None = None
    basic_auth: BasicAuthConfig | None = None
    client_certificate_bundle: Path | None = None
    client_private_key: Path | None = None
    server_ca_bundle: Path | None = None
    forward_headers: list[str] = []
    cache_ttl: Duration = 60.0

    @model_validator(mode="after")
    def _one_credential(self) -> WebhookConfig:
        if self.bearer_token and self.basic_auth is not None:
            raise ValueError("configure either `bearer_token` or `basic_auth`, not both")
        if self.timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        return self


class TokenConfig(Section):
    """The built-in token service (Docker registry token authentication, SPEC 5.1)."""

    # None: on whenever identities or OIDC providers are configured. False keeps plain Basic challenges.
    enabled: bool | None = None
    # Absolute URL of the token endpoint; by default `<scheme>://<host>/token` of each request.
    realm: str | None = None
    service: str = "simple-registry"
    issuer: str = "simple-registry"
    expires_in: Duration = Field(300.0, ge=60.0)
    refresh_token_expires_in: Duration = Field(30 * 86400.0, ge=60.0)
    # PEM private key (EC P-256 → ES256, RSA → RS256). None: one generated once and kept in the store.
    key_file: Path | None = None

    @field_validator("realm")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or '"' in value:
            raise ValueError(f"{value!r} is not an absolute http(s) URL")
        return value

    @field_validator("service", "issuer")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not value or '"' in value or "\\" in value or any(ord(c) < 0x20 for c in value):
            raise ValueError("must be a non-empty string without quotes, backslashes or control characters")
        return value


class AuthConfig(Section):
    identity: dict[str, IdentityConfig] = {}
    oidc: dict[str, OIDCConfig] = {}
    webhook: dict[str, WebhookConfig] = {}
    token: TokenConfig = Field(default_factory=TokenConfig)
    # Identity ids every access policy allows everything (`registry server --admin` adds `admin`).
    superusers: list[str] = []

    @property
    def token_service(self) -> bool:
        """Whether the token service issues tokens and registry endpoints challenge with Bearer."""
        if self.token.enabled is not None:
            return self.token.enabled
        return bool(self.identity or self.oidc)


class UpstreamSettings(Section):
    """What an upstream registry takes besides its URL (`upstream` entries and `mirror_hosts` tables)."""

    max_redirect: int = 5
    server_ca_bundle: Path | None = None
    client_certificate: Path | None = None
    client_private_key: Path | None = None
    username: str | None = None
    password: str | None = None
    connect_timeout: Duration = 30.0
    read_timeout: Duration = 300.0
    manifest_check_interval: Duration = 60.0
    # Some registries only serve clients they recognise (e.g. "containerd/1.6.8").
    user_agent: str | None = None

    @field_validator("user_agent")
    @classmethod
    def _header_value(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)):
            raise ValueError("must be a non-empty header value without control characters")
        return value


class UpstreamConfig(UpstreamSettings):
    url: str


class MirrorHostConfig(UpstreamSettings):
    """One registry host of a `mirror_any_registry` repository; `url` defaults to `https://<host>`
    (Docker Hub's `https://registry-1.docker.io` for docker.io)."""

    url: str | None = None


class RepositoryConfig(Section):
    access_policy: AccessPolicy | None = None
    retention_policy: RetentionPolicy | None = None
    immutable_tags: bool | None = None
    immutable_tags_exclusions: list[str] = []
    authorization_webhook: str | None = None
    namespace: str | None = None
    upstream: list[UpstreamConfig] = []
    # `<prefix>/<host>/<image>` is `<image>` at `<host>` (`host:port` written `host__port`), for any host.
    mirror_any_registry: bool = False
    mirror_hosts: dict[str, MirrorHostConfig] = {}

    _exclusions = field_validator("immutable_tags_exclusions")(_regexes)

    @field_validator("mirror_hosts")
    @classmethod
    def _canonical_hosts(cls, value: dict[str, MirrorHostConfig]) -> dict[str, MirrorHostConfig]:
        """Keys as requests name them (`host:port`, lower case, Docker Hub's aliases as `docker.io`)."""
        canonical: dict[str, MirrorHostConfig] = {}
        for key, host in value.items():
            name = parse_host(key)
            if name in canonical:
                raise ValueError(f"{key!r} names the same registry host as another key ({name})")
            canonical[name] = host
        return canonical

    @model_validator(mode="after")
    def _one_mirror_mode(self) -> RepositoryConfig:
        if self.mirror_any_registry and self.upstream:
            raise ValueError("`mirror_any_registry` and `upstream` are mutually exclusive: a repository "
                             "either mirrors the registries its upstream entries name, or any registry")
        if self.mirror_any_registry and self.namespace is not None:
            raise ValueError("`namespace` does not apply with `mirror_any_registry`: every containerd "
                             "`?ns=<host>` no other repository claims is served as <prefix>/<host>/...")
        if self.mirror_hosts and not self.mirror_any_registry:
            raise ValueError("`mirror_hosts` needs `mirror_any_registry = true`")
        return self

    @property
    def pulls_through(self) -> bool:
        """A read-only cache of other registries (configured upstreams, or any registry)."""
        return bool(self.upstream) or self.mirror_any_registry


class TracingConfig(Section):
    """OpenTelemetry traces exported over OTLP/HTTP (protobuf); see docs/observability.md."""

    # The collector's OTLP/HTTP address, e.g. `http://127.0.0.1:4318` (`/v1/traces` is added when the
    # URL has no path), or the full traces URL.
    endpoint: str
    sampling_rate: float = Field(1.0, ge=0.0, le=1.0)
    service_name: str = Field("simple-registry", min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL of an OTLP/HTTP collector")
        return value


class ObservabilityConfig(Section):
    tracing: TracingConfig | None = None


def default_data_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


class Config(BaseSettings):
    """The whole configuration. Field names are seed 004's canonical keys."""

    model_config = SettingsConfigDict(
        extra="forbid",
        populate_by_name=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    global_: GlobalConfig = Field(default_factory=GlobalConfig, alias="global")
    blob_store: StoreConfig = Field(default_factory=lambda: StoreConfig(
        fs=FsStoreConfig(root_dir=default_data_dir())))
    metadata_store: StoreConfig | None = None
    cache: CacheConfig = Field(default_factory=CacheConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    repository: dict[str, RepositoryConfig] = {}
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `load()` folds the files and the `REGISTRY__…` environment into the init arguments itself, so
        # that every error names where a value came from (pydantic-settings' env source cannot map
        # the `global` alias).
        return (init_settings,)

    @field_validator("repository")
    @classmethod
    def _prefixes(cls, value: dict[str, RepositoryConfig]) -> dict[str, RepositoryConfig]:
        seen: set[str] = set()
        for prefix in value:
            normalized = prefix.strip("/")
            if normalized != prefix or not NAME_RE.fullmatch(prefix):
                raise ValueError(f"repository prefix {prefix!r} is not a valid repository name")
            if normalized in seen:
                raise ValueError(f"repository prefix {prefix!r} is configured twice")
            seen.add(normalized)
        return value

    @model_validator(mode="after")
    def _auth_references(self) -> Config:
        """Webhook names must exist; a username must name one identity."""
        names = [("global", self.global_.authorization_webhook)]
        names += [(f'repository."{p}"', r.authorization_webhook) for p, r in self.repository.items()]
        for where, name in names:
            if name and name not in self.auth.webhook:
                raise ValueError(f"{where}.authorization_webhook: no [auth.webhook.{name}] is configured")
        for superuser in self.auth.superusers:
            if superuser not in self.auth.identity:
                raise ValueError(f"auth.superusers: no [auth.identity.{superuser}] is configured")
        owners: dict[str, str] = {}
        for identity_id, identity in self.auth.identity.items():
            if identity.username in owners:
                raise ValueError(f"auth.identity.{identity_id}.username: {identity.username!r} is also the "
                                 f"username of auth.identity.{owners[identity.username]}")
            owners[identity.username] = identity_id
        return self

    @property
    def effective_metadata_store(self) -> StoreConfig:
        return self.metadata_store or self.blob_store

    @property
    def zero_config_access(self) -> bool:
        """True when nothing about access is configured: every action is allowed for everyone."""
        return (
            self.global_.access_policy is None
            and not self.repository
            and not self.auth.identity
            and not self.auth.oidc
            and not self.global_.authorization_webhook
        )


# Older key names (seeds 000/001) accepted as aliases of the canonical ones.
_TOP_LEVEL_ALIASES = {"storage": "blob_store", "cache_store": "cache"}


def _normalize_aliases(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    for old, new in _TOP_LEVEL_ALIASES.items():
        if old in data:
            if new in data:
                raise ConfigError(f"`{old}` and `{new}` are the same section; keep only `{new}`")
            data[new] = data.pop(old)
    if "identity" in data:
        auth = dict(data.get("auth", {}))
        auth.setdefault("identity", {}).update(data.pop("identity"))
        data["auth"] = auth
    for old in ("locking", "lock_store"):
        if old in data:
            redis = data.pop(old).get("redis")
            if redis is not None:
                store = dict(data.get("metadata_store") or data.get("blob_store") or {})
                if not store:
                    store = {"fs": {"root_dir": str(default_data_dir())}}
                backend = "s3" if "s3" in store else "fs"
                store[backend] = {**store[backend], "redis": redis}
                data["metadata_store"] = store
    return data


def _lock_store_of_the_blob_store(data: dict[str, Any]) -> None:
    """`[metadata_store.<fs|s3>.redis]` alone (no other key of that backend) puts the lock store on the
    blob store's own backend: the metadata store is the blob store, with that Redis."""
    metadata, blobs = data.get("metadata_store"), data.get("blob_store")
    if not isinstance(metadata, dict) or not isinstance(blobs, dict) or len(metadata) != 1:
        return
    backend, settings = next(iter(metadata.items()))
    if isinstance(settings, dict) and set(settings) == {"redis"} and isinstance(blobs.get(backend), dict):
        metadata[backend] = {**{k: v for k, v in blobs[backend].items() if k != "redis"}, **settings}


def _merge(base: dict[str, Any], overlay: dict[str, Any], origin: dict[tuple[str, ...], str],
           source: str, path: tuple[str, ...] = ()) -> None:
    """Tables merged key by key; scalars and arrays replaced. Records which file set each key."""
    for key, value in overlay.items():
        here = (*path, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, source, here)
        else:
            base[key] = value
        origin[here] = source


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    """TLS and data paths are relative to the folder of the file that names them."""
    for key, value in list(data.items()):
        if isinstance(value, dict):
            _resolve_paths(value, folder)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _resolve_paths(item, folder)
        elif isinstance(value, str) and key in _PATH_KEYS:
            # Absolute but symlinks kept: a Kubernetes secret's `tls.crt -> ..data/tls.crt` must keep
            # naming the link, which survives the `..data` swap, not today's timestamped folder.
            data[key] = os.path.abspath(folder / os.path.expanduser(value))


_PATH_KEYS = frozenset({
    "root_dir", "server_certificate_bundle", "server_private_key", "client_ca_bundle",
    "client_certificate_bundle", "client_private_key", "server_ca_bundle", "client_certificate",
    "key_file",
})


def config_files(paths: list[Path]) -> list[Path]:
    """The files to load: each file as it is, each folder as its `*.toml` files in name order (so
    identities, policies and mirrors can live in files of their own, e.g. a mounted ConfigMap)."""
    files: list[Path] = []
    for path in paths:
        if Path(path).is_dir():
            files.extend(sorted((p for p in Path(path).glob("*.toml") if p.is_file()), key=lambda p: p.name))
        else:
            files.append(Path(path))
    return files


def default_config_files() -> list[Path]:
    local = Path("config.toml")
    if local.is_file():
        return [local]
    user = platformdirs.user_config_path(APP_NAME, appauthor=False) / "config.toml"
    return [user] if user.is_file() else []


def _describe_location(loc: tuple[Any, ...], origin: dict[tuple[str, ...], str]) -> tuple[str, str]:
    keys = tuple("global" if k == "global_" else str(k) for k in loc)
    env_name = ENV_PREFIX + "__".join(k.upper() for k in keys)
    if env_name in os.environ:
        return f"environment variable {env_name}", ".".join(keys)
    for n in range(len(keys), 0, -1):
        if keys[:n] in origin:
            return origin[keys[:n]], ".".join(keys)
    return "configuration", ".".join(keys)


def _environment_overrides() -> dict[str, Any]:
    """`REGISTRY__SECTION__KEY=value` as nested tables; JSON arrays/objects/numbers are decoded."""
    result: dict[str, Any] = {}
    for name, value in os.environ.items():
        if not name.upper().startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__")]
        parsed: Any = value
        if value[:1] in "[{":
            with contextlib.suppress(ValueError):
                parsed = json.loads(value)
        table = result
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise ConfigError(f"environment variable {name}: conflicts with another variable")
        table[keys[-1]] = parsed
    return result


UPSTREAM_CREDENTIALS_ENV = "REGISTRY_UPSTREAM_CREDENTIALS"
_CREDENTIALS_SHAPE = '{"<host>": {"username": "...", "password": "..."}}'


def _upstream_credentials() -> dict[str, tuple[str, str]]:
    """`REGISTRY_UPSTREAM_CREDENTIALS`: credentials per registry host for mirror-any-registry
    repositories, kept out of configuration files. Errors never quote the value (it holds secrets)."""
    raw = os.environ.get(UPSTREAM_CREDENTIALS_ENV)
    if raw is None or not raw.strip():
        return {}
    where = f"environment variable {UPSTREAM_CREDENTIALS_ENV}"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        reason = getattr(exc, "msg", "invalid JSON")
        raise ConfigError(f"{where}: not valid JSON ({reason}); expected {_CREDENTIALS_SHAPE}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object {_CREDENTIALS_SHAPE}")
    credentials: dict[str, tuple[str, str]] = {}
    for key, entry in data.items():
        try:
            host = parse_host(key)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if (not isinstance(entry, dict) or set(entry) != {"username", "password"}
                or not all(isinstance(v, str) for v in entry.values())):
            raise ConfigError(f"{where}: the entry for {host} must be "
                              '{"username": "<string>", "password": "<string>"} and nothing else')
        if host in credentials:
            raise ConfigError(f"{where}: {host} is named twice")
        credentials[host] = (entry["username"], entry["password"])
    return credentials


def _apply_upstream_credentials(config: Config, credentials: dict[str, tuple[str, str]]) -> None:
    """The environment's credentials win over the file's for their host, in every mirror-any-registry
    repository (other repositories name their upstreams' credentials explicitly)."""
    for repository in config.repository.values():
        if not repository.mirror_any_registry:
            continue
        for host, (username, password) in credentials.items():
            settings = repository.mirror_hosts.get(host) or MirrorHostConfig()
            repository.mirror_hosts[host] = settings.model_copy(
                update={"username": username, "password": password})


def load(files: list[Path] | None = None) -> Config:
    """Load, merge and validate; raise ConfigError naming the file, key path and reason."""
    files = default_config_files() if files is None else config_files(files)
    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for file in files:
        try:
            raw = tomllib.loads(Path(file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: invalid TOML: {exc}") from None
        try:
            raw = _normalize_aliases(raw)
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from None
        _resolve_paths(raw, Path(os.path.abspath(file)).parent)
        _merge(merged, raw, origin, str(file))
    _merge(merged, _normalize_aliases(_environment_overrides()), origin, "environment")
    _lock_store_of_the_blob_store(merged)
    credentials = _upstream_credentials()
    try:
        config = Config(**merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            source, key = _describe_location(tuple(err["loc"]), origin)
            reason = err["msg"]
            if err["type"] == "extra_forbidden":
                reason = f"unknown key `{key.rsplit('.', 1)[-1]}`"
            lines.append(f"{source}: {key}: {reason}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    _apply_upstream_credentials(config, credentials)
    return config


def redacted(config: Config) -> dict[str, Any]:
    """The effective configuration as a dict with every secret replaced by `***`."""
    secret_keys = {"password", "secret_key", "bearer_token", "access_key_id", "url_password"}

    def scrub(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: scrub(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if key in secret_keys and value:
            return "***"
        return value

    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dict(scrub(data))
