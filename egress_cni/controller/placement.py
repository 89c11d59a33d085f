"""Which EIP each policy gets and which gateway node carries it (pure).

The gateway's `status.nodeList` is the record of where every EIP lives; `place_gateway` reads it,
keeps everything that is still valid where it is, and only then decides what must change:

- an EIP whose node is no longer eligible (agent Lease expired, NotReady, cordoned, unlabelled)
  moves to the least-loaded eligible node, one EIP at a time, so a failed node's EIPs are spread
  rather than piled onto one node; EIPs never move back when the old node recovers;
- a new policy gets its EIP (`useNodeIP`, explicit `egressIP`, `rr` or `default`) and, if the EIP
  is not placed yet, the least-loaded eligible node (fewest EIPs over all gateways, ties by name).

- an EIP a gateway agent reports holding (its Lease annotation, `reported`) while the record puts
  it on another node was taken over on the segment (docs/ha.md): the record follows the segment,
  unless the recorded node reports it too (no move on an ambiguous report);
- every EIP entry lists its `standbys`: the other eligible nodes of its gateway in the order in
  which they take it over. The order of the previous pass is kept for the nodes that stay eligible
  (agents follow it between themselves, so it must not churn); newly eligible nodes are appended,
  least loaded first, ties by name. A node that is not eligible is never a standby.

An EIP that an EgressPolicy names (`spec.egressIP`) belongs to one namespace unless the gateway
consents to sharing (`semantics.eip_sharing_allowed`): the webhook refuses the second namespace
from its cache, and placement holds the rule for what got past it (two webhook replicas racing, no
webhook at all). Policies join an EIP in order: those its entry already lists first, then by
creationTimestamp, then namespace/name; a policy naming the EIP that would join an entry holding an
EgressPolicy of another namespace gets `EIPConflict` naming that owner, and no EIP (`eip_owner`).

`rr` is a real round robin: the next free pool address after the last one handed out (remembered
in the gateway annotation `ANNOTATION_RR_LAST`), so a released address is reused only after the
whole pool has been walked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from egress_cni.api import semantics
from egress_cni.api.model import (
    ALLOCATOR_RR,
    ANNOTATION_ALLOW_EIP_SHARING,
    EgressGateway,
    EgressIP,
    EipStatus,
    GatewayNodeStatus,
    IPUsage,
    PolicyRef,
)
from egress_cni.api.net import IP, AddressError, parse_ip
from egress_cni.api.pools import IPPool, pool_of

ANNOTATION_RR_LAST = "egressgateway.spidernet.io/rr-last"  # "<ipv4>,<ipv6>" last rr allocation

READY = "Ready"
# Ready=False reasons a policy can carry.
NO_ELIGIBLE_NODE = "NoEligibleNode"
POOL_EXHAUSTED = "PoolExhausted"
GATEWAY_NOT_FOUND = "GatewayNotFound"
INVALID_EIP = "InvalidEIP"
EIP_CONFLICT = "EIPConflict"
NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
ASSIGNED = "Assigned"


@dataclass(frozen=True)
class NodeView:
    """What placement needs to know about a Node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    unschedulable: bool = False
    agent_alive: bool = True

    @property
    def eligible(self) -> bool:
        return self.ready and not self.unschedulable and self.agent_alive

    @property
    def status(self) -> str:
        """The nodeList `status` word: Ready, or why the node cannot carry EIPs."""
        if not self.ready:
            return "NodeNotReady"
        if not self.agent_alive:
            return "HeartbeatTimeout"
        if self.unschedulable:
            return "Cordoned"
        return READY


@dataclass(frozen=True)
class PolicyView:
    ref: PolicyRef
    egress_ip: EgressIP
    created: str = ""  # creationTimestamp: older policies are served first
    reserved_ipv4: IP | None = None  # status.eip of a policy not in any nodeList (e.g. after a total outage)
    reserved_ipv6: IP | None = None

    @property
    def names_eip(self) -> bool:
        return bool(self.egress_ip.ipv4 or self.egress_ip.ipv6)

    @property
    def holds_eip(self) -> bool:
        """Its status shows an EIP (it held one before), though no nodeList lists it."""
        return bool(self.reserved_ipv4 or self.reserved_ipv6)

    @property
    def order(self) -> tuple[str, str]:
        """Who comes first to an EIP: the older policy, then by namespace/name."""
        return self.created, self.ref.key


@dataclass(frozen=True)
class Assignment:
    ipv4: IP | None = None
    ipv6: IP | None = None
    node: str = ""
    reason: str = ASSIGNED  # ASSIGNED, or why the policy is not Ready
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.reason == ASSIGNED


@dataclass(frozen=True)
class Move:
    ipv4: IP | None
    ipv6: IP | None
    source: str
    target: str  # "" when no eligible node is left
    why: str
    policies: tuple[PolicyRef, ...]


@dataclass(frozen=True)
class Placement:
    node_list: tuple[GatewayNodeStatus, ...]
    assignments: Mapping[PolicyRef, Assignment]
    moves: tuple[Move, ...]
    ip_usage: IPUsage
    rr_last: str  # new value of ANNOTATION_RR_LAST
    load: Mapping[str, int]  # EIP entries per node after this gateway, for the next gateway
    uses_load: bool = True  # whether the incoming load chose any node (a new EIP or a move)


TAKEN_OVER = "TakenOver"  # Move.why of an EIP that a standby reported holding (point 8 of docs/ha.md)


@dataclass
class _Entry:
    ipv4: IP | None
    ipv6: IP | None
    node: str
    policies: list[PolicyRef]
    standbys: tuple[str, ...] = ()  # as recorded: the order to keep

    @property
    def node_ip_bucket(self) -> bool:
        return not self.ipv4 and not self.ipv6


def gateway_pools(gw: EgressGateway) -> tuple[IPPool, IPPool]:
    return gw.spec.ippools.pool(4), gw.spec.ippools.pool(6)


def _sort_ips(e: _Entry) -> tuple[str, str]:
    return e.ipv4 or "", e.ipv6 or ""


def _least_loaded(eligible: Sequence[str], load: Mapping[str, int]) -> str:
    return min(eligible, key=lambda n: (load.get(n, 0), n)) if eligible else ""


def place_gateway(gw: EgressGateway, policies: Sequence[PolicyView], nodes: Sequence[NodeView],
                  load: Mapping[str, int], reported: Mapping[IP, frozenset[str]] | None = None) -> Placement:
    """Decide the gateway's nodeList and every policy's EIP and node. `load` counts EIP entries of
    the gateways placed before this one (plus this one's current entries is added here); `reported`
    maps an EIP to the nodes whose fresh agent Lease says they hold it."""
    v4_pool, v6_pool = gateway_pools(gw)
    selector = gw.spec.node_selector.selector
    members = {n.name: n for n in nodes if selector is not None and selector.matches(n.labels)}
    eligible = sorted(name for name, n in members.items() if n.eligible)
    wanted = {p.ref: p for p in policies}
    load_after = dict(load)

    # 1. Keep recorded entries that still have policies; note entries whose node cannot serve.
    entries: list[_Entry] = []
    for node_status in gw.status.node_list:
        for rec in node_status.eips:
            refs = [r for r in rec.policies if r in wanted]
            if not refs or (rec.ipv4 and not v4_pool.contains(rec.ipv4)) or (rec.ipv6 and not v6_pool.contains(rec.ipv6)):
                continue
            entries.append(_Entry(rec.ipv4, rec.ipv6, node_status.name, refs, rec.standbys))
    seen: set[PolicyRef] = set()
    for e in entries:  # a policy listed twice (hand-edited status) keeps its first entry
        unique = []
        for ref in e.policies:
            if ref not in seen:
                seen.add(ref)
                unique.append(ref)
        e.policies = unique
    sharing = semantics.eip_sharing_allowed(gw)
    conflicts: dict[PolicyRef, Assignment] = {}
    for e in entries:  # entries written before the rule held (or by a racing writer) are re-admitted in order
        if sharing or e.node_ip_bucket:
            continue
        admitted: list[PolicyView] = []
        for view in sorted((wanted[r] for r in e.policies), key=lambda v: v.order):
            owner = eip_owner(admitted, view)
            if owner is None:
                admitted.append(view)
            else:
                conflicts[view.ref] = _conflict(gw, view, owner)
        e.policies = [r for r in e.policies if r not in conflicts]
    entries = [e for e in entries if e.policies]
    for e in entries:
        if e.node in eligible:
            load_after[e.node] = load_after.get(e.node, 0) + 1

    # 2. Follow takeovers the segment made (a standby reports the EIP), then move entries off nodes
    #    that cannot carry them, one at a time onto the least loaded.
    moves: list[Move] = []
    for e in sorted(entries, key=lambda e: (e.node, *_sort_ips(e))):
        holder = _reported_holder(e, reported or {}, eligible)
        if holder:
            if e.node in eligible:
                load_after[e.node] -= 1
            load_after[holder] = load_after.get(holder, 0) + 1
            moves.append(Move(e.ipv4, e.ipv6, e.node, holder, TAKEN_OVER, tuple(e.policies)))
            e.node = holder
    for e in sorted(entries, key=lambda e: (e.node, *_sort_ips(e))):
        if e.node in eligible:
            continue
        why = members[e.node].status if e.node in members else "NotSelected"
        target = _least_loaded(eligible, load_after)
        if target:
            load_after[target] = load_after.get(target, 0) + 1
        moves.append(Move(e.ipv4, e.ipv6, e.node, target, why, tuple(e.policies)))
        e.node = target
    entries = _merge_node_ip_buckets(entries)

    # 3. Place policies that have no entry yet.
    assignments: dict[PolicyRef, Assignment] = {}
    rr_v4, _, rr_v6 = gw.metadata.annotations.get(ANNOTATION_RR_LAST, "").partition(",")
    placed = {r for e in entries for r in e.policies} | set(conflicts)
    used4 = pool_of((e.ipv4 for e in entries if e.ipv4), 4)
    used6 = pool_of((e.ipv6 for e in entries if e.ipv6), 6)
    by_ip = {ip: e for e in entries for ip in (e.ipv4, e.ipv6) if ip}
    placed_new = False
    for policy in sorted((p for p in policies if p.ref not in placed), key=lambda p: (not p.holds_eip, *p.order)):
        placed_new = True
        want, problem = _choose_eip(gw, policy, v4_pool, v6_pool, used4, used6, rr_v4, rr_v6)
        if problem is not None:
            assignments[policy.ref] = problem
            continue
        ipv4, ipv6 = want
        if policy.egress_ip.allocator_policy == ALLOCATOR_RR and not policy.egress_ip.ipv4 and not policy.egress_ip.ipv6 \
                and not policy.egress_ip.use_node_ip and not (policy.reserved_ipv4 or policy.reserved_ipv6):
            rr_v4, rr_v6 = ipv4 or rr_v4, ipv6 or rr_v6
        entry = _find_entry(entries, by_ip, ipv4, ipv6, eligible, load_after)
        owner = None if entry is None or sharing else eip_owner([wanted[r] for r in entry.policies], policy)
        if owner is not None:
            conflicts[policy.ref] = _conflict(gw, policy, owner)
            continue
        if entry is None:
            node = _least_loaded(eligible, load_after)
            if node:
                load_after[node] = load_after.get(node, 0) + 1
            entry = _Entry(ipv4, ipv6, node, [])
            entries.append(entry)
            by_ip.update({ip: entry for ip in (ipv4, ipv6) if ip})
            used4 = used4.union(pool_of([ipv4], 4)) if ipv4 else used4
            used6 = used6.union(pool_of([ipv6], 6)) if ipv6 else used6
        entry.policies.append(policy.ref)

    # 4. Project: every policy's assignment, the nodeList, usage.
    assignments.update(conflicts)
    for e in entries:
        for ref in e.policies:
            if e.node:
                assignments[ref] = Assignment(e.ipv4, e.ipv6, e.node)
            else:
                assignments[ref] = Assignment(e.ipv4, e.ipv6, "", NO_ELIGIBLE_NODE,
                                              f"no node matching the selector of EgressGateway {gw.metadata.name} is "
                                              "Ready, uncordoned and has a live agent")
    node_list = tuple(
        GatewayNodeStatus(name, members[name].status, tuple(
            EipStatus(e.ipv4, e.ipv6, tuple(sorted(e.policies, key=lambda r: (r.namespace, r.name))),
                      _standbys(e, eligible, load_after))
            for e in sorted(entries, key=_sort_ips) if e.node == name
        ))
        for name in sorted(members)
    )
    used4 = pool_of((e.ipv4 for e in entries if e.ipv4 and e.node), 4)
    used6 = pool_of((e.ipv6 for e in entries if e.ipv6 and e.node), 6)
    usage = IPUsage(v4_pool.count, v4_pool.difference(used4).count, v6_pool.count, v6_pool.difference(used6).count)
    rr_last = f"{rr_v4},{rr_v6}" if (rr_v4 or rr_v6) else ""
    return Placement(node_list, assignments, tuple(moves), usage, rr_last, load_after, uses_load=bool(moves) or placed_new)


def eip_owner(members: Sequence[PolicyView], candidate: PolicyView) -> PolicyView | None:
    """The member of an EIP entry that keeps `candidate` out of it (None: it may join), without the
    gateway's sharing consent: an EgressPolicy that names the EIP cannot join an entry holding an
    EgressPolicy of another namespace. EgressClusterPolicies neither claim nor are kept out."""
    if not candidate.ref.namespace or not candidate.names_eip:
        return None
    return next((m for m in members if m.ref.namespace and m.ref.namespace != candidate.ref.namespace), None)


def _conflict(gw: EgressGateway, loser: PolicyView, owner: PolicyView) -> Assignment:
    named = " / ".join(ip for ip in (loser.egress_ip.ipv4, loser.egress_ip.ipv6) if ip)
    return Assignment(reason=EIP_CONFLICT, message=(
        f"spec.egressIP {named} is held by EgressPolicy {owner.ref.key} of namespace {owner.ref.namespace} on "
        f"EgressGateway {gw.metadata.name}; an EIP named by a policy belongs to one namespace unless the gateway has the "
        f"annotation {ANNOTATION_ALLOW_EIP_SHARING}: \"true\"; pick another address of the pool"))


def _reported_holder(e: _Entry, reported: Mapping[IP, frozenset[str]], eligible: Sequence[str]) -> str:
    """The node the segment says serves this entry now, if that is news: one eligible node other
    than the recorded one reports every address of the entry, and the recorded node reports none."""
    if e.node_ip_bucket:
        return ""
    holders = [reported.get(ip, frozenset()) for ip in (e.ipv4, e.ipv6) if ip]
    if any(e.node in h for h in holders):
        return ""
    common = frozenset.intersection(*holders) if holders else frozenset()
    candidates = sorted(n for n in common if n != e.node and n in eligible)
    return candidates[0] if len(candidates) == 1 else ""


def _standbys(e: _Entry, eligible: Sequence[str], load: Mapping[str, int]) -> tuple[str, ...]:
    """The other eligible nodes in takeover order: the recorded order kept, newcomers appended."""
    if not e.node:
        return ()
    others = set(eligible) - {e.node}
    kept = [n for n in e.standbys if n in others]
    new = sorted(others - set(kept), key=lambda n: (load.get(n, 0), n))
    return (*kept, *new)


def _find_entry(entries: list[_Entry], by_ip: Mapping[IP, _Entry], ipv4: IP | None, ipv6: IP | None, eligible: Sequence[str],
                load: Mapping[str, int]) -> _Entry | None:
    """An existing entry the policy can join: same EIP (either family), or the node-IP bucket."""
    if not ipv4 and not ipv6:
        # useNodeIP policies spread too: join the bucket of the least-loaded node if it has one.
        target = _least_loaded(eligible, load)
        return next((e for e in entries if e.node_ip_bucket and e.node == target), None)
    return by_ip.get(ipv4) if ipv4 and ipv4 in by_ip else by_ip.get(ipv6) if ipv6 else None


def _choose_eip(gw: EgressGateway, policy: PolicyView, v4_pool: IPPool, v6_pool: IPPool, used4: IPPool,
                used6: IPPool, rr_v4: str, rr_v6: str) -> tuple[tuple[IP | None, IP | None], Assignment | None]:
    spec = policy.egress_ip
    name = gw.metadata.name
    if spec.use_node_ip:
        return (None, None), None
    if spec.ipv4 or spec.ipv6:
        for ip, pool, field_name in ((spec.ipv4, v4_pool, "ipv4"), (spec.ipv6, v6_pool, "ipv6")):
            if ip and not pool.contains(ip):
                return (None, None), Assignment(reason=INVALID_EIP, message=(
                    f"spec.egressIP.{field_name} {ip} is not in the {field_name} pool of EgressGateway {name} "
                    f"({pool}); use an address from the pool"))
        return (spec.ipv4, spec.ipv6), None
    if _reservation_usable(policy, v4_pool, v6_pool, used4, used6):
        return (policy.reserved_ipv4, policy.reserved_ipv6), None
    if not v4_pool and not v6_pool:
        return (None, None), Assignment(reason=POOL_EXHAUSTED, message=(
            f"EgressGateway {name} has no EIP pools; set spec.egressIP.useNodeIP or add addresses to spec.ippools"))
    if spec.allocator_policy == ALLOCATOR_RR:
        picked: list[IP | None] = []
        for pool, used, last in ((v4_pool, used4, rr_v4), (v6_pool, used6, rr_v6)):
            if not pool:
                picked.append(None)
                continue
            free = pool.next_free_after(used, _parse_or_none(last))
            if free is None:
                return (None, None), Assignment(reason=POOL_EXHAUSTED, message=(
                    f"every address of the IPv{pool.version} pool of EgressGateway {name} is in use ({pool}); "
                    "add addresses or delete policies"))
            picked.append(free)
        return (picked[0], picked[1]), None
    ipv4 = gw.spec.ippools.ipv4_default_eip or (v4_pool.nth(0) if v4_pool else None)
    ipv6 = gw.spec.ippools.ipv6_default_eip or (v6_pool.nth(0) if v6_pool else None)
    for ip, pool, field_name in ((ipv4, v4_pool, "ipv4DefaultEIP"), (ipv6, v6_pool, "ipv6DefaultEIP")):
        if ip and not pool.contains(ip):
            return (None, None), Assignment(reason=INVALID_EIP, message=(
                f"spec.ippools.{field_name} {ip} of EgressGateway {name} is not in its pool ({pool}); "
                "fix the gateway or use allocatorPolicy rr"))
    return (ipv4, ipv6), None


def _parse_or_none(text: str) -> IP | None:
    """The rr cursor annotation is ours, but anyone can edit it: a bad value restarts the walk."""
    try:
        return parse_ip(text) if text else None
    except AddressError:
        return None


def _reservation_usable(policy: PolicyView, v4_pool: IPPool, v6_pool: IPPool, used4: IPPool, used6: IPPool) -> bool:
    """A policy keeps the EIP its status shows after it dropped out of every nodeList (total
    outage): the address must still be in the pool and, for `rr`, not taken by someone else."""
    reserved = ((policy.reserved_ipv4, v4_pool, used4), (policy.reserved_ipv6, v6_pool, used6))
    if not any(ip for ip, _, _ in reserved):
        return False
    for ip, pool, used in reserved:
        if ip and (not pool.contains(ip) or (policy.egress_ip.allocator_policy == ALLOCATOR_RR and used.contains(ip))):
            return False
    return True


def _merge_node_ip_buckets(entries: list[_Entry]) -> list[_Entry]:
    """One useNodeIP bucket per node, even after a move brought a second one there."""
    buckets: dict[str, _Entry] = {}
    out: list[_Entry] = []
    for e in entries:
        if e.node_ip_bucket and e.node in buckets:
            buckets[e.node].policies.extend(e.policies)
            continue
        if e.node_ip_bucket:
            buckets[e.node] = e
        out.append(e)
    return out
