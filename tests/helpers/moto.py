"""moto in server mode: a real S3 protocol server on loopback, run as a process of its own.

The tests talk to it over HTTP with the real S3 client (aioboto3/botocore), so what they prove is
the wire protocol, not a mock of boto. `stop()` and `start()` again on the same port simulate S3
going away and coming back (moto keeps its data in memory: a restarted moto is empty).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.helpers.server import free_port

# moto accepts any credentials; fixed ones keep the signatures (and presigned URLs) deterministic.
ACCESS_KEY_ID = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def _moto_command(host: str, port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", host, "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]


class MotoServer:
    """One `moto_server` process on 127.0.0.1:<port>."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.session.trust_env = False  # never through an HTTP proxy of the environment
        self._client: Any = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        # No AWS_* variables leak in from the environment (a CA bundle, a profile, real credentials).
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.process = subprocess.Popen(_moto_command("127.0.0.1", self.port), stdout=log, stderr=log,
                                        env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}:\n{self.logs()}")
            try:
                # moto's own dashboard API answers once the server is up.
                if self.session.get(f"{self.endpoint}/moto-api/data.json", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        """Kill the process and wait until the port is released (so it can start again on it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> MotoServer:
        """A new, empty moto on the same port (what a client sees as S3 coming back)."""
        self.stop()
        return self.start()

    def create_bucket(self, name: str | None = None) -> str:
        """A new bucket (path-style PUT, unsigned: moto does not check signatures)."""
        bucket = name or f"test-{uuid.uuid4().hex[:16]}"
        response = self.session.put(f"{self.endpoint}/{bucket}", timeout=10)
        response.raise_for_status()
        return bucket

    def client(self) -> Any:
        """A synchronous boto3 client of this server, for tests that look at the bucket directly."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY_ID,
                aws_secret_access_key=SECRET_KEY,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
        return self._client

    def remove_bucket(self, bucket: str) -> None:
        """Empty and delete a bucket (moto keeps everything in memory: a test's gigabyte goes)."""
        client = self.client()
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": entry["Key"]} for entry in page.get("Contents", ())]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
                for upload in page.get("Uploads", ()):
                    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                  UploadId=upload["UploadId"])
            client.delete_bucket(Bucket=bucket)
        except client.exceptions.NoSuchBucket:
            pass

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""
