"""Build blobs, manifests and whole OCI image layouts in the test (no external tools needed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """A gzipped tar layer holding `files` (deterministic: fixed mtimes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


def random_layer(size: int = 4096, name: str = "file.bin") -> bytes:
    return layer_tar({name: os.urandom(size)})


@dataclass
class Image:
    """An image as blobs plus its manifest bytes."""

    config: bytes
    layers: list[bytes]
    manifest: bytes
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)


def make_image(layers: list[bytes] | None = None, docker: bool = False, architecture: str = "amd64",
               annotations: dict[str, str] | None = None, subject: dict[str, Any] | None = None,
               artifact_type: str | None = None, config: bytes | None = None,
               config_media_type: str | None = None) -> Image:
    layers = [random_layer()] if layers is None else layers
    if config is None:
        diff_ids = [digest_of(gzip.decompress(layer)) for layer in layers]
        config = json.dumps({
            "architecture": architecture, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {"Cmd": ["/bin/sh"]},
        }, sort_keys=True).encode()
    layer_type = DOCKER_LAYER if docker else OCI_LAYER
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {"mediaType": config_media_type or (DOCKER_CONFIG if docker else OCI_CONFIG),
                   "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": digest_of(layer), "size": len(layer)}
                   for layer in layers],
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    if annotations:
        manifest["annotations"] = annotations
    if subject:
        manifest["subject"] = subject
    body = json.dumps(manifest, indent=2).encode()
    image = Image(config, layers, body, manifest["mediaType"])
    image.blobs = {digest_of(b): b for b in [config, *layers]}
    return image


def make_index(images: list[Image], docker: bool = False, platforms: list[dict[str, str]] | None = None,
               subject: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
               artifact_type: str | None = None) -> bytes:
    platforms = platforms or [{"architecture": "amd64", "os": "linux"}] * len(images)
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST if docker else OCI_INDEX,
        "manifests": [{"mediaType": image.media_type, "digest": image.digest,
                       "size": len(image.manifest), "platform": platform}
                      for image, platform in zip(images, platforms, strict=True)],
    }
    if subject:
        index["subject"] = subject
    if annotations:
        index["annotations"] = annotations
    if artifact_type:
        index["artifactType"] = artifact_type
    return json.dumps(index, indent=2).encode()


def push_blob(session: requests.Session, url: str, name: str, data: bytes) -> requests.Response:
    """Monolithic POST ?digest= upload."""
    return session.post(f"{url}/v2/{name}/blobs/uploads/", params={"digest": digest_of(data)}, data=data,
                        headers={"Content-Type": "application/octet-stream"}, timeout=60)


def push_image(session: requests.Session, url: str, name: str, image: Image,
               tag: str | None = None) -> requests.Response:
    for blob in image.blobs.values():
        response = push_blob(session, url, name, blob)
        assert response.status_code == 201, response.text
    reference = tag or image.digest
    return session.put(f"{url}/v2/{name}/manifests/{reference}", data=image.manifest,
                       headers={"Content-Type": image.media_type}, timeout=60)


def write_oci_layout(path: Path, images: dict[str, Image], index_blobs: dict[str, bytes] | None = None,
                     index_refs: dict[str, bytes] | None = None) -> None:
    """An OCI image layout folder (what `skopeo copy oci:<path>:<tag>` reads); tag -> image."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(data: bytes) -> None:
        (blobs / digest_of(data).split(":", 1)[1]).write_bytes(data)

    entries = []
    for tag, image in images.items():
        for blob in image.blobs.values():
            put(blob)
        put(image.manifest)
        entries.append({"mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest),
                        "annotations": {"org.opencontainers.image.ref.name": tag}})
    for blob in (index_blobs or {}).values():
        put(blob)
    for tag, body in (index_refs or {}).items():
        put(body)
        media_type = json.loads(body).get("mediaType", OCI_INDEX)
        entries.append({"mediaType": media_type, "digest": digest_of(body), "size": len(body),
                        "annotations": {"org.opencontainers.image.ref.name": tag}})
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                 "manifests": entries}))
