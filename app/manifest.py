"""Manifest parsing and validation (no I/O): what a PUT must satisfy and what it references."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app import errors, json_shape
from app.grammar import Digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
SUPPORTED_TYPES = IMAGE_TYPES | INDEX_TYPES
ACCEPT_ALL = ", ".join(sorted(SUPPORTED_TYPES))
# Layers that clients are told to fetch from elsewhere (Windows base layers): never stored here.
FOREIGN_LAYER_TYPES = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})
# Real manifests nest 5 levels at most (index → manifests → descriptor → platform → features).
MAX_NESTING = 64
# The default of `[global] max_manifest_references`: descriptors (config, layers, children, subject)
# one manifest may have. Real images have tens of layers (overlayfs stacks at most 128).
MAX_REFERENCES = 10000
# A descriptor is one object, with at most five more inside (annotations, platform, its two feature
# lists, urls): more containers than this per allowed reference is no manifest, only parsing work.
CONTAINERS_PER_REFERENCE = 8


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()


@dataclass(slots=True)
class Manifest:
    """A validated manifest: its type, the blobs and child manifests it needs (one descriptor per
    distinct digest, in the order they are listed), and referrer facts."""

    media_type: str
    digest: Digest
    size: int
    blobs: list[Descriptor] = field(default_factory=list)
    children: list[Descriptor] = field(default_factory=list)
    subject: Digest | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    # What sniff_media_type reads from this body, kept so that storing it does not parse it again.
    sniffed_type: str | None = None

    def referrer_descriptor(self) -> dict[str, Any]:
        descriptor: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            descriptor["artifactType"] = self.artifact_type
        if self.annotations:
            descriptor["annotations"] = self.annotations
        return descriptor


def strip_media_type(content_type: str | None) -> str:
    """`application/x; charset=utf-8` → `application/x`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _descriptor(value: Any, kind: str, index: int | None = None,
                digests: dict[str, Digest] | None = None) -> Descriptor:
    """`value` as a descriptor, else MANIFEST_INVALID naming `kind[index]`. `digests` remembers the
    digests already parsed: a manifest may list the same layer thousands of times."""
    def invalid(reason: str) -> errors.RegistryError:
        where = kind if index is None else f"{kind}[{index}]"
        return errors.ManifestInvalid(f"{where}: {reason}")

    if not isinstance(value, dict):
        raise invalid("descriptor must be an object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise invalid("mediaType must be a non-empty string")
    if not isinstance(digest, str):
        raise invalid("digest must be a string")
    parsed = digests.get(digest) if digests is not None else None
    if parsed is None:
        try:
            parsed = Digest.parse(digest)
        except errors.DigestInvalid as exc:
            raise invalid(exc.message) from None
        if digests is not None:
            digests[digest] = parsed
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise invalid("size must be a non-negative integer")
    urls = value.get("urls") or ()
    if not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
        raise invalid("urls must be a list of strings")
    return Descriptor(media_type, parsed, size, tuple(urls))


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise errors.ManifestInvalid(f"{where}: annotations must map strings to strings")
    return value


def _load(body: bytes, max_references: int | None) -> Any:
    """The JSON document of a manifest body: UTF-8 (RFC 8259; what the shape check reads), nested at
    most MAX_NESTING deep, with a bounded number of objects and arrays."""
    max_containers = None if max_references is None else CONTAINERS_PER_REFERENCE * max_references + 64
    try:
        json_shape.check(body, MAX_NESTING, max_containers)
        return json.loads(body.decode("utf-8"))
    except json_shape.TooComplex as exc:
        raise errors.ManifestInvalid(f"manifest is refused: {exc}") from None
    except RecursionError:  # the shape check should have caught it; never a 500 all the same
        raise errors.ManifestInvalid(f"manifest nests deeper than {MAX_NESTING} levels") from None
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise errors.ManifestInvalid(f"manifest is not valid JSON: {exc}") from None


def _check_count(count: int, max_references: int | None) -> None:
    if max_references is not None and count > max_references:
        raise errors.ManifestInvalid(
            f"manifest has {count} descriptors (config, layers, manifests, subject), more than "
            f"max_manifest_references ({max_references})")


def parse(body: bytes, content_type: str | None, digest: Digest,
          max_references: int | None = MAX_REFERENCES) -> Manifest:
    """Validate a manifest PUT body against its Content-Type; raise MANIFEST_INVALID with a reason.

    `max_references` bounds its descriptors (None: any number, for manifests already stored)."""
    header_type = strip_media_type(content_type)
    document = _load(body, max_references)
    if not isinstance(document, dict):
        raise errors.ManifestInvalid("manifest must be a JSON object")
    if document.get("schemaVersion") == 1 or header_type in DOCKER_SCHEMA1:
        raise errors.ManifestInvalid("Docker schema 1 manifests are not supported; push schema 2 or OCI")
    if document.get("schemaVersion") != 2:
        raise errors.ManifestInvalid("schemaVersion must be 2")
    body_type = document.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise errors.ManifestInvalid("mediaType must be a string")
    if not header_type:
        raise errors.ManifestInvalid("a Content-Type header naming the manifest media type is required")
    if body_type and body_type != header_type:
        raise errors.ManifestInvalid(
            f"Content-Type {header_type!r} does not match the manifest's mediaType {body_type!r}"
        )
    media_type = header_type
    if media_type not in SUPPORTED_TYPES:
        raise errors.ManifestInvalid(f"unsupported manifest media type {media_type!r}")

    manifest = Manifest(media_type=media_type, digest=digest, size=len(body),
                        sniffed_type=_sniff(document))
    manifest.annotations = _annotations(document.get("annotations"), "annotations")
    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise errors.ManifestInvalid("artifactType must be a string")
    if "subject" in document and document["subject"] is not None:
        manifest.subject = _descriptor(document["subject"], "subject").digest
    others = 1 if manifest.subject is not None else 0

    if media_type in IMAGE_TYPES:
        if "config" not in document:
            raise errors.ManifestInvalid("image manifest has no config")
        config = _descriptor(document["config"], "config")
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise errors.ManifestInvalid("layers must be an array")
        _check_count(1 + len(layers) + others, max_references)
        manifest.blobs.append(config)
        digests: dict[str, Digest] = {document["config"]["digest"]: config.digest}
        required = set(digests)  # the digests (as written) already in manifest.blobs
        for i, layer in enumerate(layers):
            descriptor = _descriptor(layer, "layers", i, digests)
            if descriptor.urls and descriptor.media_type in FOREIGN_LAYER_TYPES:
                continue  # clients fetch it from its urls: never stored here
            if layer["digest"] not in required:
                required.add(layer["digest"])
                manifest.blobs.append(descriptor)
        manifest.artifact_type = artifact_type or config.media_type
    else:
        children = document.get("manifests")
        if not isinstance(children, list):
            raise errors.ManifestInvalid("manifests must be an array")
        _check_count(len(children) + others, max_references)
        digests = {}
        for i, child in enumerate(children):
            known = len(digests)
            descriptor = _descriptor(child, "manifests", i, digests)
            if len(digests) > known:  # a digest not seen before
                manifest.children.append(descriptor)
        manifest.artifact_type = artifact_type
    return manifest


def describe_stored(body: bytes, media_type: str, digest: Digest) -> Manifest:
    """Re-read a stored manifest for its referrer facts (already validated when it was pushed)."""
    try:
        return parse(body, media_type, digest, max_references=None)
    except errors.RegistryError:
        return Manifest(media_type=media_type, digest=digest, size=len(body))


def sniff_media_type(body: bytes) -> str:
    """The media type of a stored manifest pushed by another registry (distribution keeps none)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # another registry's file: anything may be in it
        return OCI_MANIFEST
    return _sniff(document)


def _sniff(document: Any) -> str:
    if isinstance(document, dict):
        media_type = document.get("mediaType")
        if isinstance(media_type, str) and media_type:
            return media_type
        if "manifests" in document:
            return OCI_INDEX
    return OCI_MANIFEST
