"""EgressTunnel (a node's VXLAN endpoint) and EgressClusterInfo (the cluster's own CIDRs)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from egress_cni.api.base import (
    TUNNEL_PHASES,
    Resource,
)
from egress_cni.api.errors import FieldError, join
from egress_cni.api.meta import (
    LENIENT,
    ObjectMeta,
    Raw,
    compact,
    get_bool,
    get_cidr_list,
    get_ip,
    get_mac,
    get_map,
    get_str,
    settle,
    texts,
)
from egress_cni.api.net import IP, Cidr, Mac, as_cidrs, as_ip, as_mac


@dataclass(frozen=True)
class TunnelParent:
    name: str = ""
    ipv4: IP | None = None
    ipv6: IP | None = None
    mac: Mac | None = None  # the agent's report: gateways know this node's un-tunnelled packets by it

    def __post_init__(self) -> None:
        settle(self, ipv4=as_ip(self.ipv4, 4), ipv6=as_ip(self.ipv6, 6), mac=as_mac(self.mac))


_MARK = re.compile(r"(?:0[xX])?[0-9a-fA-F]{1,8}")


def parse_mark(text: str) -> int | None:
    """A tunnel's fwmark as the controller writes it (hexadecimal, `0x` optional, 32 bits); None if malformed."""
    return int(text, 16) if _MARK.fullmatch(text) else None


@dataclass(frozen=True)
class TunnelStatus:
    ipv4: IP | None = None
    ipv6: IP | None = None
    mac: Mac | None = None
    parent: TunnelParent = TunnelParent()
    phase: str = ""
    mark: str = ""
    last_heartbeat_time: str = ""

    def __post_init__(self) -> None:
        settle(self, ipv4=as_ip(self.ipv4, 4), ipv6=as_ip(self.ipv6, 6), mac=as_mac(self.mac))

    @classmethod
    def parse(cls, raw: Raw, path: str) -> TunnelStatus:
        tunnel = get_map(raw, "tunnel", path)
        tpath = join(path, "tunnel")
        parent = get_map(tunnel, "parent", tpath)
        ppath = join(tpath, "parent")
        phase = get_str(raw, "phase", path)
        if phase and phase not in TUNNEL_PHASES:
            raise FieldError(join(path, "phase"), phase, f"must be one of {', '.join(TUNNEL_PHASES)}")
        mark = get_str(raw, "mark", path)
        if mark and parse_mark(mark) is None:
            raise FieldError(join(path, "mark"), mark, "must be a 32-bit hexadecimal mark such as 0x26000001")
        return cls(
            ipv4=get_ip(tunnel, "ipv4", tpath, 4), ipv6=get_ip(tunnel, "ipv6", tpath, 6), mac=get_mac(tunnel, "mac", tpath),
            parent=TunnelParent(get_str(parent, "name", ppath), get_ip(parent, "ipv4", ppath, 4), get_ip(parent, "ipv6", ppath, 6),
                                get_mac(parent, "mac", ppath)),
            phase=phase, mark=mark, last_heartbeat_time=get_str(raw, "lastHeartbeatTime", path),
        )

    @property
    def fwmark(self) -> int | None:
        """The mark as a number; None when absent (or malformed in an object built without parse)."""
        return parse_mark(self.mark) if self.mark else None

    def to_dict(self) -> dict[str, Any]:
        parent = compact({"name": self.parent.name, "ipv4": self.parent.ipv4, "ipv6": self.parent.ipv6,
                          "mac": self.parent.mac})
        return compact({
            "tunnel": compact({"ipv4": self.ipv4, "ipv6": self.ipv6, "mac": self.mac, "parent": parent}),
            "phase": self.phase,
            "mark": self.mark,
            "lastHeartbeatTime": self.last_heartbeat_time,
        })


@dataclass(frozen=True)
class IPLists:
    """Addresses or CIDRs of each family (a bare address is a host prefix)."""

    ipv4: tuple[Cidr, ...] = ()
    ipv6: tuple[Cidr, ...] = ()

    def __post_init__(self) -> None:
        settle(self, ipv4=as_cidrs(self.ipv4, LENIENT), ipv6=as_cidrs(self.ipv6, LENIENT))

    @classmethod
    def parse(cls, raw: Any, path: str) -> IPLists:
        if not isinstance(raw, Mapping):
            raise FieldError(path, raw, "must be an object with ipv4 and ipv6 lists")
        return cls(_family_list(raw, "ipv4", path, 4), _family_list(raw, "ipv6", path, 6))

    def to_dict(self) -> dict[str, Any]:
        return compact({"ipv4": texts(self.ipv4), "ipv6": texts(self.ipv6)})


def _family_list(raw: Raw, key: str, path: str, family: int) -> tuple[Cidr, ...]:
    values = get_cidr_list(raw, key, path)
    for i, c in enumerate(values):
        if c.family != family:
            raise FieldError(join(join(path, key), i), c.given, f"is not IPv{family}")
    return values


POD_CIDR_MODES = ("auto", "calico", "k8s", "")


@dataclass(frozen=True)
class ClusterInfoSpec:
    pod_cidr_mode: str = "auto"
    cluster_ip: bool = True
    node_ip: bool = True
    extra_cidr: tuple[Cidr, ...] = ()

    def __post_init__(self) -> None:
        settle(self, extra_cidr=as_cidrs(self.extra_cidr, LENIENT))

    @classmethod
    def parse(cls, raw: Raw, path: str) -> ClusterInfoSpec:
        auto = get_map(raw, "autoDetect", path)
        apath = join(path, "autoDetect")
        mode = get_str(auto, "podCidrMode", apath, "auto")
        if mode not in POD_CIDR_MODES:
            raise FieldError(join(apath, "podCidrMode"), mode, "must be auto, calico, k8s or empty")
        return cls(mode, get_bool(auto, "clusterIP", apath, True), get_bool(auto, "nodeIP", apath, True),
                   get_cidr_list(raw, "extraCidr", path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"autoDetect": {"podCidrMode": self.pod_cidr_mode, "clusterIP": self.cluster_ip, "nodeIP": self.node_ip}}
        if self.extra_cidr:
            out["extraCidr"] = texts(self.extra_cidr)
        return out


@dataclass(frozen=True)
class ClusterInfoStatus:
    pod_cidr_mode: str = ""
    node_ip: Mapping[str, IPLists] = field(default_factory=dict)
    cluster_ip: IPLists = IPLists()
    pod_cidr: Mapping[str, IPLists] = field(default_factory=dict)
    extra_cidr: tuple[Cidr, ...] = ()

    def __post_init__(self) -> None:
        settle(self, extra_cidr=as_cidrs(self.extra_cidr, LENIENT))

    @classmethod
    def parse(cls, raw: Raw, path: str) -> ClusterInfoStatus:
        def lists_map(key: str) -> dict[str, IPLists]:
            return {k: IPLists.parse(v, join(join(path, key), k)) for k, v in get_map(raw, key, path).items()}

        cluster_ip = raw.get("clusterIP")
        return cls(
            pod_cidr_mode=get_str(raw, "podCidrMode", path),
            node_ip=lists_map("nodeIP"),
            cluster_ip=IPLists() if cluster_ip is None else IPLists.parse(cluster_ip, join(path, "clusterIP")),
            pod_cidr=lists_map("podCIDR"),
            extra_cidr=get_cidr_list(raw, "extraCidr", path),
        )

    def to_dict(self) -> dict[str, Any]:
        return compact({
            "podCidrMode": self.pod_cidr_mode,
            "nodeIP": {k: v.to_dict() for k, v in sorted(self.node_ip.items())},
            "clusterIP": self.cluster_ip.to_dict(),
            "podCIDR": {k: v.to_dict() for k, v in sorted(self.pod_cidr.items())},
            "extraCidr": texts(self.extra_cidr),
        })


@dataclass(frozen=True)
class EgressTunnel(Resource):
    KIND: ClassVar[str] = "EgressTunnel"
    PLURAL: ClassVar[str] = "egresstunnels"
    SHORT_NAME: ClassVar[str] = "egt"

    status: TunnelStatus = TunnelStatus()

    @classmethod
    def parse(cls, raw: Raw) -> EgressTunnel:
        return cls(ObjectMeta.parse(get_map(raw, "metadata", "")), TunnelStatus.parse(get_map(raw, "status", ""), "status"))

    def to_dict(self) -> dict[str, Any]:
        return self._envelope() | {"spec": {}, "status": self.status.to_dict()}


@dataclass(frozen=True)
class EgressClusterInfo(Resource):
    KIND: ClassVar[str] = "EgressClusterInfo"
    PLURAL: ClassVar[str] = "egressclusterinfos"
    SHORT_NAME: ClassVar[str] = "egci"

    spec: ClusterInfoSpec = ClusterInfoSpec()
    status: ClusterInfoStatus = ClusterInfoStatus()

    @classmethod
    def parse(cls, raw: Raw) -> EgressClusterInfo:
        return cls(ObjectMeta.parse(get_map(raw, "metadata", "")), ClusterInfoSpec.parse(get_map(raw, "spec", ""), "spec"),
                   ClusterInfoStatus.parse(get_map(raw, "status", ""), "status"))

    def to_dict(self) -> dict[str, Any]:
        status = self.status.to_dict()
        return self._envelope() | {"spec": self.spec.to_dict()} | ({"status": status} if status else {})
