"""Network namespaces for CNI tests and the bench: one "host" netns (where the plugins run) and pod netns.

Everything is created by name and removed by name in close(), also after failures; nothing touches
the real host namespace (host-local keeps its leases under the lab's temp dir).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.cni.runner import Runner, ip, netns_path, unique

NODE_V4, NODE_V6 = "10.33.0.1", "fd00:33::1"
UNDERLAY_V4, UNDERLAY_V6 = "10.33.0.0/24", "fd00:33::/64"
BRIDGE_V4 = "10.22.0.0/24"


class Lab:
    def __init__(self, tmp: Path, prefix: str = "egwc") -> None:
        self.tmp = tmp
        self.prefix = unique(prefix)
        self.host = f"{self.prefix}-h"
        self.pods: list[str] = []
        self.state_dir = tmp / "state"
        self.registry_dir = tmp / "registry"
        self.runner = Runner(cache_dir=tmp / "cache", host_netns=self.host)
        ip("netns", "add", self.host)
        ip("link", "set", "lo", "up", netns=self.host)
        self.sysctl(self.host, "net.ipv4.ip_forward", "1")

    def sysctl(self, netns: str, key: str, value: str) -> None:
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"], check=True, capture_output=True)

    def pod(self) -> tuple[str, str]:
        """(netns name, path) of a fresh pod netns."""
        name = f"{self.prefix}-p{len(self.pods)}"
        ip("netns", "add", name)
        self.pods.append(name)
        ip("link", "set", "lo", "up", netns=name)
        return name, netns_path(name)

    def drop_pod(self, name: str) -> None:
        ip("netns", "del", name, check=False)
        if name in self.pods:
            self.pods.remove(name)

    def underlay_parent(self) -> str:
        """A veth in the host netns standing in for the node's physical NIC (macvlan needs a parent)."""
        ip("link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p", netns=self.host)
        ip("addr", "add", f"{NODE_V4}/24", "dev", "uplink0", netns=self.host)
        ip("addr", "add", f"{NODE_V6}/64", "dev", "uplink0", "nodad", netns=self.host)
        ip("link", "set", "uplink0", "up", netns=self.host)
        ip("link", "set", "uplink0p", "up", netns=self.host)
        return "uplink0"

    def ours(self, **extra: Any) -> dict[str, Any]:
        return {"type": "egress-cni", "stateDir": str(self.state_dir), "registryDir": str(self.registry_dir),
                "nodeName": "node-a", "ackTimeoutSeconds": 2, **extra}

    def overlay_conflist(self, name: str = "egw-overlay", **ours: Any) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": name, "plugins": [
            {"type": "bridge", "bridge": "egwbr0", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "subnet": BRIDGE_V4, "dataDir": str(self.tmp / "ipam"),
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            self.ours(**{"mode": "overlay", **ours}),
        ]}

    def underlay_conflist(self, name: str = "egw-underlay", dual: bool = True, **ours: Any) -> dict[str, Any]:
        ranges = [[{"subnet": UNDERLAY_V4, "rangeStart": "10.33.0.10", "rangeEnd": "10.33.0.250"}]]
        if dual:
            ranges.append([{"subnet": UNDERLAY_V6, "rangeStart": "fd00:33::10", "rangeEnd": "fd00:33::ffff"}])
        return {"cniVersion": "1.0.0", "name": name, "plugins": [
            {"type": "macvlan", "master": "uplink0", "mode": "bridge",
             "ipam": {"type": "host-local", "ranges": ranges, "dataDir": str(self.tmp / "ipam")}},
            self.ours(**{"mode": "underlay", "hijackCIDR": ["10.96.0.0/12", "fd00:96::/108"], **ours}),
        ]}

    def close(self) -> None:
        for name in list(self.pods):
            self.drop_pod(name)
        ip("netns", "del", self.host, check=False)
