"""The node's desired dataplane, computed from the cluster objects and this node's facts (pure).

Packet walk (pod on worker W selected by policy P whose gateway node is G):
  W  mangle EGRESS-PREROUTING: first matching policy (`semantics.policy_order`: priority, then the
     more specific destination, then kind/namespace/name) marks the packet with G's mark;
     `ip rule fwmark M_G lookup M_G` -> `default via T_G dev egress.vxlan`.
     nat EGRESS-POSTROUTING accepts tunnel-bound packets so no CNI masquerade rewrites them.
  G  mangle: a packet from the tunnel saves W's mark (by W's tunnel MAC) in its connmark;
     filter EGRESS-FORWARD lets it through only if one of G's own policies matches (fail closed: a
     tunnelled packet is never forwarded with its pod IP); nat SNATs it to P's EIP (MASQUERADE for
     useNodeIP). G claims the EIP as a /32 or /128 on its parent link.
     The reply's connmark is restored into the mark, which routes it back through the tunnel to W.
A policy with no usable gateway drops its selected traffic instead of letting it leave unmasked.

Without encapsulation (`DataplaneConfig.vxlan_mode` CrossSubnet or Never, for a gateway on-link):
  W  the table of M_G holds `default via <G's parent IP> dev <parent>`, and an `unreachable` rule
     for M_G right after ours refuses what finds no route there (never the main table); nat leaves
     such packets alone and marks their flow `routed`, whose later packets leave no other way un-NATed.
  G  saves W's mark by W's parent MAC; filter passes direct arrivals only for its own policies (the
     rest, to outside the cluster, is dropped); replies go back `via <W's parent IP> dev <parent>`.

Underlay pods (macvlan, ...) reach the host by our veths only for hijacked destinations, and replies
to their own address would come back on their macvlan, past the host's conntrack. So what enters by
a veth and leaves by the parent unsteered, to outside the cluster, is masqueraded to the node.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from egress_cni.api import semantics
from egress_cni.api.model import EgressClusterEndpointSlice, EgressPolicy, EgressTunnel
from egress_cni.api.net import IP, Cidr, CidrMode, Mac, parse_cidr
from egress_cni.dataplane.inputs import ALWAYS, NEVER, ClusterState, DataplaneConfig, NodeFacts
from egress_cni.dataplane.plan import (
    IPV4,
    IPV6,
    Address,
    Chain,
    Dataplane,
    Fdb,
    IPSet,
    Neighbour,
    Route,
    Rule,
    Sysctl,
    VxlanLink,
)

FULL = 0xFFFFFFFF
SPLIT_DEFAULT = {IPV4: ("0.0.0.0/1", "128.0.0.0/1"), IPV6: ("::/1", "8000::/1")}  # ipset hash:net holds no /0


@dataclass(frozen=True)
class Peer:
    """A tunnel peer: every value parsed and validated by the model (none is status text)."""

    name: str
    mac: Mac
    mark: int
    underlay: IP  # parent IP the VXLAN packets go to
    tunnel_ip: Mapping[int, IP]
    parent_ip: Mapping[int, IP] = field(default_factory=dict)  # its parent's IPs: direct next hops
    parent_mac: Mac | None = None  # what its un-tunnelled packets carry as source MAC


@dataclass(frozen=True)
class PolicySets:
    """What compute decided for one policy on this node, for those who act on it outside compute
    (the CNI fast path, flow forgetting): they read this, never a set's name."""

    sources: Mapping[int, str]  # family -> its source set (only the families the policy steers)
    ruled: frozenset[int]  # families with rules on this node (a source here)
    gateway: str  # "" = none: its traffic is dropped


@dataclass(frozen=True)
class Desired:
    dataplane: Dataplane
    selection: Mapping[str, tuple[str, ...]]  # registry key -> policy keys (only pods whose labels we know)
    hijack: Mapping[int, tuple[str, ...]]  # destinations of policies selecting pods on this node
    gateway_of: Mapping[str, str]  # policy key -> gateway node ("" = none: its traffic is dropped)
    order: tuple[str, ...] = ()  # policy keys, first match first (for the node's first family)
    peers: frozenset[str] = frozenset()  # nodes we have a tunnel to
    ruled: frozenset[tuple[str, int]] = frozenset()  # (policy key, family) with rules here (a source on this node)
    policies: Mapping[str, PolicySets] = field(default_factory=dict)  # policy key -> its sets here
    guard: Mapping[int, str] = field(default_factory=dict)  # family -> the set of every selected source
    cluster: Mapping[int, str] = field(default_factory=dict)  # family -> the set of in-cluster destinations
    underlay_masq: bool = False  # unsteered traffic from underlay veths is masqueraded (the CNI fast path needs it)


def policy_key(p: EgressPolicy) -> str:
    return p.ref.key


def typed_key(p: EgressPolicy) -> str:
    """Unique across kinds: EgressPolicy a/b and EgressClusterPolicy a-b never share a set."""
    return f"{p.KIND}/{p.metadata.namespace}/{p.metadata.name}"


def set_name(config: DataplaneConfig, role: str, family: int, p: EgressPolicy) -> str:
    digest = hashlib.sha256(typed_key(p).encode()).hexdigest()[:16]
    return f"{config.ipset_prefix}-{role}{family}-{digest}"  # <= 31 chars, the ipset limit


def cluster_set(config: DataplaneConfig, family: int) -> str:
    return f"{config.ipset_prefix}-cluster-v{family}"


def selected_set(config: DataplaneConfig, family: int) -> str:
    """Every source any policy's rules on this node can match: the guard in front of them."""
    return f"{config.ipset_prefix}-selected-v{family}"


def members(entries: Iterable[IP | Cidr], family: int) -> frozenset[str]:
    """ipset members of `family`: addresses and host prefixes as bare IPs (as `ipset list` shows
    them), a default route as its two halves (hash:net holds no /0)."""
    out: set[str] = set()
    for e in entries:
        if e.family != family:
            continue
        if isinstance(e, Cidr):
            out.update(SPLIT_DEFAULT[family] if e.is_default else (e.member,))
        else:
            out.add(str(e))  # exact str: set lookups against kernel-read members stay on the fast path
    return frozenset(out)


def uncovered(ms: frozenset[str]) -> frozenset[str]:
    """The members no other member covers: the same addresses matched, and no overlap (an nftables
    interval set refuses one; a later set change would have to keep a covered member in step)."""
    if not any("/" in m for m in ms):
        return ms  # distinct addresses never cover each other
    nets = sorted((parse_cidr(m, CidrMode.BARE_IP) for m in ms), key=lambda c: (c.first, c.prefixlen))
    out: set[str] = set()
    end = -1
    for net in nets:
        if net.first <= end:
            continue  # prefixes nest or are disjoint: one that starts inside the last kept lies in it
        out.add(net.member)
        end = net.last
    return frozenset(out)


COMMENT_MAX = 255  # xt_comment's limit, in bytes


def tagged(spec: str, tag: str) -> str:
    """A rule with its ownership comment: egw:<hash of the rule>:<what it is for> (also the metric label).
    A policy key can be 317 characters (namespace 63, name 253): a tag too long for the comment keeps
    its head and gets a hash of the whole, so every legal name renders and stays unique."""
    digest = hashlib.sha1(f"{spec}|{tag}".encode()).hexdigest()[:10]
    if len(tag.encode()) > COMMENT_MAX - 15:  # "egw:" + digest + ":"
        tail = "~" + hashlib.sha256(tag.encode()).hexdigest()[:12]
        tag = tag.encode()[:COMMENT_MAX - 15 - len(tail)].decode(errors="ignore") + tail
    match, _, target = spec.rpartition(" -j ")
    return f"{match} -m comment --comment egw:{digest}:{tag} -j {target}".lstrip()


def _peer(t: EgressTunnel, underlay_family: int) -> Peer | None:
    s = t.status
    mark = s.fwmark
    if mark is None:
        return None
    underlay = s.parent.ipv4 if underlay_family == IPV4 else s.parent.ipv6
    if not s.mac or not underlay:
        return None
    tips = {f: ip for f, ip in ((IPV4, s.ipv4), (IPV6, s.ipv6)) if ip}
    pips = {f: ip for f, ip in ((IPV4, s.parent.ipv4), (IPV6, s.parent.ipv6)) if ip}
    return Peer(t.metadata.name, s.mac, mark, underlay, tips, pips, s.parent.mac)


def connected(prefixes: Iterable[str]) -> tuple[Cidr, ...]:
    """The parent's connected prefixes as facts give them ("10.100.0.7/24"); one that does not parse is skipped."""
    out = []
    for text in prefixes:
        try:
            out.append(parse_cidr(text, CidrMode.HOST_BITS))
        except ValueError:
            continue
    return tuple(out)


def on_link(ip: IP, prefixes: Iterable[Cidr]) -> bool:
    """`ip` lies in one of this node's connected prefixes: reachable without a router."""
    return any(c.family == ip.family and c.contains(ip) for c in prefixes)


def direct_hop(mode: str, ip: IP | None, prefixes: Iterable[Cidr]) -> IP | None:
    """The next hop for a peer reached without the tunnel, None for the tunnel (or nothing, in Never)."""
    return ip if mode != ALWAYS and ip is not None and on_link(ip, prefixes) else None


def _endpoints(state: ClusterState) -> dict[str, list[tuple[str, tuple[IP, ...]]]]:
    """policy key -> [(node, IPs)] from the controller's endpoint slices."""
    out: dict[str, list[tuple[str, tuple[IP, ...]]]] = defaultdict(list)
    for s in state.slices:
        name = s.policy_name
        if not name:
            continue
        key = name if isinstance(s, EgressClusterEndpointSlice) else f"{s.metadata.namespace}/{name}"
        out[key] += [(e.node, e.ipv4 + e.ipv6) for e in s.endpoints]
    return out


def _in_order(policies: Iterable[EgressPolicy], family: int) -> list[EgressPolicy]:
    """First match first, for packets of `family`."""
    return sorted(policies, key=lambda p: semantics.policy_order(p, family))


def _hijack(dest_subnet: Iterable[Cidr], family: int) -> set[str]:
    """Routes the CNI points through the host for underlay pods; no destSubnet means everything."""
    out = {str(c) for c in dest_subnet if c.family == family}
    return out or {"0.0.0.0/0" if family == IPV4 else "::/0"}


def _cluster_members(state: ClusterState, family: int) -> frozenset[str]:
    info = state.cluster_info
    if info is None:
        return frozenset()
    st = info.status
    lists = [*st.node_ip.values(), st.cluster_ip, *st.pod_cidr.values()]
    entries = [c for lst in lists for c in (lst.ipv4 + lst.ipv6)] + list(st.extra_cidr) + list(info.spec.extra_cidr)
    return members(entries, family) - frozenset(SPLIT_DEFAULT[family])


def desired_dataplane(state: ClusterState, facts: NodeFacts, config: DataplaneConfig) -> Desired:
    me = facts.name
    families = [f for f, on in ((IPV4, facts.ipv4), (IPV6, facts.ipv6)) if on]
    underlay_family = IPV4 if facts.ipv4 and facts.parent_ipv4 else IPV6
    local_ip = facts.parent_ipv4 if underlay_family == IPV4 else facts.parent_ipv6
    vx = config.vxlan_name
    base = f"0x{config.mark_base:x}/0x{config.mark_mask:x}"
    tunnels = {t.metadata.name: t for t in state.tunnels}
    peers = {n: pr for n, t in tunnels.items() if (pr := _peer(t, underlay_family)) is not None}
    own = tunnels.get(me)
    own_tips = {f: ip for f, ip in ((IPV4, own.status.ipv4), (IPV6, own.status.ipv6)) if ip and f in families} if own else {}
    mode = config.vxlan_mode
    prefixes = connected(facts.onlink) if mode != ALWAYS else ()
    # a gateway knows this node's direct packets by the MAC in our EgressTunnel: go direct only once it is there
    reported = own is not None and own.status.parent.mac is not None

    def direct(peer: Peer | None, f: int, replying: bool = False) -> IP | None:
        known = peer is not None and (peer.parent_mac is not None if replying else reported)
        return direct_hop(mode, peer.parent_ip.get(f), prefixes) if peer is not None and known else None

    link = None
    if own is not None and own.status.mac and own_tips and local_ip and mode != NEVER:
        overhead = 50 if underlay_family == IPV4 else 70
        link = VxlanLink(vx, config.vni, config.port, facts.parent, local_ip, own.status.mac.lower(),
                         config.mtu or facts.parent_mtu - overhead)

    # rules follow each family's own order; the selection lists follow the node's first family's
    ordered = {f: _in_order(state.policies, f) for f in families or [IPV4]}
    policies = next(iter(ordered.values()))
    endpoints = _endpoints(state)
    selection: dict[str, list[str]] = {}
    for ep in state.local_endpoints:
        labels = state.pod_labels.get(f"{ep.namespace}/{ep.pod}")
        if labels is None:
            continue  # not known yet: no ack until we can tell whether a policy selects it
        chosen = [policy_key(p) for p in policies
                  if semantics.selects(p, ep.namespace, labels, state.namespace_labels.get(ep.namespace, {}), ep.ipv4 + ep.ipv6)]
        selection[ep.key] = chosen
        for key in chosen:
            endpoints[key].append((me, ep.ipv4 + ep.ipv6))

    mangle: dict[int, list[str]] = {f: [] for f in families}
    # A flow whose first packet went into the tunnel gets no NAT; its conntrack entry is marked so that
    # none of its later packets can leave another way with that binding (the pod IP), whatever changed.
    tunnelled = f"0x{config.mark_base | (~config.mark_mask & FULL & ~1):x}"
    # Above the tunnels' marks too (controller: 0x..000001-0x..fffffe): a veth's unsteered flow to leave masqueraded.
    unsteered = f"0x{config.mark_base | (~config.mark_mask & FULL):x}"
    underlay_masq = any(ep.underlay for ep in state.local_endpoints)
    # the same for a flow whose first packet went to its gateway directly (no tunnel)
    routed = f"0x{config.mark_base | (~config.mark_mask & FULL & ~2):x}"
    nat_tunnel = [tagged(f"-o {vx} -j CONNMARK --set-xmark {tunnelled}/0x{FULL:x}", "tunnelled"),
                  tagged(f"-o {vx} -j ACCEPT", "tunnel")] if link else []
    nat: dict[int, list[str]] = {f: [] for f in families}
    hops: dict[tuple[str, int], IP] = {}  # (peer, family) -> its parent IP, for peers we route to directly
    accept: dict[int, list[str]] = {f: [] for f in families}
    accept_direct: dict[int, list[str]] = {f: [] for f in families}
    unnatted: dict[int, list[str]] = {f: [] for f in families}
    ipsets: set[IPSet] = set()
    addresses: set[Address] = set()
    steer_to: set[str] = set()
    reply_to: set[str] = set()
    hijack: dict[int, set[str]] = {f: set() for f in families}
    selected: dict[int, set[str]] = {f: set() for f in families}
    ruled: set[tuple[str, int]] = set()
    sources: dict[str, dict[int, str]] = defaultdict(dict)
    gateway_of: dict[str, str] = {}
    placed: dict[str, tuple[str, dict[int, IP | None]]] = {}
    for p in policies:
        key = policy_key(p)
        gw, eips = semantics.placement(p, state.gateways, state.namespace_labels)
        gateway_of[key] = gw = state.overrides.get(key, gw)  # a peer took it over while the API lags; the EIPs stay the status's
        placed[key] = gw, eips
    for f in families:
        for p in ordered[f]:
            key = policy_key(p)
            gw, eips = placed[key]
            gw_peer = peers.get(gw)
            eps = endpoints.get(key, [])
            local = any(node == me for node, _ in eps)
            dst = members(p.spec.dest_subnet, f)
            if p.spec.dest_subnet and not dst:
                continue  # destSubnet names only the other family
            use_node_ip = p.spec.eip.use_node_ip
            if gw and not (eips[f] or use_node_ip):
                continue  # no egress IP of this family: the policy does not steer it
            src_name, dst_name = set_name(config, "s", f, p), set_name(config, "d", f, p)
            if dst:
                ipsets.add(IPSet(dst_name, f, uncovered(dst)))
                dst_match = f"-m set --match-set {dst_name} dst"
            else:
                dst_match = f"-m set ! --match-set {cluster_set(config, f)} dst"
            match = f"-m set --match-set {src_name} src {dst_match} -m conntrack --ctdir ORIGINAL"
            # podSubnet pods in scope come as endpoints (listed by the controller, selected here);
            # only a subnet whose every pod is in scope is matched as a whole
            subnet = members(p.spec.applied_to.pod_subnet, f) if semantics.whole_subnet_source(p) else frozenset()
            if gw == me:
                src = {m for node, ips in eps for m in members(ips, f)} | subnet
                reply_to.update(node for node, _ in eps if node and node != me)
                if eips[f] and not use_node_ip and facts.carrier:
                    dev = facts.eip_dev or facts.parent if f == IPV4 else facts.parent  # IPv6: NDP answers on-link only
                    addresses.add(Address(dev, f"{eips[f]}/{32 if f == IPV4 else 128}", eip=True))
            else:
                src = {m for node, ips in eps if node == me for m in members(ips, f)} | subnet
            ipsets.add(IPSet(src_name, f, uncovered(frozenset(src))))
            sources[key][f] = src_name
            if not src:
                continue  # no source on this node: its rules could never match (a packet meets one rule per policy)
            ruled.add((key, f))
            selected[f] |= src
            if gw == me:
                target = "MASQUERADE" if use_node_ip else f"SNAT --to-source {eips[f]}"
                nat[f].append(tagged(f"{match} -j {target}", f"snat:{key}"))
                mangle[f].append(tagged(f"-m mark ! --mark {base} {match} -j MARK --set-xmark {base.split('/')[0]}/0x{FULL:x}",
                                        f"local:{key}"))
                if link:
                    accept[f].append(tagged(f"-i {vx} {match} -j RETURN", f"tunnel:{key}"))
                if mode != ALWAYS:
                    accept_direct[f].append(tagged(f"-i {facts.parent} {match} -j RETURN", f"direct:{key}"))
            elif (hop := direct(gw_peer, f)) is not None and gw_peer is not None:
                mangle[f].append(tagged(f"-m mark ! --mark {base} {match} -j MARK --set-xmark 0x{gw_peer.mark:x}/0x{FULL:x}",
                                        f"steer:{key}"))
                steer_to.add(gw)
                hops[gw, f] = hop
            elif link and gw_peer is not None and f in gw_peer.tunnel_ip and f in own_tips:
                mangle[f].append(tagged(f"-m mark ! --mark {base} {match} -j MARK --set-xmark 0x{gw_peer.mark:x}/0x{FULL:x}",
                                        f"steer:{key}"))
                steer_to.add(gw)
            else:
                mangle[f].append(tagged(f"-m mark ! --mark {base} {match} -j DROP", f"nogateway:{key}"))
            # Fail closed on established flows too: NAT is decided by a flow's first packet only. A flow
            # that started while this node tunnelled it (`-o vx -j ACCEPT`: no NAT) and continues after
            # this node became the gateway (or lost its tunnel route) would leave with the pod IP.
            unnatted[f].append(tagged(f"! -o {vx} -m set --match-set {src_name} src {dst_match} -m conntrack"
                                      f" ! --ctstate SNAT --ctstatus CONFIRMED --ctdir ORIGINAL -j DROP",
                                      f"unnatted:{key}"))
            if local:
                hijack[f].update(_hijack(p.spec.dest_subnet, f))

    for f in families:
        if underlay_masq:  # last: the EIP SNATs and the tunnel's ACCEPT come first
            nat[f].append(tagged(f"-m mark --mark {unsteered}/0x{FULL:x} -j MASQUERADE", "underlay-masq"))
        ipsets.add(IPSet(cluster_set(config, f), f, uncovered(_cluster_members(state, f))))
        ipsets.add(IPSet(selected_set(config, f), f, uncovered(frozenset(selected[f]))))

    routes: set[Route] = set()
    rules: set[Rule] = set()
    neighbours: set[Neighbour] = set()
    fdb: set[Fdb] = set()
    connmark: dict[int, list[str]] = {f: [] for f in families}
    nat_direct: dict[int, list[str]] = {f: [] for f in families}
    post_direct: dict[int, list[str]] = {f: [] for f in families}
    closed: dict[int, list[str]] = {f: [] for f in families}
    parent = facts.parent
    for name in sorted(steer_to | reply_to):
        peer = peers.get(name)
        if peer is None or name == me:
            continue
        for f in families:
            hop = hops.get((name, f)) or (direct(peer, f, replying=True) if name in reply_to else None)
            if hop is not None:
                hops[name, f] = hop
                rules.add(Rule(f, config.rule_priority, peer.mark, peer.mark))
                # table of M without its route: refused here, never looked up in the main table
                rules.add(Rule(f, config.rule_priority + 1, peer.mark, 0, unreachable=True))
                routes.add(Route(f, peer.mark, "default", str(hop), parent))
            if name in steer_to and (name, f) in hops:
                mark = f"-o {parent} -m mark --mark 0x{peer.mark:x}/0x{FULL:x}"
                nat_direct[f] += [tagged(f"{mark} -j CONNMARK --set-xmark {routed}/0x{FULL:x}", f"routed:{name}"),
                                  tagged(f"{mark} -j ACCEPT", f"direct:{name}")]
                post_direct[f].append(tagged(f"{mark} -j RETURN", f"direct-done:{name}"))
            if name in reply_to and mode != ALWAYS and peer.parent_mac is not None:
                # whichever way this gateway answers, the peer may come direct (its view of the segment);
                # only flows to outside the cluster: the peer's own traffic to this node keeps its connmark
                came = f"-i {parent} -m mac --mac-source {peer.parent_mac}"
                outside = f"-m set ! --match-set {cluster_set(config, f)} dst"
                connmark[f].append(tagged(f"{came} {outside} -m conntrack --ctdir ORIGINAL -j CONNMARK --set-xmark"
                                          f" 0x{peer.mark:x}/0x{FULL:x}", f"reply-direct:{name}"))
                own_addr = peer.parent_ip.get(f)
                closed[f].append(tagged(f"{came}{f' ! -s {own_addr}' if own_addr else ''} {outside} -j DROP",
                                        f"direct-closed:{name}"))
    if link:
        for name in sorted(steer_to | reply_to):
            peer = peers.get(name)
            if peer is None or name == me:
                continue
            if not all((name, f) in hops for f in families):  # our tunnel packets to it, if any
                fdb.add(Fdb(vx, peer.mac, peer.underlay))
            for f in families:
                tip = peer.tunnel_ip.get(f)
                if tip is None or f not in own_tips:
                    continue
                if name in reply_to:
                    connmark[f].append(tagged(
                        f"-i {vx} -m mac --mac-source {peer.mac} -m conntrack --ctdir ORIGINAL"
                        f" -j CONNMARK --set-xmark 0x{peer.mark:x}/0x{FULL:x}", f"reply:{name}"))
                if (name, f) in hops:
                    continue  # replies go direct; its tunnelled arrivals are still marked
                neighbours.add(Neighbour(f, vx, tip, peer.mac))
                rules.add(Rule(f, config.rule_priority, peer.mark, peer.mark))
                routes.add(Route(f, peer.mark, "default", tip, vx))
        for f, tip in own_tips.items():
            addresses.add(Address(vx, f"{tip}/{32 if f == IPV4 else 128}"))

    chains: set[Chain] = set()
    for f in families:
        # Traffic of sources no policy names (most of a node's) meets one set lookup, not one per policy.
        guard = [tagged(f"-m set ! --match-set {selected_set(config, f)} src -j RETURN", "unselected")]
        restore = [tagged(f"-m conntrack --ctdir REPLY -m connmark --mark {base} -j CONNMARK --restore-mark"
                          f" --nfmask 0x{FULL:x} --ctmask 0x{FULL:x}", "reply-restore")] if connmark[f] else []
        chains.add(Chain(f, "mangle", config.mangle_chain, "PREROUTING", tuple(restore + connmark[f] + (guard + mangle[f] if mangle[f] else []))))
        chains.add(Chain(f, "nat", config.nat_chain, "POSTROUTING", tuple(nat_tunnel + nat_direct[f] + nat[f])))
        filt: list[str] = []
        post: list[str] = []
        if link:
            filt = [tagged(f"-i {vx} -m conntrack --ctdir REPLY -j RETURN", "tunnel-reply"), *accept[f],
                    tagged(f"-i {vx} -j DROP", "fail-closed")]
            post = [
                tagged(f"-o {vx} -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu", "mss"),
                # the VXLAN packet inherits the inner mark: reset it so the outer one is not routed into the tunnel again
                tagged(f"-o {vx} -j MARK --set-xmark 0x{config.mark_base:x}/0x{FULL:x}", "outer-mark"),
                tagged(f"-o {vx} -j RETURN", "tunnel-done"),  # every rule below is `! -o vx`
            ]
        post += post_direct[f]  # packets to their gateway directly: the rules below are for everything else
        if link:
            post.append(tagged(f"! -o {vx} -m connmark --mark {tunnelled} -m conntrack ! --ctstate SNAT --ctdir ORIGINAL -j DROP",
                               "tunnelled-elsewhere"))
        if mode != ALWAYS:
            post.append(tagged(f"-m connmark --mark {routed} -m conntrack ! --ctstate SNAT --ctdir ORIGINAL -j DROP",
                               "routed-elsewhere"))
        if closed[f]:
            # direct arrivals: replies and this node's own policies pass, the rest to outside the cluster is dropped
            filt += [tagged(f"-i {parent} -m conntrack --ctdir REPLY -j RETURN", "direct-reply"), *accept_direct[f],
                     *closed[f]]
        if underlay_masq:
            # FORWARD sees both links (nat POSTROUTING has no -i); no mark of ours = not steered; DNAT = kube-proxy's
            filt.append(tagged(f"-i {config.host_veth_prefix}+ -o {facts.parent} -m mark ! --mark {base}"
                               f" -m set ! --match-set {cluster_set(config, f)} dst -m conntrack --ctstate NEW"
                               f" -m conntrack ! --ctstate DNAT -j MARK --set-xmark {unsteered}/0x{FULL:x}",
                               "underlay-unsteered"))
        chains.add(Chain(f, "filter", config.filter_chain, "FORWARD", tuple(filt)))
        # The outer VXLAN packets need no conntrack entry (one per inner flow and node otherwise).
        untracked = link is not None and f == underlay_family
        udp = f"-p udp -m udp --dport {config.port} -j NOTRACK"
        chains.add(Chain(f, "raw", config.raw_in_chain, "PREROUTING",
                         (tagged(f"-d {local_ip} {udp}", "notrack-in"),) if untracked else ()))
        chains.add(Chain(f, "raw", config.raw_out_chain, "OUTPUT",
                         (tagged(f"-s {local_ip} {udp}", "notrack-out"),) if untracked else ()))
        # every unnatted rule needs "not SNATed": a SNATed packet (most of selected traffic) leaves here
        natted = [tagged("-m conntrack --ctstate SNAT -j RETURN", "natted")]
        chains.add(Chain(f, "mangle", config.mangle_post_chain, "POSTROUTING",
                         tuple(post + (guard + natted + unnatted[f] if unnatted[f] else []))))

    sysctls = {Sysctl(f"net/ipv4/conf/{vx}/rp_filter", "2")} if link else set()
    if IPV4 in closed and closed[IPV4] and facts.rp_filter == 1:
        # direct arrivals come from pod IPs the node may route elsewhere (the CNI's overlay): strict
        # reverse-path filtering would drop them; loose keeps dropping unroutable sources
        sysctls.add(Sysctl(f"net/ipv4/conf/{parent}/rp_filter", "2"))
    dataplane = Dataplane(
        link=link, addresses=frozenset(addresses), routes=frozenset(routes), rules=frozenset(rules),
        neighbours=frozenset(neighbours), fdb=frozenset(fdb), ipsets=frozenset(ipsets), chains=frozenset(chains),
        sysctls=frozenset(sysctls), jumps_ok=frozenset(c.key for c in chains),
    )
    return Desired(dataplane, {k: tuple(v) for k, v in selection.items()},
                   {f: tuple(sorted(v)) for f, v in hijack.items()}, gateway_of,
                   tuple(policy_key(p) for p in policies), frozenset(n for n in steer_to | reply_to if n in peers),
                   frozenset(ruled),
                   {k: PolicySets(dict(sources.get(k, {})), frozenset(f for f in families if (k, f) in ruled), gw)
                    for k, gw in gateway_of.items()},
                   {f: selected_set(config, f) for f in families}, {f: cluster_set(config, f) for f in families},
                   underlay_masq)
