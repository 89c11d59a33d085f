"""EgressPolicy and EgressClusterPolicy, and the endpoint slices that list the pods they select."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from egress_cni.api.base import (
    ALLOCATOR_DEFAULT,
    Resource,
    conditions_dict,
    selector_at,
)
from egress_cni.api.errors import FieldError, join
from egress_cni.api.gateway import PolicyRef
from egress_cni.api.meta import (
    LENIENT,
    Condition,
    ObjectMeta,
    Raw,
    compact,
    get_bool,
    get_cidr_list,
    get_int,
    get_ip,
    get_ip_list,
    get_list,
    get_map,
    get_str,
    parse_conditions,
    settle,
    texts,
)
from egress_cni.api.names import slice_policy
from egress_cni.api.net import IP, AddressError, Cidr, as_cidrs, as_ip, as_ips, parse_ip
from egress_cni.api.selectors import LabelSelector


@dataclass(frozen=True)
class EgressIP:
    ipv4: IP | None = None
    ipv6: IP | None = None
    use_node_ip: bool = False
    allocator_policy: str = ALLOCATOR_DEFAULT

    def __post_init__(self) -> None:
        settle(self, ipv4=as_ip(self.ipv4, 4), ipv6=as_ip(self.ipv6, 6))

    @classmethod
    def parse(cls, raw: Raw, path: str) -> EgressIP:
        return cls(
            ipv4=get_ip(raw, "ipv4", path, 4),
            ipv6=get_ip(raw, "ipv6", path, 6),
            use_node_ip=get_bool(raw, "useNodeIP", path),
            allocator_policy=get_str(raw, "allocatorPolicy", path) or ALLOCATOR_DEFAULT,
        )

    def to_dict(self) -> dict[str, Any]:
        return compact({"ipv4": self.ipv4, "ipv6": self.ipv6}) | {
            "allocatorPolicy": self.allocator_policy,
            "useNodeIP": self.use_node_ip,
        }


@dataclass(frozen=True)
class AppliedTo:
    pod_selector: LabelSelector | None = None
    pod_subnet: tuple[Cidr, ...] = ()
    namespace_selector: LabelSelector | None = None  # EgressClusterPolicy only

    def __post_init__(self) -> None:
        settle(self, pod_subnet=as_cidrs(self.pod_subnet, LENIENT))

    @classmethod
    def parse(cls, raw: Raw, path: str, *, cluster: bool) -> AppliedTo:
        if not cluster and raw.get("namespaceSelector") is not None:
            raise FieldError(join(path, "namespaceSelector"), raw["namespaceSelector"],
                             "an EgressPolicy applies to its own namespace only; use an EgressClusterPolicy to select namespaces")
        return cls(
            pod_selector=selector_at(raw, "podSelector", path),
            pod_subnet=get_cidr_list(raw, "podSubnet", path),
            namespace_selector=selector_at(raw, "namespaceSelector", path) if cluster else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pod_selector is not None:
            out["podSelector"] = self.pod_selector.to_dict()
        if self.pod_subnet:
            out["podSubnet"] = texts(self.pod_subnet)
        if self.namespace_selector is not None:
            out["namespaceSelector"] = self.namespace_selector.to_dict()
        return out


@dataclass(frozen=True)
class PolicySpec:
    applied_to: AppliedTo = AppliedTo()
    egress_gateway_name: str = ""
    egress_ip: EgressIP | None = None  # None: absent (the CRD then defaults it)
    dest_subnet: tuple[Cidr, ...] = ()
    priority: int | None = None

    def __post_init__(self) -> None:
        settle(self, dest_subnet=as_cidrs(self.dest_subnet, LENIENT))

    @classmethod
    def parse(cls, raw: Raw, path: str, *, cluster: bool) -> PolicySpec:
        egress_ip = raw.get("egressIP")
        priority = raw.get("priority")
        if priority is not None:
            priority = get_int(raw, "priority", path)
            if priority < 0:
                raise FieldError(join(path, "priority"), priority, "must be zero or positive")
        return cls(
            applied_to=AppliedTo.parse(get_map(raw, "appliedTo", path), join(path, "appliedTo"), cluster=cluster),
            egress_gateway_name=get_str(raw, "egressGatewayName", path),
            egress_ip=None if egress_ip is None else EgressIP.parse(get_map(raw, "egressIP", path), join(path, "egressIP")),
            dest_subnet=get_cidr_list(raw, "destSubnet", path),
            priority=priority,
        )

    @property
    def eip(self) -> EgressIP:
        """egressIP with the CRD default applied."""
        return self.egress_ip or EgressIP()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"appliedTo": self.applied_to.to_dict()}
        if self.egress_gateway_name:
            out["egressGatewayName"] = self.egress_gateway_name
        if self.egress_ip is not None:
            out["egressIP"] = self.egress_ip.to_dict()
        if self.dest_subnet:
            out["destSubnet"] = texts(self.dest_subnet)
        if self.priority is not None:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class PolicyStatus:
    eip_ipv4: IP | None = None
    eip_ipv6: IP | None = None
    node: str = ""
    conditions: tuple[Condition, ...] = ()
    observed_generation: int = 0

    def __post_init__(self) -> None:
        settle(self, eip_ipv4=as_ip(self.eip_ipv4, 4), eip_ipv6=as_ip(self.eip_ipv6, 6))

    @classmethod
    def parse(cls, raw: Raw, path: str) -> PolicyStatus:
        eip = get_map(raw, "eip", path)
        return cls(
            eip_ipv4=get_ip(eip, "ipv4", join(path, "eip"), 4),
            eip_ipv6=get_ip(eip, "ipv6", join(path, "eip"), 6),
            node=get_str(raw, "node", path),
            conditions=parse_conditions(raw, path),
            observed_generation=get_int(raw, "observedGeneration", path),
        )

    def to_dict(self) -> dict[str, Any]:
        return compact({
            "eip": compact({"ipv4": self.eip_ipv4, "ipv6": self.eip_ipv6}),
            "node": self.node,
            "conditions": conditions_dict(self.conditions),
            "observedGeneration": self.observed_generation or None,
        })


@dataclass(frozen=True)
class Endpoint:
    ns: str
    pod: str
    node: str = ""
    ipv4: tuple[IP, ...] = ()
    ipv6: tuple[IP, ...] = ()

    @classmethod
    def of(cls, ns: str, pod: str, node: str = "", ipv4: Iterable[str] = (), ipv6: Iterable[str] = ()) -> Endpoint:
        """Built in code from address text (tests, tools)."""
        return cls(ns, pod, node, as_ips(tuple(ipv4), 4), as_ips(tuple(ipv6), 6))

    @classmethod
    def parse(cls, raw: Any, path: str) -> Endpoint:
        """A slice holds up to 100 of these and a cluster 10,000s: the common, valid shape takes a fast
        path; anything else goes through the checked readers for their error messages."""
        if not isinstance(raw, Mapping):
            raise FieldError(path, raw, "must be an object")
        ns, pod, node, v4, v6 = raw.get("ns"), raw.get("pod"), raw.get("node", ""), raw.get("ipv4", ()), raw.get("ipv6", ())
        if type(ns) is str and type(pod) is str and type(node) is str and type(v4) in (list, tuple) \
                and type(v6) in (list, tuple):
            try:
                return cls(ns, pod, node, tuple(parse_ip(t, 4) for t in v4), tuple(parse_ip(t, 6) for t in v6))
            except (AddressError, TypeError):
                pass  # the checked path names the field
        return cls(
            ns=get_str(raw, "ns", path), pod=get_str(raw, "pod", path), node=get_str(raw, "node", path),
            ipv4=get_ip_list(raw, "ipv4", path, 4), ipv6=get_ip_list(raw, "ipv6", path, 6),
        )

    def to_dict(self) -> dict[str, Any]:
        return compact({"ipv4": list(self.ipv4), "ipv6": list(self.ipv6), "node": self.node, "ns": self.ns, "pod": self.pod})


@dataclass(frozen=True)
class EgressPolicy(Resource):
    KIND: ClassVar[str] = "EgressPolicy"
    PLURAL: ClassVar[str] = "egresspolicies"
    SHORT_NAME: ClassVar[str] = "egp"
    NAMESPACED: ClassVar[bool] = True

    spec: PolicySpec = PolicySpec()
    status: PolicyStatus = PolicyStatus()

    @classmethod
    def parse(cls, raw: Raw) -> EgressPolicy:
        return cls(ObjectMeta.parse(get_map(raw, "metadata", "")),
                   PolicySpec.parse(get_map(raw, "spec", ""), "spec", cluster=cls is EgressClusterPolicy),
                   PolicyStatus.parse(get_map(raw, "status", ""), "status"))

    @property
    def ref(self) -> PolicyRef:
        return PolicyRef(self.metadata.name, self.metadata.namespace if self.NAMESPACED else "")

    def to_dict(self) -> dict[str, Any]:
        out = self._envelope() | {"spec": self.spec.to_dict()}
        status = self.status.to_dict()
        return out | ({"status": status} if status else {})


@dataclass(frozen=True)
class EgressClusterPolicy(EgressPolicy):
    KIND: ClassVar[str] = "EgressClusterPolicy"
    PLURAL: ClassVar[str] = "egressclusterpolicies"
    SHORT_NAME: ClassVar[str] = "egcp"
    NAMESPACED: ClassVar[bool] = False


@dataclass(frozen=True)
class EgressEndpointSlice(Resource):
    KIND: ClassVar[str] = "EgressEndpointSlice"
    PLURAL: ClassVar[str] = "egressendpointslices"
    SHORT_NAME: ClassVar[str] = "egep"
    NAMESPACED: ClassVar[bool] = True
    POLICY_KIND: ClassVar[str] = "EgressPolicy"  # the kind of the policy owning the slice

    endpoints: tuple[Endpoint, ...] = ()

    @classmethod
    def parse(cls, raw: Raw) -> EgressEndpointSlice:
        return cls(ObjectMeta.parse(get_map(raw, "metadata", "")),
                   tuple(Endpoint.parse(e, join("endpoints", i)) for i, e in enumerate(get_list(raw, "endpoints", ""))))

    @property
    def policy_name(self) -> str:
        return slice_policy(self.metadata.owner_references, self.metadata.labels, self.POLICY_KIND)

    def to_dict(self) -> dict[str, Any]:
        return self._envelope() | {"endpoints": [e.to_dict() for e in self.endpoints]}


@dataclass(frozen=True)
class EgressClusterEndpointSlice(EgressEndpointSlice):
    KIND: ClassVar[str] = "EgressClusterEndpointSlice"
    PLURAL: ClassVar[str] = "egressclusterendpointslices"
    SHORT_NAME: ClassVar[str] = "egcep"
    NAMESPACED: ClassVar[bool] = False
    POLICY_KIND: ClassVar[str] = "EgressClusterPolicy"
