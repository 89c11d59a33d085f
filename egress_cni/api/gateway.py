"""EgressGateway: EIP pools, gateway nodes, and where each EIP lives (status)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from egress_cni.api.base import (
    Resource,
    conditions_dict,
    selector_at,
)
from egress_cni.api.errors import FieldError, join
from egress_cni.api.meta import (
    Condition,
    ObjectMeta,
    Raw,
    compact,
    get_bool,
    get_int,
    get_ip,
    get_list,
    get_map,
    get_str,
    get_str_list,
    parse_conditions,
    settle,
)
from egress_cni.api.net import IP, as_ip
from egress_cni.api.pools import IPPool, parsed_pool
from egress_cni.api.selectors import LabelSelector


@dataclass(frozen=True)
class GatewayPools:
    """The pools as written (`ipv4`, `ipv6`: entries kept for round trips) and as parsed
    (`pool(version)`: interval sets, built once when the object is built)."""

    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    ipv4_default_eip: IP | None = None
    ipv6_default_eip: IP | None = None
    pools: tuple[IPPool, IPPool] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        settle(self, ipv4_default_eip=as_ip(self.ipv4_default_eip, 4), ipv6_default_eip=as_ip(self.ipv6_default_eip, 6))
        object.__setattr__(self, "pools", (parsed_pool(self.ipv4, 4, "spec.ippools.ipv4"),
                                           parsed_pool(self.ipv6, 6, "spec.ippools.ipv6")))

    @classmethod
    def parse(cls, raw: Raw, path: str) -> GatewayPools:
        return cls(
            ipv4=get_str_list(raw, "ipv4", path),
            ipv6=get_str_list(raw, "ipv6", path),
            ipv4_default_eip=get_ip(raw, "ipv4DefaultEIP", path, 4),
            ipv6_default_eip=get_ip(raw, "ipv6DefaultEIP", path, 6),
        )

    def pool(self, version: int) -> IPPool:
        return self.pools[0] if version == 4 else self.pools[1]

    def default_eip(self, version: int) -> IP | None:
        return self.ipv4_default_eip if version == 4 else self.ipv6_default_eip

    def to_dict(self) -> dict[str, Any]:
        return compact({
            "ipv4": list(self.ipv4),
            "ipv6": list(self.ipv6),
            "ipv4DefaultEIP": self.ipv4_default_eip,
            "ipv6DefaultEIP": self.ipv6_default_eip,
        })


@dataclass(frozen=True)
class NodeSelector:
    selector: LabelSelector | None = None
    policy: str = ""  # accepted for compatibility; placement is always least-loaded

    @classmethod
    def parse(cls, raw: Raw, path: str) -> NodeSelector:
        return cls(selector=selector_at(raw, "selector", path), policy=get_str(raw, "policy", path))

    def to_dict(self) -> dict[str, Any]:
        return compact({
            "policy": self.policy,
            "selector": self.selector.to_dict() if self.selector is not None else None,
        }) | ({"selector": {}} if self.selector is not None and self.selector.empty else {})


@dataclass(frozen=True)
class PolicyRef:
    name: str
    namespace: str = ""  # "" for an EgressClusterPolicy

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class EipStatus:
    ipv4: IP | None = None
    ipv6: IP | None = None  # both None: the useNodeIP bucket
    policies: tuple[PolicyRef, ...] = ()
    # The other eligible nodes of the gateway that take this EIP over, in order (first alive first),
    # when its node is lost; the controller computes them, agents follow them without the API.
    standbys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        settle(self, ipv4=as_ip(self.ipv4, 4), ipv6=as_ip(self.ipv6, 6))


@dataclass(frozen=True)
class GatewayNodeStatus:
    name: str
    status: str = ""
    eips: tuple[EipStatus, ...] = ()


@dataclass(frozen=True)
class IPUsage:
    ipv4_total: int = 0
    ipv4_free: int = 0
    ipv6_total: int = 0
    ipv6_free: int = 0


@dataclass(frozen=True)
class GatewayStatus:
    node_list: tuple[GatewayNodeStatus, ...] = ()
    ip_usage: IPUsage = IPUsage()
    conditions: tuple[Condition, ...] = ()
    observed_generation: int = 0

    @classmethod
    def parse(cls, raw: Raw, path: str) -> GatewayStatus:
        nodes = []
        for i, n in enumerate(get_list(raw, "nodeList", path)):
            npath = join(join(path, "nodeList"), i)
            if not isinstance(n, Mapping):
                raise FieldError(npath, n, "must be an object")
            eips = []
            for j, e in enumerate(get_list(n, "eips", npath)):
                epath = join(join(npath, "eips"), j)
                if not isinstance(e, Mapping):
                    raise FieldError(epath, e, "must be an object")
                refs = tuple(
                    PolicyRef(get_str(p, "name", epath), get_str(p, "namespace", epath))
                    for p in get_list(e, "policies", epath)
                    if isinstance(p, Mapping)
                )
                eips.append(EipStatus(get_ip(e, "ipv4", epath, 4), get_ip(e, "ipv6", epath, 6), refs,
                                      get_str_list(e, "standbys", epath)))
            nodes.append(GatewayNodeStatus(get_str(n, "name", npath), get_str(n, "status", npath), tuple(eips)))
        usage = get_map(raw, "ipUsage", path)
        upath = join(path, "ipUsage")
        return cls(
            node_list=tuple(nodes),
            ip_usage=IPUsage(
                get_int(usage, "ipv4Total", upath), get_int(usage, "ipv4Free", upath),
                get_int(usage, "ipv6Total", upath), get_int(usage, "ipv6Free", upath),
            ),
            conditions=parse_conditions(raw, path),
            observed_generation=get_int(raw, "observedGeneration", path),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ipUsage": {
                "ipv4Total": self.ip_usage.ipv4_total, "ipv4Free": self.ip_usage.ipv4_free,
                "ipv6Total": self.ip_usage.ipv6_total, "ipv6Free": self.ip_usage.ipv6_free,
            },
        }
        if self.node_list:
            out["nodeList"] = [
                compact({
                    "name": n.name,
                    "status": n.status,
                    "eips": [
                        compact({
                            "ipv4": e.ipv4,
                            "ipv6": e.ipv6,
                            "policies": [compact({"name": p.name, "namespace": p.namespace}) for p in e.policies],
                            "standbys": list(e.standbys),
                        }) for e in n.eips
                    ],
                }) for n in self.node_list
            ]
        if self.conditions:
            out["conditions"] = conditions_dict(self.conditions)
        if self.observed_generation:
            out["observedGeneration"] = self.observed_generation
        return out


@dataclass(frozen=True)
class GatewaySpec:
    ippools: GatewayPools = GatewayPools()
    node_selector: NodeSelector = NodeSelector()
    cluster_default: bool = False
    # The namespaces whose EgressPolicies may use the gateway; None (absent): every namespace.
    namespace_selector: LabelSelector | None = None

    @classmethod
    def parse(cls, raw: Raw, path: str) -> GatewaySpec:
        return cls(
            ippools=GatewayPools.parse(get_map(raw, "ippools", path), join(path, "ippools")),
            node_selector=NodeSelector.parse(get_map(raw, "nodeSelector", path), join(path, "nodeSelector")),
            cluster_default=get_bool(raw, "clusterDefault", path),
            namespace_selector=selector_at(raw, "namespaceSelector", path),
        )

    def to_dict(self) -> dict[str, Any]:
        selector = self.namespace_selector
        return compact({
            "clusterDefault": self.cluster_default or None,
            "ippools": self.ippools.to_dict(),
            "nodeSelector": self.node_selector.to_dict(),
        }) | ({} if selector is None else {"namespaceSelector": selector.to_dict()})


@dataclass(frozen=True)
class EgressGateway(Resource):
    KIND: ClassVar[str] = "EgressGateway"
    PLURAL: ClassVar[str] = "egressgateways"
    SHORT_NAME: ClassVar[str] = "egw"

    spec: GatewaySpec = GatewaySpec()
    status: GatewayStatus = GatewayStatus()

    @classmethod
    def parse(cls, raw: Raw) -> EgressGateway:
        return cls(ObjectMeta.parse(get_map(raw, "metadata", "")), GatewaySpec.parse(get_map(raw, "spec", ""), "spec"),
                   GatewayStatus.parse(get_map(raw, "status", ""), "status"))

    def to_dict(self) -> dict[str, Any]:
        out = self._envelope() | {"spec": self.spec.to_dict()}
        return out | ({"status": self.status.to_dict()} if self.status != GatewayStatus() else {})
