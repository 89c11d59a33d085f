"""Rules between policies, beyond the reference: two policies that could select the same pods for
overlapping destinations with different source addresses are admitted with a warning naming the one
that wins (`semantics.policy_order`: priority, then the more specific destination) and refused only
when neither wins (a true tie: same priority, equally specific destinations); no EIP named by
policies of two namespaces unless the gateway allows sharing.

"Could select the same pods" is decided exactly on the selectors: two label selectors can match
one pod iff, key by key, some value (or absence) satisfies both sets of requirements. A podSubnet
policy and a podSelector policy could always select the same pod, so they count as overlapping.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence

from egress_cni.api import semantics
from egress_cni.api.model import ALLOCATOR_RR, ANNOTATION_ALLOW_EIP_SHARING, EgressClusterPolicy, EgressPolicy
from egress_cni.api.net import BITS
from egress_cni.api.selectors import LabelSelector, Requirement
from webhook.admission import Denial
from webhook.subnets import Span, any_overlap, spans
from webhook.view import ClusterView, policy_key

_EVERYWHERE = "every destination outside the cluster"
NAMED_OVERLAPS = 5  # warnings naming an overlapping policy; the rest are counted (the API server truncates long lists)


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
    """A cluster policy applies in `namespace`."""
    return semantics.in_scope(cluster, namespace, semantics.labels_of_namespace(namespace, view.namespace_labels(namespace)))


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


Overlap = tuple[Sequence[Span], Sequence[Span]]  # the overlapping pair, or a whole list that means everywhere


def destinations_overlap(a: EgressPolicy, b: EgressPolicy) -> dict[int, Overlap]:
    """Per family, where two policies' destSubnets overlap (no destSubnet means every destination
    outside the cluster, of both families; a list naming only one family leaves the other alone)."""
    out: dict[int, Overlap] = {}
    for family in BITS:
        mine, theirs = spans(a.spec.dest_subnet, family), spans(b.spec.dest_subnet, family)
        if (a.spec.dest_subnet and not mine) or (b.spec.dest_subnet and not theirs):
            continue
        if not mine or not theirs:
            out[family] = mine, theirs
        elif pair := any_overlap(mine, theirs):
            out[family] = pair[:1], pair[1:]
    return out


def _how(overlap: Overlap) -> str:
    return f"{_describe_dests(overlap[0])} overlaps {_describe_dests(overlap[1])}"


def effective_eip(policy: EgressPolicy, view: ClusterView) -> tuple[str, ...]:
    """Identity of the source address a policy's traffic will leave with (`describe_eip` says it)."""
    gateway = policy.spec.egress_gateway_name
    eip = policy.spec.eip
    if eip.use_node_ip:
        return "node-ip", gateway
    v4 = eip.ipv4 or policy.status.eip_ipv4
    v6 = eip.ipv6 or policy.status.eip_ipv6
    if not (v4 or v6):
        if eip.allocator_policy == ALLOCATOR_RR:
            return "rr", gateway, *policy_key(policy)
        gw = view.gateway(gateway)
        if gw is None:
            return "default", gateway
        v4, v6 = gw.spec.ippools.ipv4_default_eip, gw.spec.ippools.ipv6_default_eip
    return "eip", gateway, v4 or "", v6 or ""


_SOURCES = {"node-ip": "the node IP of gateway {}", "rr": "an EIP allocated round robin from gateway {}",
            "default": "the default EIP of gateway {}"}


def describe_eip(identity: tuple[str, ...]) -> str:
    if identity[0] == "eip":
        return "EIP " + " / ".join(x for x in identity[2:] if x)
    return _SOURCES[identity[0]].format(identity[1])


def _sources(mine: tuple[str, ...], theirs: tuple[str, ...]) -> str:
    return f"a different source address ({describe_eip(mine)} here, {describe_eip(theirs)} there)"


def describe(policy: EgressPolicy) -> str:
    return f"{policy.KIND} {policy.metadata.key}"


def _priority(policy: EgressPolicy) -> str:
    return "(unset)" if policy.spec.priority is None else str(policy.spec.priority)


def _size(policy: EgressPolicy, family: int) -> str:
    n = semantics.destination_size(policy, family)
    if n == 1 << BITS[family]:
        return f"all of IPv{family}"
    return f"2^{n.bit_length() - 1} addresses" if n > 1 << 20 and n & (n - 1) == 0 else f"{n} address{'es' * (n != 1)}"


def _tie(policy: EgressPolicy, other: EgressPolicy, families: Iterable[int]) -> int | None:
    """The first of `families` where neither policy comes first (a true tie), if any."""
    return next((f for f in families if semantics.precedence(policy, f) == semantics.precedence(other, f)), None)


def _verdict(policy: EgressPolicy, other: EgressPolicy, families: Iterable[int]) -> tuple[str, str]:
    """(field that decides, who wins and why) for two policies overlapping in `families` (no tie).
    Priority decides every family at once; at equal priority each family by its own destinations."""
    mine, theirs = semantics.priority_rank(policy), semantics.priority_rank(other)
    if mine != theirs:
        winner, loser = (policy, other) if mine < theirs else (other, policy)
        unset = " (unset comes after every number)" if None in (policy.spec.priority, other.spec.priority) else ""
        return "spec.priority", f"{_who(policy, winner)} by priority, {_priority(winner)} before {_priority(loser)}{unset}"
    said = []
    for family in families:
        ahead = semantics.destination_size(policy, family) < semantics.destination_size(other, family)
        winner, loser = (policy, other) if ahead else (other, policy)
        said.append(f"IPv{family}: {_who(policy, winner)} by the more specific destination, "
                    f"{_size(winner, family)} against {_size(loser, family)}")
    return "spec.destSubnet", f"at equal priority {_priority(policy)}, " + "; ".join(said)


def _who(policy: EgressPolicy, winner: EgressPolicy) -> str:
    return "this policy wins" if winner is policy else f"{describe(winner)} wins"


def check_conflicts(policy: EgressPolicy, view: ClusterView) -> list[Denial]:
    """Cheapest tests first: namespaces (the indexed candidates), destinations, pods, identity, then
    source address; then the order decides (a warning) or cannot (a denial)."""
    pods = spans(policy.spec.applied_to.pod_subnet)
    mine = effective_eip(policy, view)
    self_key = policy_key(policy)
    warnings: list[Denial] = []
    overlapping = 0
    for other in candidates(policy, view):
        overlaps = destinations_overlap(policy, other)
        if not overlaps or not pods_may_overlap(policy, other, pods, spans(other.spec.applied_to.pod_subnet)):
            continue
        if policy_key(other) == self_key:  # an UPDATE meets its own old version
            continue
        theirs = effective_eip(other, view)
        if theirs == mine:
            continue
        tie = _tie(policy, other, overlaps)
        if tie is not None:
            return [Denial("policy-conflict", "spec.priority", policy.spec.priority,
                           f"{describe(other)} may select the same pods for overlapping destinations ({_how(overlaps[tie])}) "
                           f"with {_sources(mine, theirs)} at the same priority "
                           f"{_priority(policy)} with equally specific IPv{tie} destinations ({_size(policy, tie)}), so neither "
                           "would win; give one of them a different spec.priority or a narrower spec.destSubnet, or make their "
                           "spec.appliedTo or spec.destSubnet disjoint")]
        overlapping += 1
        if overlapping <= NAMED_OVERLAPS:
            field, why = _verdict(policy, other, overlaps)
            hows = "; ".join(dict.fromkeys(_how(o) for o in overlaps.values()))
            warnings.append(Denial("policy-overlap", field, None,
                                   f"{describe(other)} may select the same pods for overlapping destinations ({hows}) with "
                                   f"{_sources(mine, theirs)}; {why}", warning=True))
    if overlapping > NAMED_OVERLAPS:
        warnings.append(Denial("policy-overlap", "spec", None,
                               f"{overlapping - NAMED_OVERLAPS} more policies overlap this one with a different source address; "
                               "each is decided the same way: lower spec.priority first, then the more specific spec.destSubnet",
                               warning=True))
    return warnings


def check_eip_sharing(policy: EgressPolicy, view: ClusterView) -> list[Denial]:
    """A namespaced policy naming an EIP used by a policy of another namespace needs the gateway's consent.
    Checked on this replica's cache only: the controller's placement holds the rule (`eip_owner`)."""
    if isinstance(policy, EgressClusterPolicy):
        return []
    if semantics.eip_sharing_allowed(view.gateway(policy.spec.egress_gateway_name)):
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
