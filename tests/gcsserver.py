"""A real Google Cloud Storage emulator on loopback for the gs:// tests (gcp-storage-emulator, a separate
process speaking GCS's JSON API), and the environment that points gristmill at it: google-cloud-storage
sends every request to ``STORAGE_EMULATOR_HOST`` when it is set, anonymously."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .netns import free_port
from .s3server import stop_server


@dataclass
class GcsServer:
    endpoint: str
    process: subprocess.Popen
    log: Path

    def env(self, base: dict | None = None) -> dict:
        """The environment of a gristmill command that uses this server (NO_GCE_CHECK: google-auth does
        not probe a metadata server that a machine outside Google's cloud does not have)."""
        return {**(base if base is not None else os.environ), "STORAGE_EMULATOR_HOST": self.endpoint,
                "NO_GCE_CHECK": "True"}

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(name)

    def upload_dir(self, local: Path, bucket: str, prefix: str) -> None:
        b = self.client().bucket(bucket)
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            b.blob(f"{prefix}/{f.relative_to(local)}").upload_from_filename(str(f))

    def keys(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``: name (relative to the prefix) → bytes."""
        c = self.client()
        return {b.name[len(prefix):].lstrip("/"): b.download_as_bytes() for b in c.list_blobs(bucket, prefix=prefix)}

    def requests(self) -> int:
        """Requests the server has answered so far (one log line each)."""
        return self.log.read_text().count(" HTTP/1.1\"")

    def stop(self) -> None:
        stop_server(self.process)


def start_gcs_server(log: Path) -> GcsServer:
    """gcp-storage-emulator on a free loopback port, objects in memory; returns once it answers a request."""
    import requests

    port = free_port()
    emulator = Path(sys.executable).parent / "gcp-storage-emulator"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(emulator), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
                                stdout=out, stderr=subprocess.STDOUT)
    server = GcsServer(f"http://127.0.0.1:{port}", proc, log)
    while True:  # until the server answers (or has died)
        if proc.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            requests.get(f"{server.endpoint}/storage/v1/b?project=test", timeout=5)
            return server
        except requests.ConnectionError:
            time.sleep(0.1)  # a poll interval, not a guess at how long the start takes
