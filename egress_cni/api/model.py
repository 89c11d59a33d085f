"""The seven kinds of `egressgateway.spidernet.io/v1beta1` as frozen dataclasses.

`parse_object(raw)` turns the Kubernetes JSON of any of them into its dataclass (raising
`FieldError` that names the field path), and `obj.to_dict()` turns it back. Fields, defaults and
meanings follow the reference API (docs/api.md); serialisation omits empty fields the way the Go
types' `omitempty` does, except where the reference always writes a field (`ipUsage`).

Parsing checks types and syntax only. Cross-object rules (an EIP inside its gateway's pool, one
cluster-default gateway, ...) are the webhook's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from egress_cni.api import API_VERSION
from egress_cni.api.errors import FieldError, join
from egress_cni.api.meta import (
    Condition,
    ObjectMeta,
    Raw,
    compact,
    get_bool,
    get_int,
    get_list,
    get_map,
    get_str,
    get_str_list,
    parse_conditions,
)
from egress_cni.api.selectors import LabelSelector

ALLOCATOR_DEFAULT = "default"
ALLOCATOR_RR = "rr"
ALLOCATORS = (ALLOCATOR_DEFAULT, ALLOCATOR_RR)

LABEL_POLICY_NAME = "spidernet.io/policy-name"
LABEL_NAMESPACE_DEFAULT_GATEWAY = "spidernet.io/egressgateway-default"
FINALIZER_GATEWAY = "egressgateway.spidernet.io/egressgateway"
FINALIZER_TUNNEL = "egressgateway.spidernet.io/egresstunnel"
CLUSTER_INFO_NAME = "default"

TUNNEL_PHASES = ("Pending", "Init", "Failed", "Ready", "HeartbeatTimeout", "NodeNotReady")


def _selector(raw: Raw, key: str, path: str) -> LabelSelector | None:
    value = raw.get(key)
    return None if value is None else LabelSelector.parse(value, join(path, key))


def _conditions_dict(conditions: tuple[Condition, ...]) -> list[dict[str, Any]]:
    return [c.to_dict() for c in conditions]


# --- EgressGateway ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayPools:
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    ipv4_default_eip: str = ""
    ipv6_default_eip: str = ""

    @classmethod
    def parse(cls, raw: Raw, path: str) -> GatewayPools:
        return cls(
            ipv4=get_str_list(raw, "ipv4", path),
            ipv6=get_str_list(raw, "ipv6", path),
            ipv4_default_eip=get_str(raw, "ipv4DefaultEIP", path),
            ipv6_default_eip=get_str(raw, "ipv6DefaultEIP", path),
        )

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
        return cls(selector=_selector(raw, "selector", path), policy=get_str(raw, "policy", path))

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
    ipv4: str = ""
    ipv6: str = ""  # both empty: the useNodeIP bucket
    policies: tuple[PolicyRef, ...] = ()


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
                eips.append(EipStatus(get_str(e, "ipv4", epath), get_str(e, "ipv6", epath), refs))
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
                        }) for e in n.eips
                    ],
                }) for n in self.node_list
            ]
        if self.conditions:
            out["conditions"] = _conditions_dict(self.conditions)
        if self.observed_generation:
            out["observedGeneration"] = self.observed_generation
        return out


@dataclass(frozen=True)
class GatewaySpec:
    ippools: GatewayPools = GatewayPools()
    node_selector: NodeSelector = NodeSelector()
    cluster_default: bool = False

    @classmethod
    def parse(cls, raw: Raw, path: str) -> GatewaySpec:
        return cls(
            ippools=GatewayPools.parse(get_map(raw, "ippools", path), join(path, "ippools")),
            node_selector=NodeSelector.parse(get_map(raw, "nodeSelector", path), join(path, "nodeSelector")),
            cluster_default=get_bool(raw, "clusterDefault", path),
        )

    def to_dict(self) -> dict[str, Any]:
        return compact({
            "clusterDefault": self.cluster_default or None,
            "ippools": self.ippools.to_dict(),
            "nodeSelector": self.node_selector.to_dict(),
        })


# --- EgressPolicy / EgressClusterPolicy ---------------------------------------------------------


@dataclass(frozen=True)
class EgressIP:
    ipv4: str = ""
    ipv6: str = ""
    use_node_ip: bool = False
    allocator_policy: str = ALLOCATOR_DEFAULT

    @classmethod
    def parse(cls, raw: Raw, path: str) -> EgressIP:
        return cls(
            ipv4=get_str(raw, "ipv4", path),
            ipv6=get_str(raw, "ipv6", path),
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
    pod_subnet: tuple[str, ...] = ()
    namespace_selector: LabelSelector | None = None  # EgressClusterPolicy only

    @classmethod
    def parse(cls, raw: Raw, path: str, *, cluster: bool) -> AppliedTo:
        if not cluster and raw.get("namespaceSelector") is not None:
            raise FieldError(join(path, "namespaceSelector"), raw["namespaceSelector"],
                             "an EgressPolicy applies to its own namespace only; use an EgressClusterPolicy to select namespaces")
        return cls(
            pod_selector=_selector(raw, "podSelector", path),
            pod_subnet=get_str_list(raw, "podSubnet", path),
            namespace_selector=_selector(raw, "namespaceSelector", path) if cluster else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pod_selector is not None:
            out["podSelector"] = self.pod_selector.to_dict()
        if self.pod_subnet:
            out["podSubnet"] = list(self.pod_subnet)
        if self.namespace_selector is not None:
            out["namespaceSelector"] = self.namespace_selector.to_dict()
        return out


@dataclass(frozen=True)
class PolicySpec:
    applied_to: AppliedTo = AppliedTo()
    egress_gateway_name: str = ""
    egress_ip: EgressIP | None = None  # None: absent (the CRD then defaults it)
    dest_subnet: tuple[str, ...] = ()
    priority: int | None = None

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
            dest_subnet=get_str_list(raw, "destSubnet", path),
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
            out["destSubnet"] = list(self.dest_subnet)
        if self.priority is not None:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class PolicyStatus:
    eip_ipv4: str = ""
    eip_ipv6: str = ""
    node: str = ""
    conditions: tuple[Condition, ...] = ()
    observed_generation: int = 0

    @classmethod
    def parse(cls, raw: Raw, path: str) -> PolicyStatus:
        eip = get_map(raw, "eip", path)
        return cls(
            eip_ipv4=get_str(eip, "ipv4", join(path, "eip")),
            eip_ipv6=get_str(eip, "ipv6", join(path, "eip")),
            node=get_str(raw, "node", path),
            conditions=parse_conditions(raw, path),
            observed_generation=get_int(raw, "observedGeneration", path),
        )

    def to_dict(self) -> dict[str, Any]:
        return compact({
            "eip": compact({"ipv4": self.eip_ipv4, "ipv6": self.eip_ipv6}),
            "node": self.node,
            "conditions": _conditions_dict(self.conditions),
            "observedGeneration": self.observed_generation or None,
        })


# --- internal kinds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    ns: str
    pod: str
    node: str = ""
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any, path: str) -> Endpoint:
        if not isinstance(raw, Mapping):
            raise FieldError(path, raw, "must be an object")
        return cls(
            ns=get_str(raw, "ns", path), pod=get_str(raw, "pod", path), node=get_str(raw, "node", path),
            ipv4=get_str_list(raw, "ipv4", path), ipv6=get_str_list(raw, "ipv6", path),
        )

    def to_dict(self) -> dict[str, Any]:
        return compact({"ipv4": list(self.ipv4), "ipv6": list(self.ipv6), "node": self.node, "ns": self.ns, "pod": self.pod})


@dataclass(frozen=True)
class TunnelParent:
    name: str = ""
    ipv4: str = ""
    ipv6: str = ""


@dataclass(frozen=True)
class TunnelStatus:
    ipv4: str = ""
    ipv6: str = ""
    mac: str = ""
    parent: TunnelParent = TunnelParent()
    phase: str = ""
    mark: str = ""
    last_heartbeat_time: str = ""

    @classmethod
    def parse(cls, raw: Raw, path: str) -> TunnelStatus:
        tunnel = get_map(raw, "tunnel", path)
        tpath = join(path, "tunnel")
        parent = get_map(tunnel, "parent", tpath)
        ppath = join(tpath, "parent")
        phase = get_str(raw, "phase", path)
        if phase and phase not in TUNNEL_PHASES:
            raise FieldError(join(path, "phase"), phase, f"must be one of {', '.join(TUNNEL_PHASES)}")
        return cls(
            ipv4=get_str(tunnel, "ipv4", tpath), ipv6=get_str(tunnel, "ipv6", tpath), mac=get_str(tunnel, "mac", tpath),
            parent=TunnelParent(get_str(parent, "name", ppath), get_str(parent, "ipv4", ppath), get_str(parent, "ipv6", ppath)),
            phase=phase, mark=get_str(raw, "mark", path), last_heartbeat_time=get_str(raw, "lastHeartbeatTime", path),
        )

    def to_dict(self) -> dict[str, Any]:
        parent = compact({"name": self.parent.name, "ipv4": self.parent.ipv4, "ipv6": self.parent.ipv6})
        return compact({
            "tunnel": compact({"ipv4": self.ipv4, "ipv6": self.ipv6, "mac": self.mac, "parent": parent}),
            "phase": self.phase,
            "mark": self.mark,
            "lastHeartbeatTime": self.last_heartbeat_time,
        })


@dataclass(frozen=True)
class IPLists:
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any, path: str) -> IPLists:
        if not isinstance(raw, Mapping):
            raise FieldError(path, raw, "must be an object with ipv4 and ipv6 lists")
        return cls(get_str_list(raw, "ipv4", path), get_str_list(raw, "ipv6", path))

    def to_dict(self) -> dict[str, Any]:
        return compact({"ipv4": list(self.ipv4), "ipv6": list(self.ipv6)})


POD_CIDR_MODES = ("auto", "calico", "k8s", "")


@dataclass(frozen=True)
class ClusterInfoSpec:
    pod_cidr_mode: str = "auto"
    cluster_ip: bool = True
    node_ip: bool = True
    extra_cidr: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Raw, path: str) -> ClusterInfoSpec:
        auto = get_map(raw, "autoDetect", path)
        apath = join(path, "autoDetect")
        mode = get_str(auto, "podCidrMode", apath, "auto")
        if mode not in POD_CIDR_MODES:
            raise FieldError(join(apath, "podCidrMode"), mode, "must be auto, calico, k8s or empty")
        return cls(mode, get_bool(auto, "clusterIP", apath, True), get_bool(auto, "nodeIP", apath, True),
                   get_str_list(raw, "extraCidr", path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"autoDetect": {"podCidrMode": self.pod_cidr_mode, "clusterIP": self.cluster_ip, "nodeIP": self.node_ip}}
        if self.extra_cidr:
            out["extraCidr"] = list(self.extra_cidr)
        return out


@dataclass(frozen=True)
class ClusterInfoStatus:
    pod_cidr_mode: str = ""
    node_ip: Mapping[str, IPLists] = field(default_factory=dict)
    cluster_ip: IPLists = IPLists()
    pod_cidr: Mapping[str, IPLists] = field(default_factory=dict)
    extra_cidr: tuple[str, ...] = ()

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
            extra_cidr=get_str_list(raw, "extraCidr", path),
        )

    def to_dict(self) -> dict[str, Any]:
        return compact({
            "podCidrMode": self.pod_cidr_mode,
            "nodeIP": {k: v.to_dict() for k, v in sorted(self.node_ip.items())},
            "clusterIP": self.cluster_ip.to_dict(),
            "podCIDR": {k: v.to_dict() for k, v in sorted(self.pod_cidr.items())},
            "extraCidr": list(self.extra_cidr),
        })


# --- the kinds ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    SHORT_NAME: ClassVar[str] = ""
    NAMESPACED: ClassVar[bool] = False

    metadata: ObjectMeta

    def _envelope(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": self.KIND, "metadata": self.metadata.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


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

    endpoints: tuple[Endpoint, ...] = ()

    @classmethod
    def parse(cls, raw: Raw) -> EgressEndpointSlice:
        return cls(ObjectMeta.parse(get_map(raw, "metadata", "")),
                   tuple(Endpoint.parse(e, join("endpoints", i)) for i, e in enumerate(get_list(raw, "endpoints", ""))))

    @property
    def policy_name(self) -> str:
        return self.metadata.labels.get(LABEL_POLICY_NAME, "")

    def to_dict(self) -> dict[str, Any]:
        return self._envelope() | {"endpoints": [e.to_dict() for e in self.endpoints]}


@dataclass(frozen=True)
class EgressClusterEndpointSlice(EgressEndpointSlice):
    KIND: ClassVar[str] = "EgressClusterEndpointSlice"
    PLURAL: ClassVar[str] = "egressclusterendpointslices"
    SHORT_NAME: ClassVar[str] = "egcep"
    NAMESPACED: ClassVar[bool] = False


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


KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (EgressGateway, EgressPolicy, EgressClusterPolicy, EgressEndpointSlice,
                EgressClusterEndpointSlice, EgressTunnel, EgressClusterInfo)
}

R = TypeVar("R", bound=Resource)


def parse_object(raw: Raw) -> Resource:
    """Parse any of the seven kinds; raises FieldError naming the field path."""
    if not isinstance(raw, Mapping):
        raise FieldError("", raw, "an object must be a JSON/YAML mapping")
    if raw.get("apiVersion") != API_VERSION:
        raise FieldError("apiVersion", raw.get("apiVersion"), f"must be {API_VERSION}")
    kind = raw.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise FieldError("kind", kind, f"must be one of {', '.join(KINDS)}")
    return cls.parse(raw)  # type: ignore[attr-defined, no-any-return]


def parse_as(cls: type[R], raw: Raw) -> R:
    obj = parse_object(raw)
    if not isinstance(obj, cls) or type(obj) is not cls:
        raise FieldError("kind", raw.get("kind"), f"expected {cls.KIND}")
    return obj
