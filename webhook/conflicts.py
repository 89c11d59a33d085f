"""Rules between policies, beyond the reference: no two policies that could select the same pods
for overlapping destinations with different EIPs at the same priority, and no EIP named by
policies of two namespaces unless the gateway allows sharing.

"Could select the same pods" is decided exactly on the selectors: two label selectors can match
one pod iff, key by key, some value (or absence) satisfies both sets of requirements. A podSubnet
policy and a podSelector policy could always select the same pod, so they count as overlapping.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence

from egress_cni.api.model import ALLOCATOR_RR, EgressClusterPolicy, EgressPolicy
from egress_cni.api.selectors import LabelSelector, Requirement
from webhook.admission import Denial
from webhook.config import ANNOTATION_ALLOW_EIP_SHARING
from webhook.subnets import Span, any_overlap, spans
from webhook.view import ClusterView, policy_key

_EVERYWHERE = "every destination outside the cluster"


@functools.lru_cache(maxsize=65536)
def selectors_may_overlap(a: LabelSelector, b: LabelSelector) -> bool:
    """True iff some label set matches both selectors (keys are independent, values unbounded).

    Cached: selectors are frozen, and the same pairs come back on every review of a namespace."""
    by_key: dict[str, list[Requirement]] = {}
    for sel in (a, b):
        for key, value in sel.match_labels:
            by_key.setdefault(key, []).append(Requirement(key, "In", (value,)))
        for req in sel.match_expressions:
            by_key.setdefault(req.key, []).append(req)
    return all(_satisfiable(reqs) for reqs in by_key.values())


def _satisfiable(reqs: Iterable[Requirement]) -> bool:
    reqs = list(reqs)
    if all(r.operator in ("NotIn", "DoesNotExist") for r in reqs):
        return True  # the key may be absent
    if any(r.operator == "DoesNotExist" for r in reqs):
        return False  # something needs the key present
    allowed: set[str] | None = None
    for r in reqs:
        if r.operator == "In":
            allowed = set(r.values) if allowed is None else allowed & set(r.values)
    excluded = {v for r in reqs if r.operator == "NotIn" for v in r.values}
    return allowed is None or bool(allowed - excluded)


def _namespace_selector(policy: EgressPolicy) -> LabelSelector:
    """Cluster policies: no namespaceSelector selects every namespace."""
    return policy.spec.applied_to.namespace_selector or LabelSelector()


def namespaces_may_overlap(a: EgressPolicy, b: EgressPolicy, view: ClusterView) -> bool:
    a_cluster, b_cluster = isinstance(a, EgressClusterPolicy), isinstance(b, EgressClusterPolicy)
    if not a_cluster and not b_cluster:
        return a.metadata.namespace == b.metadata.namespace
    if a_cluster and b_cluster:
        return selectors_may_overlap(_namespace_selector(a), _namespace_selector(b))
    namespaced, cluster = (b, a) if a_cluster else (a, b)
    return selects_namespace(cluster, namespaced.metadata.namespace, view)


def selects_namespace(cluster: EgressPolicy, namespace: str, view: ClusterView) -> bool:
    """A cluster policy applies in `namespace` (a namespace not seen yet has only its name label)."""
    labels = view.namespace_labels(namespace) or {"kubernetes.io/metadata.name": namespace}
    return _namespace_selector(cluster).matches(labels)


def candidates(policy: EgressPolicy, view: ClusterView) -> Iterator[EgressPolicy]:
    """The policies whose namespaces may overlap `policy`'s, read from the view's index: a namespaced
    policy meets its namespace's policies and the cluster policies that select its namespace; a
    cluster policy meets the cluster policies whose namespace selectors may overlap its own and the
    policies of the namespaces it selects (decided once per namespace, not once per policy)."""
    if not isinstance(policy, EgressClusterPolicy):
        yield from view.policies_in(policy.metadata.namespace)
        yield from (other for other in view.policies_in("") if namespaces_may_overlap(policy, other, view))
        return
    yield from (other for other in view.policies_in("") if namespaces_may_overlap(policy, other, view))
    for namespace in view.policy_namespaces():
        if selects_namespace(policy, namespace, view):
            yield from view.policies_in(namespace)


def pods_may_overlap(a: EgressPolicy, b: EgressPolicy, subnets_a: Sequence[Span], subnets_b: Sequence[Span]) -> bool:
    sel_a, sel_b = a.spec.applied_to.pod_selector, b.spec.applied_to.pod_selector
    if subnets_a and subnets_b:
        return any_overlap(subnets_a, subnets_b) is not None
    if sel_a is not None and sel_b is not None and not subnets_a and not subnets_b:
        return selectors_may_overlap(sel_a, sel_b)
    return True


def _describe_dests(nets: Sequence[Span]) -> str:
    return ", ".join(n.text for n in nets) if nets else _EVERYWHERE


def destinations_overlap(a: Sequence[Span], b: Sequence[Span]) -> str | None:
    """How two destSubnet lists overlap (empty lists mean everything outside the cluster), or None."""
    if not a or not b:
        return f"{_describe_dests(a)} overlaps {_describe_dests(b)}"
    pair = any_overlap(a, b)
    return f"{pair[0].text} overlaps {pair[1].text}" if pair else None


def effective_eip(policy: EgressPolicy, view: ClusterView) -> tuple[str, ...]:
    """The identity of the source address a policy's traffic will leave with: (how, gateway, ...)."""
    gateway = policy.spec.egress_gateway_name
    eip = policy.spec.eip
    if eip.use_node_ip:
        return ("node-ip", gateway)
    v4 = eip.ipv4 or policy.status.eip_ipv4
    v6 = eip.ipv6 or policy.status.eip_ipv6
    if not (v4 or v6):
        if eip.allocator_policy == ALLOCATOR_RR:
            return ("rr", gateway, *policy_key(policy))
        gw = view.gateway(gateway)
        if gw is None:
            return ("default", gateway)
        v4, v6 = gw.spec.ippools.ipv4_default_eip, gw.spec.ippools.ipv6_default_eip
    return ("eip", gateway, v4 or "", v6 or "")


def describe_eip(identity: tuple[str, ...]) -> str:
    """An `effective_eip` identity in words (only a denial needs them)."""
    how, gateway = identity[0], identity[1]
    if how == "node-ip":
        return f"the node IP of gateway {gateway}"
    if how == "rr":
        return f"an EIP allocated round robin from gateway {gateway}"
    if how == "default":
        return f"the default EIP of gateway {gateway}"
    return "EIP " + " / ".join(x for x in identity[2:] if x)


def describe(policy: EgressPolicy) -> str:
    return f"{policy.KIND} {policy.metadata.key}"


def check_conflicts(policy: EgressPolicy, view: ClusterView) -> list[Denial]:
    """Cheapest tests first: namespaces (the candidates), priority, source address, pods, destinations,
    then identity (rarely reached)."""
    dests = spans(policy.spec.dest_subnet)
    pods = spans(policy.spec.applied_to.pod_subnet)
    mine = effective_eip(policy, view)
    priority = policy.spec.priority or 0
    self_key = policy_key(policy)
    for other in candidates(policy, view):
        if (other.spec.priority or 0) != priority:
            continue
        theirs = effective_eip(other, view)
        if theirs == mine:
            continue
        if not pods_may_overlap(policy, other, pods, spans(other.spec.applied_to.pod_subnet)):
            continue
        how = destinations_overlap(dests, spans(other.spec.dest_subnet))
        if how is None or policy_key(other) == self_key:  # an UPDATE meets its own old version
            continue
        return [Denial("policy-conflict", "spec.priority", policy.spec.priority,
                       f"{describe(other)} may select the same pods for overlapping destinations ({how}) with a different "
                       f"source address ({describe_eip(mine)} here, {describe_eip(theirs)} there) at the same priority {priority}; give one of them a "
                       "different spec.priority, or make their spec.appliedTo or spec.destSubnet disjoint")]
    return []


def check_eip_sharing(policy: EgressPolicy, view: ClusterView) -> list[Denial]:
    """A namespaced policy naming an EIP used by a policy of another namespace needs the gateway's consent."""
    if isinstance(policy, EgressClusterPolicy):
        return []
    gateway = view.gateway(policy.spec.egress_gateway_name)
    if gateway is not None and gateway.metadata.annotations.get(ANNOTATION_ALLOW_EIP_SHARING, "").lower() == "true":
        return []
    for family, named in (("ipv4", policy.spec.eip.ipv4), ("ipv6", policy.spec.eip.ipv6)):
        if not named:
            continue
        for other in view.policies_naming(named):
            if isinstance(other, EgressClusterPolicy) or other.metadata.namespace == policy.metadata.namespace:
                continue
            used = {getattr(other.spec.eip, family), getattr(other.status, f"eip_{family}")}
            if named in used and other.spec.egress_gateway_name == policy.spec.egress_gateway_name:
                return [Denial("policy-eip-shared", f"spec.egressIP.{family}", named,
                               f"is already used by {describe(other)} of namespace {other.metadata.namespace}; an EIP named by a "
                               f"policy belongs to one namespace unless EgressGateway {policy.spec.egress_gateway_name} has the "
                               f"annotation {ANNOTATION_ALLOW_EIP_SHARING}: \"true\"; pick another address of the pool, or leave "
                               "egressIP empty to use the gateway's default EIP")]
    return []
