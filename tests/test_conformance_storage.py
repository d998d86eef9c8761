"""The black-box API suite, the skopeo and podman interop tests and the single-flight pull-through
tests, run again with every server's blobs
and metadata on S3 (a new bucket on a moto server for each server: tests/helpers/stores.py). The same
files run on fs in the rest of the suite."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import stores
from tests.helpers.moto import MotoServer
from tests.helpers.server import REPO_ROOT

SUITES = ["tests/test_api_pull.py", "tests/test_api_push.py", "tests/test_api_discovery.py",
          "tests/test_api_management.py", "tests/test_api_bad_input.py", "tests/test_interop_skopeo.py",
          "tests/test_interop_podman.py", "tests/test_pullthrough_singleflight.py"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_api_and_interop_suites_pass_on_s3(moto_server: MotoServer) -> None:
    env = {**os.environ, stores.STORAGE_VARIABLE: "s3", stores.ENDPOINT_VARIABLE: moto_server.endpoint}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", *SUITES],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1400, check=False)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    # The servers really stored on S3: a bucket per server that held data.
    buckets = [bucket["Name"] for bucket in moto_server.client().list_buckets()["Buckets"]]
    assert sum(name.startswith("registry-") for name in buckets) >= 10, buckets
