"""Outgoing HTTPS trusts the system's CA store, built on first use, while aiohttp's import-time default
contexts load no CA certificates at all (app/client_tls.py): a pull-through upstream whose CA is in the
system store (here: SSL_CERT_FILE) is trusted without `server_ca_bundle`, and is refused without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.helpers.distribution import DistributionProcess
from tests.helpers.oci import make_image
from tests.helpers.server import REPO_ROOT, RegistryProcess
from tests.helpers.upstreams import issue_tls_files, pull_through_config, push

_PROBE = """
import json
from app.client_tls import import_aiohttp, verifying_context
import_aiohttp()
import aiohttp.connector as connector
print(json.dumps({"aiohttp": connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
                  "ours": verifying_context().cert_store_stats()["x509_ca"]}))
"""


def test_aiohttp_default_contexts_trust_nothing_and_ours_the_system_store(tmp_path: Path) -> None:
    files = issue_tls_files(tmp_path / "tls")
    result = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, check=True, env={**os.environ, "SSL_CERT_FILE": str(files["ca"])})
    counts = json.loads(result.stdout)
    assert counts == {"aiohttp": 0, "ours": 1}, counts


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # the test's own push
def test_an_upstream_signed_by_a_system_ca_is_trusted_without_a_bundle(
        tmp_path: Path, start_registry: Callable[..., RegistryProcess]) -> None:
    files = issue_tls_files(tmp_path / "tls")
    upstream = DistributionProcess(tmp_path / "upstream", tmp_path / "data", tls={
        "certificate": str(files["server_cert"]), "key": str(files["server_key"])}).start()
    try:
        image = make_image()
        plain = requests.Session()
        plain.verify, plain.trust_env = False, False  # the test's own push (urllib3 wants key ids)
        push(plain, upstream.url, "team/app", image, "1")
        config = pull_through_config([{"url": upstream.url, "connect_timeout": 5}])
        trusting = start_registry(config, env={"SSL_CERT_FILE": str(files["ca"])}, name="trusting")
        answer = trusting.get("/v2/cache/team/app/manifests/1", headers={"Accept": image.media_type})
        assert answer.status_code == 200 and answer.content == image.manifest, answer.text
        untrusting = start_registry(config, env={"SSL_CERT_FILE": str(tmp_path / "no-such-file")},
                                    name="untrusting")
        refused = untrusting.get("/v2/cache/team/app/manifests/1", headers={"Accept": image.media_type})
        assert refused.status_code in (502, 503) and "certificate" in refused.text, refused.text
    finally:
        upstream.stop()
