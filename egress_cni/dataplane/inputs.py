"""Everything `compute.desired_dataplane` reads: the cluster objects, this node's facts, the settings.

The agent's sources (YAML files in tests, Kubernetes informers in production) fill `ClusterState`;
the apply layer reads `NodeFacts` from the kernel. Keeping both as plain frozen values is what lets
golden tests render a node's whole dataplane without root.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from egress_cni.api.model import (
    EgressClusterInfo,
    EgressEndpointSlice,
    EgressGateway,
    EgressPolicy,
    EgressTunnel,
)
from egress_cni.api.net import IP, AddressError, parse_ip
from egress_cni.registry import HOST_VETH_PREFIX


@dataclass(frozen=True)
class LocalEndpoint:
    """A pod attachment the CNI plugin registered on this node (registry endpoints/<key>.json)."""

    key: str
    namespace: str
    pod: str
    ipv4: tuple[IP, ...] = ()
    ipv6: tuple[IP, ...] = ()
    underlay: bool = False  # the plugin gave the pod a host veth (its own interface is macvlan, ipvlan, ...)

    @classmethod
    def of(cls, key: str, namespace: str, pod: str, ipv4: Iterable[str], ipv6: Iterable[str],
           underlay: bool = False) -> LocalEndpoint:
        """From the registry's text. Our plugin validated these addresses before writing them; one
        that still does not parse cannot be programmed, and must not stop the endpoints next to it."""
        return cls(key, namespace, pod, tuple(ip for t in ipv4 if (ip := _address(t, 4)) is not None),
                   tuple(ip for t in ipv6 if (ip := _address(t, 6)) is not None), underlay)


def _address(text: str, family: int) -> IP | None:
    try:
        return parse_ip(text, family)
    except AddressError:
        return None


@dataclass(frozen=True)
class ClusterState:
    policies: tuple[EgressPolicy, ...] = ()  # EgressPolicy and EgressClusterPolicy
    gateways: tuple[EgressGateway, ...] = ()
    slices: tuple[EgressEndpointSlice, ...] = ()  # EgressEndpointSlice and EgressClusterEndpointSlice
    tunnels: tuple[EgressTunnel, ...] = ()
    cluster_info: EgressClusterInfo | None = None
    local_endpoints: tuple[LocalEndpoint, ...] = ()
    pod_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # "ns/pod" of local pods
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # policy key -> node serving it by a peer takeover the API has not caught up with (agent/peers.py)
    overrides: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeFacts:
    name: str
    parent: str  # underlay link carrying the VXLAN and the EIPs
    parent_ipv4: str = ""
    parent_ipv6: str = ""
    parent_mtu: int = 1500
    ipv4: bool = True
    ipv6: bool = False
    carrier: bool = True  # False: the parent link lost its carrier (uplink down), so we answer for no EIP
    eip_dev: str = ""  # the link IPv4 EIPs live on: the agent's EIP holder (dataplane/eipdev.py); "": the parent
    parent_mac: str = ""  # the parent's MAC, reported in the EgressTunnel: gateways know direct arrivals by it
    onlink: tuple[str, ...] = ()  # connected prefixes of the parent ("10.100.0.0/24"): peers inside are on-link
    rp_filter: int = 0  # effective net.ipv4.conf.{all,<parent>}.rp_filter (the larger); 1 = strict


# How packets reach a gateway node (Calico's names): the tunnel to every peer, no tunnel to on-link
# peers, or no tunnel at all (an off-link gateway's traffic is then dropped as for no gateway).
ALWAYS, CROSS_SUBNET, NEVER = "Always", "CrossSubnet", "Never"
VXLAN_MODES = (ALWAYS, CROSS_SUBNET, NEVER)


@dataclass(frozen=True)
class DataplaneConfig:
    vxlan_name: str = "egress.vxlan"
    vxlan_mode: str = ALWAYS  # docs/dataplane.md, No encapsulation: why Always is the default
    vni: int = 100
    port: int = 7789
    mtu: int = 0  # 0: parent MTU minus the VXLAN overhead of the underlay family
    rule_priority: int = 99
    mark_base: int = 0x26000000  # every mark we set has these bits under mark_mask
    mark_mask: int = 0xFF000000
    eip_proto: int = 0x45  # IFA_PROTO on EIP addresses: how we find ours after a restart
    eip_lifetime: int = 1  # seconds: valid lifetime of EIP addresses, renewed by the agent's fencing thread
    eip_dev: str = "egress.eip"  # the EIP holder: a TUN device that dies with the agent (dataplane/eipdev.py)
    chain_prefix: str = "EGRESS"
    ipset_prefix: str = "egress"
    host_veth_prefix: str = HOST_VETH_PREFIX  # the plugin's hostVethPrefix: underlay pods enter the host by `<prefix>+`

    @property
    def mangle_chain(self) -> str:
        return f"{self.chain_prefix}-PREROUTING"

    @property
    def nat_chain(self) -> str:
        return f"{self.chain_prefix}-POSTROUTING"

    @property
    def filter_chain(self) -> str:
        return f"{self.chain_prefix}-FORWARD"

    @property
    def raw_in_chain(self) -> str:
        return f"{self.chain_prefix}-PREROUTING"  # in raw

    @property
    def raw_out_chain(self) -> str:
        return f"{self.chain_prefix}-OUTPUT"  # in raw

    @property
    def mangle_post_chain(self) -> str:
        return f"{self.chain_prefix}-POSTROUTING"  # in mangle; the nat chain of the same name is another chain

    def owns_mark(self, mark: int) -> bool:
        return mark & self.mark_mask == self.mark_base
