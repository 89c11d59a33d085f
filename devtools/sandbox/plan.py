"""The sandbox topology as data: names, addresses and subnets, computed once and never mutated.

Everything lives in network namespaces this sandbox creates (prefix `egw-sb-`): an underlay netns
holding one bridge, the control-plane netns, three node netns and the external server's netns,
each attached to the bridge by a veth. The underlay subnet is the walkthrough's own (10.6.168.0/24:
its EgressGateway pool 10.6.168.201-205 and its external server 10.6.168.63 must be on-link), so the
seed YAML applies verbatim. Nothing gets an address in the host namespace.

Pod addresses depend on the CNI the nodes run (`CNI_MODES`): `bridge` and `flannel` give each node a
subnet of 10.244.0.0/16 (an overlay's own range); `macvlan` gives each node a slice of the underlay
itself (10.6.168.96/27, .128/27, .160/27: addresses beside the nodes', like the seed's 10.6.168.208;
below the EIP pools the tests use, .201 and up).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

PREFIX = "egw-sb"
UNDERLAY_V4 = ipaddress.IPv4Network("10.6.168.0/24")
UNDERLAY_V6 = ipaddress.IPv6Network("fd10:6:168::/64")
POD_V4 = "10.244.{index}.0/24"
POD_V6 = "fd44:{index}::/64"
OVERLAY_PODS = ("10.244.0.0/16", "fd44::/16")
UNDERLAY_POD_V4 = "10.6.168.{first}/27"  # first = 64 + 32 * index: node1 .96/27, node2 .128/27, node3 .160/27
UNDERLAY_POD_V6 = "fd10:6:168:0:1:{index}::/96"
CNI_MODES = ("bridge", "macvlan", "flannel")
EXTERNAL_HOST = 63  # the walkthrough's `curl 10.6.168.63:8080`
ROUTER_HOST = 1  # the underlay bridge's own address: every netns' default gateway
CONTROL_PLANE_HOST = 2
NODE_HOST_BASE = 10  # node N is .1N
HTTP_PORT = 8080
TCP_ECHO_PORT = 8081
UDP_ECHO_PORT = 8082
DNS_PORT = 53
STATE_DIR = Path("/run/egressgateway-sandbox")


@dataclass(frozen=True)
class Endpoint:
    """One netns attached to the underlay: its veth pair names and its addresses there."""

    netns: str
    host_veth: str  # the end in the underlay netns, enslaved to the bridge
    ipv4: str
    ipv6: str

    @property
    def device(self) -> str:
        return "eth0"  # the end inside `netns`: the NIC of the default route, as on a real node


@dataclass(frozen=True)
class NodePlan:
    name: str  # the Kubernetes node name
    index: int
    endpoint: Endpoint
    pod_cidr_v4: str
    pod_cidr_v6: str

    @property
    def netns(self) -> str:
        return self.endpoint.netns

    @property
    def pod_bridge(self) -> str:
        return "cni0"  # inside the node netns, so every node can use the same name


@dataclass(frozen=True)
class SandboxPlan:
    underlay_netns: str
    bridge: str
    router_v4: str
    router_v6: str
    control_plane: Endpoint
    external: Endpoint
    nodes: tuple[NodePlan, ...]
    state_dir: Path
    cni: str = "bridge"
    prefix: str = PREFIX

    @property
    def args(self) -> dict[str, object]:
        """What build_plan needs to build this plan again (saved in the sandbox state)."""
        return {"node_count": len(self.nodes), "prefix": self.prefix, "cni": self.cni}

    @property
    def underlay_pods(self) -> bool:
        """Pods live on the underlay segment itself (macvlan): no node routes their subnets."""
        return self.cni == "macvlan"

    @property
    def cluster_pod_cidrs(self) -> tuple[str, ...]:
        """One IPv4 and one IPv6 CIDR holding every node's pods (an overlay's); () for underlay pods,
        whose node slices no single CIDR per family holds."""
        return () if self.underlay_pods else OVERLAY_PODS

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return (self.control_plane, self.external, *(node.endpoint for node in self.nodes))

    @property
    def netns_names(self) -> tuple[str, ...]:
        """Every namespace, the underlay last: removing it last keeps peers' veths valid until then."""
        return (*(e.netns for e in self.endpoints), self.underlay_netns)

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"node {name!r} is not in the sandbox (have {', '.join(n.name for n in self.nodes)})")


def _addresses(host: int) -> tuple[str, str]:
    # The v6 host part reads like the v4 one (.63 -> ::63), easier to recognise in outputs.
    return str(UNDERLAY_V4.network_address + host), str(UNDERLAY_V6.network_address + int(str(host), 16))


def _endpoint(prefix: str, role: str, host: int) -> Endpoint:
    ipv4, ipv6 = _addresses(host)
    return Endpoint(netns=f"{prefix}-{role}", host_veth=f"{prefix}-{role}", ipv4=ipv4, ipv6=ipv6)


def build_plan(node_count: int = 3, state_dir: Path = STATE_DIR, prefix: str = PREFIX, cni: str = "bridge") -> SandboxPlan:
    if cni not in CNI_MODES:
        raise ValueError(f"cni={cni!r}: expected one of {', '.join(CNI_MODES)}")
    if not 1 <= node_count <= (3 if cni == "macvlan" else 9):
        raise ValueError(f"node_count={node_count}: the sandbox supports 1..9 nodes")
    if len(f"{prefix}-node{node_count}") > 15:
        raise ValueError(f"prefix={prefix!r}: veth names `<prefix>-node<N>` must fit in 15 characters")
    router_v4, router_v6 = _addresses(ROUTER_HOST)
    nodes = tuple(
        NodePlan(
            name=f"node{i}", index=i, endpoint=_endpoint(prefix, f"node{i}", NODE_HOST_BASE + i),
            pod_cidr_v4=(UNDERLAY_POD_V4.format(first=64 + 32 * i) if cni == "macvlan" else POD_V4.format(index=i)),
            pod_cidr_v6=(UNDERLAY_POD_V6.format(index=i) if cni == "macvlan" else POD_V6.format(index=i)),
        )
        for i in range(1, node_count + 1)
    )
    return SandboxPlan(
        underlay_netns=f"{prefix}-underlay", bridge="br-underlay", router_v4=router_v4, router_v6=router_v6,
        control_plane=_endpoint(prefix, "cp", CONTROL_PLANE_HOST), external=_endpoint(prefix, "ext", EXTERNAL_HOST),
        nodes=nodes, state_dir=state_dir, cni=cni, prefix=prefix,
    )


def prefix_len_v4() -> int:
    return UNDERLAY_V4.prefixlen


def prefix_len_v6() -> int:
    return UNDERLAY_V6.prefixlen
