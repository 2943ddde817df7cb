"""A real S3-compatible server on loopback for the object-store tests (moto's server, a separate
process), and the Beam filesystem options that point gristmill at it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .netns import free_port

#: credentials the tests give gristmill: any value works against moto; these are planted secrets that
#: no output or log may show (tests/test_object_store.py)
ACCESS_KEY_ID = "AKIAGRISTMILLTESTKEY1"
SECRET_ACCESS_KEY = "gristmill-test-secret-7f3a9c1e"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def options(self) -> list[str]:
        """Beam's filesystem options for this server: what a user passes to gristmill."""
        return ["--s3_endpoint_url", self.endpoint, "--s3_access_key_id", ACCESS_KEY_ID,
                "--s3_secret_access_key", SECRET_ACCESS_KEY, "--s3_region_name", REGION]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY_ID,
                            aws_secret_access_key=SECRET_ACCESS_KEY, region_name=REGION)

    def upload_dir(self, local: Path, bucket: str, prefix: str) -> None:
        c = self.client()
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
            c.create_bucket(Bucket=bucket)
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            c.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(local)}")

    def keys(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``: key (relative to the prefix) → bytes."""
        from concurrent.futures import ThreadPoolExecutor

        c = self.client()
        keys = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for o in page.get("Contents", [])]
        with ThreadPoolExecutor(8) as pool:  # boto3 clients are thread-safe; the server answers in threads
            bodies = pool.map(lambda k: c.get_object(Bucket=bucket, Key=k)["Body"].read(), keys)
            return {k[len(prefix):].lstrip("/"): b for k, b in zip(keys, bodies)}

    def stop(self) -> None:
        stop_server(self.process)


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM a loopback server the tests started; SIGKILL it if it has not gone in 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_s3_server(log: Path) -> S3Server:
    """moto's S3 server on a free loopback port; returns once it answers a request."""
    import boto3
    import botocore.exceptions

    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "AWS_DEFAULT_REGION": REGION})
    server = S3Server(f"http://127.0.0.1:{port}", proc)
    probe = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=ACCESS_KEY_ID,
                         aws_secret_access_key=SECRET_ACCESS_KEY, region_name=REGION)
    while True:  # until the server answers (or has died)
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            probe.list_buckets()
            return server
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError):
            time.sleep(0.1)  # a poll interval, not a guess at how long the start takes
