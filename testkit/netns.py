"""A private network namespace joined to the host by a veth pair, for link faults.

The DR site's traffic is sent across the pair, where `tc tbf` limits its rate in
each direction; a user-space relay (testkit.relay) listening inside the
namespace adds delay, stalls or cuts. The pair's addresses come from 198.18.0.0/15,
the block reserved for network benchmarks, so they cannot collide with a real
network; nothing is routed beyond the pair. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from logship.demo_sandbox.osuser import is_root

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_BENCH_BLOCK = ipaddress.ip_network("198.18.0.0/15")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True, timeout=30)


def why_unavailable() -> str | None:
    """Why link faults cannot be injected here, or None if they can."""
    if not is_root():
        return "network namespaces and tc need root"
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode:
            return f"{tool} (iproute2) is not installed"
    return None


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _used_networks() -> set[ipaddress.IPv4Network]:
    out = _ip("-o", "-4", "addr", "show").stdout
    used = set()
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.add(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    return used


@dataclass
class SiteLink:
    """Host <-> namespace veth pair; `ns_ip` is the site's address as seen from here."""

    netns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    @classmethod
    def create(cls) -> SiteLink:
        tag = secrets.token_hex(3)
        used = _used_networks()
        # A /30 in the benchmark block that no interface here is using.
        for _ in range(64):
            index = secrets.randbelow(2**15)  # any of the /15's /30s
            net = ipaddress.ip_network(f"{_BENCH_BLOCK[0] + index * 4}/30")
            if net not in used:
                break
        else:
            raise RuntimeError("no free /30 in 198.18.0.0/15")
        host_ip, ns_ip = (str(a) for a in list(net.hosts())[:2])
        link = cls(f"logship-{tag}", f"lsh{tag}", f"lsn{tag}", host_ip, ns_ip)
        try:
            _ip("netns", "add", link.netns)
            _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
            _ip("link", "set", link.ns_if, "netns", link.netns)
            _ip("addr", "add", f"{host_ip}/30", "dev", link.host_if)
            _ip("link", "set", link.host_if, "up")
            link.in_ns("ip", "addr", "add", f"{ns_ip}/30", "dev", link.ns_if)
            link.in_ns("ip", "link", "set", link.ns_if, "up")
            link.in_ns("ip", "link", "set", "lo", "up")
        except BaseException:
            link.destroy()
            raise
        return link

    def in_ns(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )

    def shape(self, mbit: float) -> None:
        """Limit each direction to `mbit` with a token bucket (no netem here)."""
        rate_bytes = mbit * 1e6 / 8
        # The bucket must hold at least one timer tick's worth (HZ may be 100).
        burst = max(int(rate_bytes / 100), 64 * 1024)
        args = ["qdisc", "replace", "dev"]
        tbf = ["root", "tbf", "rate", f"{mbit}mbit", "burst", str(burst), "latency", "50ms"]
        subprocess.run(["tc", *args, self.host_if, *tbf], check=True, capture_output=True)
        self.in_ns("tc", *args, self.ns_if, *tbf)

    def unshape(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(
                ["tc", "qdisc", "del", "dev", self.host_if, "root"], check=True, capture_output=True
            )
        with contextlib.suppress(subprocess.CalledProcessError):
            self.in_ns("tc", "qdisc", "del", "dev", self.ns_if, "root")

    def destroy(self) -> None:
        # Deleting the namespace deletes its end of the pair, and with it ours.
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
