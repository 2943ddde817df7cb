"""A real two-node Ray cluster on this machine, for tests: the head on one end of a veth pair, a second
node inside a network namespace on the other end. Nothing leaves the machine: the nodes talk over the
veth link, the dashboard (job submission) listens on 127.0.0.1, and token authentication is on.

Every process started here is found again by its unique temp directory and killed on exit, so a test
never touches another Ray on the machine (``ray stop`` would kill them all).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .netns import VethLink, can_make_netns  # noqa: F401 - can_make_netns: the tests' skip reason
from .netns import free_port as _free_port
from .netns import run as _run

BIN = Path(sys.executable).parent


@dataclass
class TwoNodeCluster:
    token: str = field(default_factory=lambda: secrets.token_hex(32))

    def __post_init__(self):
        self.link = VethLink()
        self.tag = self.link.tag
        self.head_ip, self.node_ip = self.link.host_ip, self.link.node_ip
        # short paths: Ray's unix sockets live under the temp dir (107-character limit)
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp"))
        self.gcs_port, self.dashboard_port = _free_port(), _free_port()
        # the head's job agent must not take Ray's default 52365, which another Ray on this machine (a test
        # on the other pytest worker) may hold: its agent then runs without HTTP and `ray job submit` is
        # refused with "No available agent" for as long as the cluster lives
        self.agent_port = _free_port()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self, **extra) -> dict:
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        env.update(extra)
        return env

    def start(self) -> TwoNodeCluster:
        self.link.create()
        ray = str(BIN / "ray")
        # gloo must use the veth link on both ends (the hostname resolves to an address the namespace lacks)
        _run([ray, "start", "--head", "--node-ip-address", self.head_ip, "--port", str(self.gcs_port),
              "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
              "--dashboard-agent-listen-port", str(self.agent_port),
              "--num-cpus", "1", "--temp-dir", str(self.root / "head"), "--disable-usage-stats"],
             env=self.env(GLOO_SOCKET_IFNAME=self.link.veth_host), timeout=120)
        _run([*self.link.exec, ray, "start", "--address", f"{self.head_ip}:{self.gcs_port}",
              "--node-ip-address", self.node_ip, "--num-cpus", "1", "--temp-dir", str(self.root / "node"),
              "--disable-usage-stats"], env=self.env(GLOO_SOCKET_IFNAME=self.link.veth_ns), timeout=120)
        return self

    def nodes_alive(self) -> int:
        code = "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"
        env = self.env(RAY_ADDRESS=f"{self.head_ip}:{self.gcs_port}")
        out = _run([str(BIN / "python"), "-c", code], env=env, timeout=120)
        return int(out.stdout.strip().splitlines()[-1])

    def _ours(self, proc: Path) -> bool:
        # Ray's agents rename themselves (ray::DashboardAgent) and the client server outlives `ray start`
        # under init, so the temp dir in the command line alone misses them: they are found by a log file
        # open under the temp dir or by the link name (unique to this cluster) in their environment
        root = str(self.root)
        if root.encode() in (proc / "cmdline").read_bytes():
            return True
        if f"GLOO_SOCKET_IFNAME={self.tag}".encode() in (proc / "environ").read_bytes():
            return True
        for fd in (proc / "fd").iterdir():
            try:
                if os.readlink(fd).startswith(root):
                    return True
            except OSError:
                continue
        return False

    def _our_pids(self) -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if self._ours(d):
                    pids.append(int(d.name))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        for attempt in range(3):
            pids = self._our_pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM if attempt == 0 else signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        self.link.delete()
        shutil.rmtree(self.root, ignore_errors=True)
