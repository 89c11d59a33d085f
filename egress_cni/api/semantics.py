"""What the objects mean, decided once (pure): webhook, controller and agent all call these.

- `selects`: whether a policy applies to a pod. An EgressPolicy applies to pods of its own
  namespace only, whatever its selector; an EgressClusterPolicy to the namespaces its
  `namespaceSelector` matches (all without one). Within that scope a pod is selected by
  `podSelector` (its labels) and/or `podSubnet` (one of its IPs inside); with both set (the
  webhook refuses that) both must hold; with neither the policy selects nothing.
- `whole_subnet_source`: when a `podSubnet` may be matched as a whole in the dataplane (every pod
  of the subnet is in scope), rather than pod by pod.
- `effective_gateway`: the policy's own `egressGatewayName`, else its namespace's default (the
  `spidernet.io/egressgateway-default` label), else the cluster default (the first by name).
  A label naming a gateway that does not exist still wins: the policy then waits for that
  gateway (GatewayNotFound) instead of silently leaving through another one.
- `gateway_refusal` / `gateway_admits`: whether a policy may use a gateway at all. A gateway
  without `spec.namespaceSelector` serves every namespace (the reference); with one, only the
  EgressPolicies of the namespaces it matches, by whatever route the gateway was reached (named,
  the namespace label, the cluster default). EgressClusterPolicies are cluster-admin's: always.
- `eip_sharing_allowed`: whether policies of several namespaces may name one EIP of a gateway.
- `allocated_eips`: the EIPs a gateway has handed out (its `status.nodeList`).
- `placement`: where a policy is served: its `status.node` and `status.eip`, else the gateway's
  `nodeList` entry that lists it (the policy status may lag behind the gateway's); nowhere when its
  gateway does not admit its namespace, whatever the status says.
- `policy_order`: which of several matching policies wins a packet of a family: lower `priority`
  first (absent = after every number), then the more specific destination (`destination_size`:
  fewer addresses of that family in `destSubnet`; none = the whole family, as 0.0.0.0/0 or ::/0),
  then EgressPolicy before EgressClusterPolicy, then namespace and name. Per family because the
  rules of each family are a chain of their own: a policy's IPv6 destinations never decide an IPv4
  packet. The pod side does not count (a label selector has no size).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence

from egress_cni.api.base import ANNOTATION_ALLOW_EIP_SHARING, LABEL_NAMESPACE_DEFAULT_GATEWAY, LABEL_NAMESPACE_NAME
from egress_cni.api.gateway import EgressGateway
from egress_cni.api.net import BITS, IP, Cidr
from egress_cni.api.policy import EgressPolicy
from egress_cni.api.pools import IPPool, pool_of

Labels = Mapping[str, str]
NO_PRIORITY = 1 << 63  # an absent priority sorts after every number


def in_scope(policy: EgressPolicy, namespace: str, namespace_labels: Labels) -> bool:
    """Whether pods of `namespace` can be selected by `policy` at all."""
    if policy.NAMESPACED:
        return namespace == policy.metadata.namespace
    selector = policy.spec.applied_to.namespace_selector
    return selector is None or selector.matches(namespace_labels)


def selects(policy: EgressPolicy, namespace: str, labels: Labels, namespace_labels: Labels, ips: Iterable[IP]) -> bool:
    applied = policy.spec.applied_to
    if applied.pod_selector is None and not applied.pod_subnet:
        return False
    if not in_scope(policy, namespace, namespace_labels):
        return False
    if applied.pod_selector is not None and not applied.pod_selector.matches(labels):
        return False
    return not applied.pod_subnet or any(c.contains(ip) for ip in ips for c in applied.pod_subnet)


def whole_subnet_source(policy: EgressPolicy) -> bool:
    """A cluster policy that selects by `podSubnet` alone, in every namespace: any address of the
    subnet is a source, including pods not listed yet (the reference's meaning of podSubnet)."""
    applied = policy.spec.applied_to
    return (not policy.NAMESPACED and bool(applied.pod_subnet) and applied.pod_selector is None
            and applied.namespace_selector is None)


def effective_gateway(policy: EgressPolicy, namespace_labels: Labels | None,
                      gateways: Iterable[EgressGateway]) -> tuple[str, str]:
    """(gateway name, where the name came from), or ("", "") when nothing applies."""
    if policy.spec.egress_gateway_name:
        return policy.spec.egress_gateway_name, "spec.egressGatewayName"
    if policy.NAMESPACED and namespace_labels:
        label = namespace_labels.get(LABEL_NAMESPACE_DEFAULT_GATEWAY, "")
        if label:
            return label, f"namespace label {LABEL_NAMESPACE_DEFAULT_GATEWAY}"
    defaults = sorted(g.metadata.name for g in gateways if g.spec.cluster_default)
    return (defaults[0], "cluster-default gateway") if defaults else ("", "")


def labels_of_namespace(namespace: str, labels: Labels | None) -> Labels:
    """A namespace's labels; one not seen yet has the label the API server puts on every namespace."""
    return {LABEL_NAMESPACE_NAME: namespace, **(labels or {})}


def gateway_refusal(gateway: EgressGateway, policy: EgressPolicy, namespace_labels: Labels | None) -> str:
    """Why `gateway` refuses `policy` ("" when it admits it)."""
    selector = gateway.spec.namespace_selector
    if not policy.NAMESPACED or selector is None:
        return ""
    namespace = policy.metadata.namespace
    labels = labels_of_namespace(namespace, namespace_labels)
    if selector.matches(labels):
        return ""
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return (f"EgressGateway {gateway.metadata.name} admits only the namespaces matching its spec.namespaceSelector "
            f"{selector.describe()}; namespace {namespace} (labels {shown}) does not match")


def gateway_admits(gateway: EgressGateway, policy: EgressPolicy, namespace_labels: Labels | None) -> bool:
    return not gateway_refusal(gateway, policy, namespace_labels)


def eip_sharing_allowed(gateway: EgressGateway | None) -> bool:
    """The gateway's consent (annotation) to one EIP named by EgressPolicies of several namespaces."""
    return gateway is not None and gateway.metadata.annotations.get(ANNOTATION_ALLOW_EIP_SHARING, "").lower() == "true"


def allocated_eips(gateway: EgressGateway | None, version: int) -> IPPool:
    """The EIPs of `version` that the gateway's status places on a node for some policy."""
    if gateway is None:
        return IPPool(version)
    ips = [ip for n in gateway.status.node_list for e in n.eips if (ip := e.ipv4 if version == 4 else e.ipv6)]
    return pool_of(ips, version)


def placement(policy: EgressPolicy, gateways: Sequence[EgressGateway],
              namespace_labels: Mapping[str, Labels]) -> tuple[str, dict[int, IP | None]]:
    """(gateway node, EIP per family) serving `policy`; ("", ...) when it is not placed.
    `namespace_labels`: every namespace's labels, by name."""
    labels = namespace_labels.get(policy.metadata.namespace) if policy.NAMESPACED else None
    name = effective_gateway(policy, labels, gateways)[0]
    if any(gw.metadata.name == name and not gateway_admits(gw, policy, labels) for gw in gateways):
        return "", {4: None, 6: None}
    status = policy.status
    eips = {4: status.eip_ipv4, 6: status.eip_ipv6}
    if status.node:
        return status.node, eips
    key = policy.ref
    for gw in gateways:
        if gw.metadata.name != policy.spec.egress_gateway_name:
            continue
        for n in gw.status.node_list:
            for e in n.eips:
                if key in e.policies:
                    return n.name, {4: e.ipv4, 6: e.ipv6}
    return "", eips


Order = tuple[int, int, int, str, str]


def precedence(policy: EgressPolicy, family: int) -> tuple[int, int]:
    """What decides between two policies for packets of `family`: (priority, destination size).
    Two overlapping policies with equal precedence are a true tie, decided only by kind and name
    (the webhook refuses those when their source addresses differ)."""
    return priority_rank(policy), destination_size(policy, family)


def priority_rank(policy: EgressPolicy) -> int:
    """`spec.priority`, lower first; absent after every number."""
    return policy.spec.priority if policy.spec.priority is not None else NO_PRIORITY


def policy_order(policy: EgressPolicy, family: int) -> Order:
    """First match wins among the policies steering packets of `family` (see the module docstring).
    A total order: (kind, namespace, name) is unique."""
    return (*precedence(policy, family), 0 if policy.NAMESPACED else 1, policy.metadata.namespace, policy.metadata.name)


def destination_size(policy: EgressPolicy, family: int) -> int:
    """How many addresses of `family` the policy's destSubnet covers: fewer is more specific. No
    destSubnet counts as the whole family (it means every destination outside the cluster, which
    the policy cannot tell apart from 0.0.0.0/0 or ::/0); a destSubnet naming only the other family
    counts 0 (the policy steers nothing of this family, so its place there decides nothing)."""
    return _covered(policy.spec.dest_subnet, family)


@functools.lru_cache(maxsize=1 << 16)
def _covered(cidrs: tuple[Cidr, ...], family: int) -> int:
    """Addresses in the union of the CIDRs of `family` (two CIDRs nest or are disjoint)."""
    if not cidrs:
        return 1 << BITS[family]
    total, reach = 0, -1
    for c in sorted((c for c in cidrs if c.family == family), key=lambda c: (c.first, -c.last)):
        if c.last > reach:  # not inside the previous one
            total, reach = total + c.last - c.first + 1, c.last
    return total
