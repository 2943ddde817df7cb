"""A second host for tests: a network namespace joined to this one by a veth pair. Nothing leaves the
machine; the namespace shares the filesystem, so both ends see the same paths (as a cluster with a
shared filesystem does). Names and the /24 subnet are unique per test run so runs do not collide."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass, field


def free_port() -> int:
    """A TCP port free on loopback now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_make_netns() -> str | None:
    """None if this machine can host a second node, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "the `ip` command (iproute2) is missing"
    return None


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@dataclass
class VethLink:
    """``host_ip`` on this side, ``node_ip`` inside the namespace ``netns``; ``exec`` prefixes a
    command to run it inside."""

    tag: str = field(default_factory=lambda: f"gm{os.getpid() % 10000}{secrets.token_hex(2)}")

    def __post_init__(self):
        octet = 16 + (os.getpid() + int(self.tag[-4:], 16)) % 224
        self.subnet = f"10.231.{octet}"
        self.host_ip, self.node_ip = f"{self.subnet}.1", f"{self.subnet}.2"
        self.netns, self.veth_host, self.veth_ns = self.tag, f"{self.tag}a", f"{self.tag}b"
        self.exec = ["ip", "netns", "exec", self.netns]
        self.up = False

    def create(self) -> VethLink:
        run(["ip", "netns", "add", self.netns])
        self.up = True
        run(["ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns])
        run(["ip", "link", "set", self.veth_ns, "netns", self.netns])
        run(["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.veth_host])
        run(["ip", "link", "set", self.veth_host, "up"])
        run([*self.exec, "ip", "addr", "add", f"{self.node_ip}/24", "dev", self.veth_ns])
        run([*self.exec, "ip", "link", "set", self.veth_ns, "up"])
        run([*self.exec, "ip", "link", "set", "lo", "up"])
        return self

    def delete(self) -> None:
        if self.up:
            subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
            self.up = False
