"""The node's primary CNI plugin, per sandbox CNI mode (`make sandbox SANDBOX_ARGS=--cni <mode>`).

The chart's init container appends `egress-cni` to whatever this returns (chained after it).
- bridge: `cni0` + host-local on the node's 10.244.x subnet, `ipMasq` (pods leave with the node IP,
  like an overlay CNI), the nodes routing each other's pod subnets (host-gw).
- macvlan: the seed's underlay (Spiderpool's macvlan): pods on a macvlan of the node's underlay link,
  host-local in the node's slice of 10.6.168.0/24 with the underlay router as gateway; they reach
  the segment directly with their own address. Spiderpool's coordinator is not available (its module
  is not served by the Go proxy); our plugin's underlay mode does its job (a veth into the host for
  the node's IPs and the hijacked CIDRs: docs/cni.md).
- flannel: bridge + host-local on the subnet flanneld wrote to `subnet.env` (what flannel's own CNI
  plugin delegates to; that plugin's module is not served either), flanneld's VXLAN between nodes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from devtools.sandbox.plan import NodePlan, SandboxPlan

DEFAULT_ROUTES = [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]


def bridge_plugin(node: NodePlan, ipam_dir: str) -> dict[str, Any]:
    return {
        "type": "bridge", "bridge": node.pod_bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
        "ipam": {"type": "host-local", "dataDir": ipam_dir,
                 "ranges": [[{"subnet": node.pod_cidr_v4}], [{"subnet": node.pod_cidr_v6}]], "routes": DEFAULT_ROUTES},
    }


def _range(cidr: str, subnet: str, gateway: str) -> dict[str, str]:
    """host-local range: the usable addresses of `cidr` (a slice of the node's), allocated in `subnet`."""
    net = ipaddress.ip_network(cidr)
    return {"subnet": subnet, "rangeStart": str(net.network_address + 1), "rangeEnd": str(net.broadcast_address - 1),
            "gateway": gateway}


def macvlan_plugin(plan: SandboxPlan, node: NodePlan, ipam_dir: str) -> dict[str, Any]:
    from devtools.sandbox.plan import UNDERLAY_V4, UNDERLAY_V6

    return {
        "type": "macvlan", "master": node.endpoint.device, "mode": "bridge",
        "ipam": {"type": "host-local", "dataDir": ipam_dir, "routes": DEFAULT_ROUTES, "ranges": [
            [_range(node.pod_cidr_v4, str(UNDERLAY_V4), plan.router_v4)],
            [_range(node.pod_cidr_v6, str(UNDERLAY_V6), plan.router_v6)]]},
    }


def main_plugin(plan: SandboxPlan, node: NodePlan, ipam_dir: str) -> dict[str, Any]:
    if plan.cni == "macvlan":
        return macvlan_plugin(plan, node, ipam_dir)
    if plan.cni == "flannel":
        raise ValueError("flannel: the conflist comes from flanneld's subnet.env (devtools/sandbox/flannel.py)")
    return bridge_plugin(node, ipam_dir)
