"""A real two-host Dask cluster on this machine, for tests: the scheduler and one worker on this side
of a veth pair, a second worker inside a network namespace (tests/netns.py). Every process is started
here and stopped here, by its own handle."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from .netns import VethLink

BIN = Path(sys.executable).parent


class TwoHostDask:
    def __init__(self):
        self.link = VethLink()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"tcp://{self.link.host_ip}:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def _start(self, cmd: list[str]) -> None:
        self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def start(self) -> TwoHostDask:
        self.link.create()
        dask = str(BIN / "dask")
        self._start([dask, "scheduler", "--host", self.link.host_ip, "--port", str(self.port), "--no-dashboard"])
        worker = ["worker", self.address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--no-nanny"]
        self._start([dask, *worker, "--host", self.link.host_ip])
        self._start([*self.link.exec, dask, *worker, "--host", self.link.node_ip])
        deadline = time.time() + 120
        while len(self.workers()) < 2:
            if time.time() > deadline:
                raise RuntimeError(f"the two Dask workers did not join {self.address}")
            time.sleep(1)
        return self

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30)

    def workers(self) -> list[str]:
        try:
            with self.client() as c:
                return sorted(c.scheduler_info()["workers"])
        except OSError:
            return []

    def executed(self) -> dict[str, int]:
        """Tasks each worker has run (by worker address)."""
        with self.client() as c:
            return c.run(lambda dask_worker: dask_worker.state.executed_count)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.link.delete()
