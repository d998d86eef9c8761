"""Driving skopeo and reading what it writes (OCI layouts and `dir:` folders) for black-box interop tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import requests

from tests.helpers.oci import Image, digest_of
from tests.helpers.tools import require_tool


def skopeo(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `skopeo --insecure-policy <args>`; with `check`, a non-zero exit fails with skopeo's stderr."""
    binary = require_tool("skopeo")
    result = subprocess.run([binary, "--insecure-policy", *args], capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check:
        command = " ".join(args)
        assert result.returncode == 0, f"skopeo {command} failed ({result.returncode}):\n{result.stderr}"
    return result


def copy(src: str, dest: str, *extra: str) -> None:
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", *extra, src, dest)


def write_dir_layout(path: Path, image: Image) -> None:
    """A skopeo `dir:` folder: manifest.json plus one file per blob named by its hex digest.

    skopeo 1.9 ignores Docker media types in an OCI layout index, so this is how a Docker schema2 image
    is fed to skopeo byte for byte.
    """
    path.mkdir(parents=True, exist_ok=True)
    (path / "version").write_text("Directory Transport Version: 1.1\n")
    (path / "manifest.json").write_bytes(image.manifest)
    for digest, blob in image.blobs.items():
        (path / digest.split(":", 1)[1]).write_bytes(blob)


def write_dir_list_layout(path: Path, list_manifest: bytes, images: list[Image]) -> None:
    """A skopeo `dir:` folder for `copy --all`: the list is manifest.json, each child <hex>.manifest.json."""
    write_dir_layout(path, images[0])
    (path / "manifest.json").write_bytes(list_manifest)
    for image in images:
        (path / f"{image.digest.split(':', 1)[1]}.manifest.json").write_bytes(image.manifest)
        for digest, blob in image.blobs.items():
            (path / digest.split(":", 1)[1]).write_bytes(blob)


def read_dir_manifest(path: Path) -> bytes:
    return (path / "manifest.json").read_bytes()


def dir_blob(path: Path, digest: str) -> bytes:
    return (path / digest.split(":", 1)[1]).read_bytes()


def oci_blob(layout: Path, digest: str) -> bytes:
    algorithm, hexdigest = digest.split(":", 1)
    return (layout / "blobs" / algorithm / hexdigest).read_bytes()


def oci_ref(layout: Path, tag: str) -> dict[str, Any]:
    """The descriptor tagged `tag` in an OCI layout's index.json."""
    index = json.loads((layout / "index.json").read_text())
    matches = [d for d in index["manifests"]
               if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    assert len(matches) == 1, f"tag {tag!r} in {layout}/index.json: {index}"
    return matches[0]


def assert_oci_layout_has_image(layout: Path, tag: str, image: Image) -> None:
    """`tag` in the layout is exactly `image`: same manifest bytes, every blob byte-identical."""
    descriptor = oci_ref(layout, tag)
    assert descriptor["digest"] == image.digest
    manifest = oci_blob(layout, image.digest)
    assert manifest == image.manifest
    assert digest_of(manifest) == image.digest
    for digest, blob in image.blobs.items():
        assert oci_blob(layout, digest) == blob, f"blob {digest} differs after the round trip"


def assert_registry_has_image(session: requests.Session, url: str, name: str, reference: str,
                              image: Image) -> None:
    """Pull over plain HTTP: manifest bytes, media type and digest header, then every blob byte-identical."""
    response = session.get(f"{url}/v2/{name}/manifests/{reference}", timeout=60,
                           headers={"Accept": image.media_type})
    assert response.status_code == 200, (name, reference, response.status_code, response.text)
    assert response.content == image.manifest, (name, reference)
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert response.headers["Content-Type"].split(";")[0] == image.media_type
    for digest, blob in image.blobs.items():
        got = session.get(f"{url}/v2/{name}/blobs/{digest}", timeout=60)
        assert got.status_code == 200, (name, digest, got.status_code, got.text)
        assert got.content == blob, f"{name}: blob {digest} differs"
        assert digest_of(got.content) == digest
