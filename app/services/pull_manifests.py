"""Manifests and tags of a pull-through repository: cached copies kept fresh against the upstream.

- By digest, or by a tag with immutable semantics: served from the cache when present.
- A mutable tag fetched less than `manifest_check_interval` ago: served from the cache. Older: a HEAD
  upstream; the same digest → served (and the fetch time renewed); another → fetched, stored, served.
- Upstream unreachable: the cached copy is served (stale-if-error) and logged; no copy → 502/504 naming
  the upstream. A 404 upstream is an answer (404), never a reason to serve something else.
- Fetched manifests are stored in the normal layout (blob, revision link, media type, tag links) plus
  `fetchedat` beside the tag. Fetches are single-flight per namespace and reference.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from typing import Any

import aiohttp

from app import errors, manifest
from app.actors.manifest_index import page
from app.grammar import DIGEST_RE, TAG_RE, Digest
from app.services.flights import Flights, Leader
from app.services.manifests import ManifestService, PutResult, StoredManifest
from app.services.pull_blobs import read_only
from app.storage import NotFound, Storage, layout
from app.storage import locks as lock_names
from app.upstream import metrics
from app.upstream.client import MANIFEST_ACCEPT, UpstreamClient
from app.upstream.errors import UpstreamFailure, UpstreamInvalid, UpstreamUnavailable
from app.upstream.pool import Mirror

log = logging.getLogger("registry.upstream")
_NEXT_LINK_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')
MAX_TAG_PAGES = 100
_TAGS_BODY_LIMIT = 16 * 1024 * 1024


async def _read_limited(response: aiohttp.ClientResponse, limit: int, what: str, source: str) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise UpstreamInvalid(f"upstream {source} sent a {what} larger than {limit} bytes")
    return bytes(body)


class PullThroughManifests:
    """The manifest service of one pull-through repository (same methods the handlers use)."""

    def __init__(self, local: ManifestService, storage: Storage, flights: Flights, mirror: Mirror) -> None:
        self.local = local
        self.storage = storage
        self.flights = flights
        self.mirror = mirror

    # --- reading ------------------------------------------------------------------------------
    async def get(self, namespace: str, reference: Digest | str) -> StoredManifest:
        if isinstance(reference, Digest):
            return await self._by_digest(namespace, reference)
        return await self._by_tag(namespace, reference)

    async def _by_digest(self, namespace: str, digest: Digest) -> StoredManifest:
        with contextlib.suppress(errors.ManifestUnknown):
            stored = await self.local.get(namespace, digest)
            metrics.hit(self.mirror.prefix)
            return stored
        metrics.miss(self.mirror.prefix)

        async def lead(leader: Leader) -> None:
            await self._fetch(namespace, digest, None)
            leader.finish(0)

        await self.flights.run_once(f"manifest:{namespace}@{digest}", namespace, lead)
        return await self.local.get(namespace, digest)

    async def _by_tag(self, namespace: str, tag: str) -> StoredManifest:
        cached = await self._cached(namespace, tag)
        if cached is not None and await self._fresh(namespace, tag):
            metrics.hit(self.mirror.prefix)
            return await self.local.get(namespace, cached)

        async def lead(leader: Leader) -> None:
            await self._refresh(namespace, tag, cached)
            leader.finish(0)

        await self.flights.run_once(f"manifest:{namespace}:{tag}", namespace, lead)
        digest = await self.local.resolve_tag(namespace, tag)
        (metrics.hit if digest == cached else metrics.miss)(self.mirror.prefix)
        return await self.local.get(namespace, digest)

    async def _cached(self, namespace: str, tag: str) -> Digest | None:
        try:
            return await self.local.resolve_tag(namespace, tag)
        except errors.ManifestUnknown:
            return None

    async def _fresh(self, namespace: str, tag: str) -> bool:
        rules = self.local.immutable_tags
        if rules is not None and rules.applies(namespace, tag):
            return True  # an immutable tag cannot change: never asked again
        try:
            fetched_at = float((await self.storage.get(layout.tag_fetched_at(namespace, tag))).decode())
        except (NotFound, ValueError):
            return False
        return 0 <= time.time() - fetched_at < self.mirror.check_interval

    async def _refresh(self, namespace: str, tag: str, cached: Digest | None) -> None:
        """Make the cached tag current: HEAD upstream, fetch when it moved; stale-if-error."""
        try:
            if cached is not None and await self._upstream_digest(namespace, tag) == cached:
                await self._touch(namespace, tag)
                return
            await self._fetch(namespace, tag, tag)
        except (UpstreamUnavailable, UpstreamInvalid) as exc:
            if cached is None:
                raise
            log.warning("upstream unavailable: serving the cached manifest (stale-if-error)", extra={
                "fields": {"repository": self.mirror.prefix, "namespace": namespace, "tag": tag,
                           "digest": str(cached), "reason": exc.message}})

    async def _upstream_digest(self, namespace: str, tag: str) -> Digest | None:
        """The digest upstream's tag names now (None when its HEAD does not say)."""
        what = f"manifest {namespace}:{tag}"
        async with self.mirror.open("HEAD", namespace, f"manifests/{tag}", what,
                                    headers={"Accept": MANIFEST_ACCEPT}) as (client, response):
            if response.status == 404:
                raise errors.ManifestUnknown(f"manifest {tag!r} is unknown upstream ({client.name})")
            if response.status != 200:
                raise UpstreamInvalid(f"{client.name} answered {response.status} to HEAD {what}")
            header = response.headers.get("Docker-Content-Digest", "")
            return Digest.parse(header) if DIGEST_RE.fullmatch(header) else None

    async def _touch(self, namespace: str, tag: str) -> None:
        await self.storage.put(layout.tag_fetched_at(namespace, tag), f"{time.time():.3f}".encode())

    async def _fetch(self, namespace: str, reference: Digest | str, tag: str | None) -> Digest:
        """GET the manifest upstream, verify it, store it (and the tag); its digest."""
        what = f"manifest {namespace}:{reference}" if tag else f"manifest {namespace}@{reference}"
        limit = self.local.max_manifest_size
        async with self.mirror.open("GET", namespace, f"manifests/{reference}", what,
                                    headers={"Accept": MANIFEST_ACCEPT}) as (client, response):
            if response.status == 404:
                raise errors.ManifestUnknown(f"manifest {reference} is unknown upstream ({client.name})")
            if response.status != 200:
                raise UpstreamInvalid(f"{client.name} answered {response.status} to GET {what}")
            try:
                body = await _read_limited(response, limit, "manifest", client.name)
            except (aiohttp.ClientError, TimeoutError) as exc:
                metrics.upstream_error(self.mirror.prefix)
                raise UpstreamUnavailable(f"upstream {client.name} failed sending {what}: {exc}",
                                          status=504 if isinstance(exc, TimeoutError) else 502) from exc
            content_type = response.headers.get("Content-Type")
            announced = response.headers.get("Docker-Content-Digest", "")
        metrics.upstream_bytes(self.mirror.prefix, len(body))
        digest = self._verify(body, reference, announced, client)
        try:
            parsed = manifest.parse(body, content_type, digest, self.local.max_manifest_references)
        except errors.RegistryError as exc:
            metrics.upstream_error(self.mirror.prefix)
            raise UpstreamInvalid(f"upstream {client.name} sent an unusable {what}: {exc.message}") from None
        await self._store(namespace, digest, body, parsed, tag)
        return digest

    def _verify(self, body: bytes, reference: Digest | str, announced: str, client: UpstreamClient) -> Digest:
        expected = reference if isinstance(reference, Digest) else None
        if expected is None and DIGEST_RE.fullmatch(announced):
            expected = Digest.parse(announced)
        digest = Digest.of(body, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            metrics.upstream_error(self.mirror.prefix)
            raise UpstreamInvalid(f"upstream {client.name} sent a manifest whose digest is {digest}, "
                                  f"not {expected}; nothing was stored")
        return digest

    async def _store(self, namespace: str, digest: Digest, body: bytes, parsed: manifest.Manifest,
                     tag: str | None) -> None:
        """What a push stores (blob, media type, revision, referrer, tag), minus the reference checks:
        a cached manifest's blobs arrive later, when they are pulled."""
        local = self.local
        await local.store_revision(namespace, digest, body, parsed)
        if tag is not None:
            async with local.locks.hold(lock_names.tag(namespace, tag)):
                await local.set_tag(namespace, tag, digest)
                await self._touch(namespace, tag)
        await local.announce(namespace)

    # --- tags -----------------------------------------------------------------------------------
    async def list_tags(self, namespace: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """Upstream's tags (when reachable) merged with the cached ones."""
        try:
            cached: list[str] | None = (await self.local.list_tags(namespace, None, None))[0]
        except errors.NameUnknown:
            cached = None
        try:
            upstream = await self._upstream_tags(namespace)
        except (UpstreamUnavailable, UpstreamInvalid) as exc:
            if not cached:  # nothing to fall back on: say why rather than list nothing
                raise
            log.warning("upstream unavailable: listing cached tags only", extra={"fields": {
                "repository": self.mirror.prefix, "namespace": namespace, "reason": exc.message}})
            upstream = None
        if cached is None and upstream is None:
            raise errors.NameUnknown(
                f"repository {namespace} is not known upstream ({self.mirror.describe()})")
        return page(sorted(set(cached or ()) | set(upstream or ())), n, last)

    async def _upstream_tags(self, namespace: str) -> list[str] | None:
        """Every tag upstream (following `Link: rel="next"` pages); None when upstream says 404."""
        what = f"tags of {namespace}"
        tags: list[str] = []
        async with self.mirror.open("GET", namespace, "tags/list", what) as (client, response):
            if response.status == 404:
                return None
            link = await self._read_tags(client, response, tags, what)
            for _ in range(MAX_TAG_PAGES):
                if link is None:
                    break
                name = self.mirror.remote_name(namespace)
                try:
                    async with client.open("GET", name, "tags/list?" + link) as page_:
                        link = await self._read_tags(client, page_, tags, what)
                except UpstreamFailure as failure:  # the next pages come from the same upstream
                    self.mirror.pool.failed(client, failure)
                    metrics.upstream_error(self.mirror.prefix)
                    raise UpstreamUnavailable.from_failures(what, [failure]) from None
        return tags

    async def _read_tags(self, client: UpstreamClient, response: aiohttp.ClientResponse, tags: list[str],
                         what: str) -> str | None:
        """Add one page's tags; the query of the next page, if any."""
        if response.status != 200:
            raise UpstreamInvalid(f"{client.name} answered {response.status} to GET {what}")
        try:
            body = await _read_limited(response, _TAGS_BODY_LIMIT, "tag list", client.name)
            data: Any = json.loads(body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UpstreamInvalid(f"upstream {client.name} sent an unusable tag list: {exc}") from exc
        metrics.upstream_bytes(self.mirror.prefix, len(body))
        listed = data.get("tags") if isinstance(data, dict) else None
        tags.extend(t for t in listed or () if isinstance(t, str) and TAG_RE.fullmatch(t))
        match = _NEXT_LINK_RE.search(response.headers.get("Link", ""))
        if match is None or "?" not in match.group(1):
            return None
        return match.group(1).split("?", 1)[1]

    # --- writing --------------------------------------------------------------------------------
    async def put(self, namespace: str, reference: Digest | str, body: bytes, content_type: str | None,
                  extra_tags: list[str]) -> PutResult:
        raise read_only(self.mirror)

    async def delete(self, namespace: str, reference: Digest | str) -> None:
        await self.local.delete(namespace, reference)  # eviction: the next pull fetches it again

    async def referrers(self, namespace: str, subject: Digest,
                        artifact_type: str | None) -> list[dict[str, Any]]:
        return await self.local.referrers(namespace, subject, artifact_type)
