"""The seven kinds of `egressgateway.spidernet.io/v1beta1` as frozen dataclasses.

`parse_object(raw)` turns the Kubernetes JSON of any of them into its dataclass (raising
`FieldError` that names the field path), and `obj.to_dict()` turns it back. Fields, defaults and
meanings follow the reference API (docs/api.md); serialisation omits empty fields the way the Go
types' `omitempty` does, except where the reference always writes a field (`ipUsage`).

Parsing checks types and syntax only. Cross-object rules (an EIP inside its gateway's pool, one
cluster-default gateway, ...) are the webhook's.
"""

from collections.abc import Mapping
from typing import TypeVar

from egress_cni.api import API_VERSION
from egress_cni.api.base import (
    ALLOCATOR_DEFAULT,
    ALLOCATOR_RR,
    ALLOCATORS,
    ANNOTATION_ALLOW_EIP_SHARING,
    CLUSTER_INFO_NAME,
    FINALIZER_GATEWAY,
    FINALIZER_TUNNEL,
    LABEL_NAMESPACE_DEFAULT_GATEWAY,
    LABEL_NAMESPACE_NAME,
    LABEL_POLICY_NAME,
    TUNNEL_PHASES,
    Resource,
)
from egress_cni.api.cluster import (
    POD_CIDR_MODES,
    ClusterInfoSpec,
    ClusterInfoStatus,
    EgressClusterInfo,
    EgressTunnel,
    IPLists,
    TunnelParent,
    TunnelStatus,
)
from egress_cni.api.errors import FieldError
from egress_cni.api.gateway import (
    EgressGateway,
    EipStatus,
    GatewayNodeStatus,
    GatewayPools,
    GatewaySpec,
    GatewayStatus,
    IPUsage,
    NodeSelector,
    PolicyRef,
)
from egress_cni.api.meta import Raw
from egress_cni.api.policy import (
    AppliedTo,
    EgressClusterEndpointSlice,
    EgressClusterPolicy,
    EgressEndpointSlice,
    EgressIP,
    EgressPolicy,
    Endpoint,
    PolicySpec,
    PolicyStatus,
)

__all__ = [
    "ALLOCATORS", "ALLOCATOR_DEFAULT", "ALLOCATOR_RR", "ANNOTATION_ALLOW_EIP_SHARING", "CLUSTER_INFO_NAME", "FINALIZER_GATEWAY", "FINALIZER_TUNNEL",
    "KINDS", "LABEL_NAMESPACE_DEFAULT_GATEWAY", "LABEL_NAMESPACE_NAME", "LABEL_POLICY_NAME", "POD_CIDR_MODES", "TUNNEL_PHASES", "AppliedTo",
    "ClusterInfoSpec", "ClusterInfoStatus", "EgressClusterEndpointSlice", "EgressClusterInfo", "EgressClusterPolicy",
    "EgressEndpointSlice", "EgressGateway", "EgressIP", "EgressPolicy", "EgressTunnel", "EipStatus", "Endpoint",
    "GatewayNodeStatus", "GatewayPools", "GatewaySpec", "GatewayStatus", "IPLists", "IPUsage", "NodeSelector",
    "PolicyRef", "PolicySpec", "PolicyStatus", "Resource", "TunnelParent", "TunnelStatus", "parse_as", "parse_object",
]

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
