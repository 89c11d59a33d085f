"""The hijack routes one underlay pod should have, and what to change to get there (pure).

The CNI plugin routes every hijacked CIDR of an underlay pod via the node (`<cidr> via <nodeIP> dev
veth0`) when the pod starts: the conflist's `hijackCIDR` with protocol static (the plugin's, for the
pod's life) and hijack.json's with our protocol `RTPROT_EGRESS_HIJACK`. Afterwards the agent keeps
the latter in step with hijack.json (agent/hijack_sync.py applies what `changes` returns). It owns
only routes of that protocol: it never replaces or removes another owner's route, and skips a
destination someone else already routes (the conflist's, the pod's own, an operator's).
"""

from __future__ import annotations

from dataclasses import dataclass

from egress_cni import registry
from egress_cni.api.net import AddressError, Cidr, CidrMode, as_cidrs, as_ips
from egress_cni.lowlevel.netlink import AF_INET, AF_INET6, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTPROT_EGRESS_HIJACK, Route

LENIENT = CidrMode.BARE_IP | CidrMode.HOST_BITS  # as the plugin reads hijack.json (a bare address is a host)
_AF = {4: AF_INET, 6: AF_INET6}

Key = tuple[int, str, int]  # (address family, destination, prefix length): one route per key in table main


@dataclass(frozen=True)
class PodFacts:
    """What the plugin recorded at ADD about one underlay pod (registry.Endpoint), parsed."""

    key: str
    netns: str
    netns_inode: int
    pod_veth: str
    src4: str  # the pod's first IPv4: the `src` of its IPv4 routes ("" = none; IPv6 routes carry no src)
    families: frozenset[int]  # 4 and/or 6: the pod's address families
    gateways: dict[int, str]  # family -> the node IP the routes go via
    static: frozenset[Key]  # the conflist's hijackCIDR: the plugin's routes, never the agent's


@dataclass(frozen=True)
class Changes:
    """Applied in this order: create, then replace, then remove (add before remove)."""

    create: tuple[Route, ...] = ()  # no route for the destination yet
    replace: tuple[Route, ...] = ()  # ours, with other attributes (the node IP changed)
    remove: tuple[Route, ...] = ()  # ours, for a destination hijack.json no longer names

    def __bool__(self) -> bool:
        return bool(self.create or self.replace or self.remove)


def pod_facts(e: registry.Endpoint) -> PodFacts | None:
    """The record's facts; None for an overlay pod, or an underlay one written by an older plugin."""
    if not e.routable:
        return None
    v4 = as_ips(e.ipv4, 4)
    pod = v4 + as_ips(e.ipv6, 6)
    gateways: dict[int, str] = {}
    for ip in as_ips(e.node_ips):
        gateways.setdefault(ip.family, str(ip))
    static = frozenset(key_of(c) for c in as_cidrs(e.static_hijack, LENIENT))
    return PodFacts(key=e.key, netns=e.netns, netns_inode=e.netns_inode, pod_veth=e.pod_veth, src4=str(v4[0]) if v4 else "",
                    families=frozenset(ip.family for ip in pod), gateways=gateways, static=static)


def hijack_cidrs(h: registry.Hijack) -> tuple[tuple[Cidr, ...], list[str]]:
    """hijack.json's CIDRs and the entries that do not parse (skipped, as the plugin skips them)."""
    out: list[Cidr] = []
    bad: list[str] = []
    for text in (*h.ipv4, *h.ipv6):
        try:
            out.append(as_cidrs((text,), LENIENT)[0])
        except AddressError:
            bad.append(text)
    return tuple(out), bad


def key_of(c: Cidr) -> Key:
    return (_AF[c.family], str(c.network), c.prefixlen)


def route_key(r: Route) -> Key:
    return (r.family, r.dst, r.dst_len)


def desired(hijack: tuple[Cidr, ...], pod: PodFacts) -> dict[Key, Route]:
    """The pod's routes of our protocol: one per hijacked CIDR of a family the pod and node have (a
    default as its two halves), the conflist's static CIDRs excluded. oif 0 stands for the pod veth."""
    out: dict[Key, Route] = {}
    for c in hijack:
        gateway = pod.gateways.get(c.family)
        if c.family not in pod.families or not gateway or key_of(c) in pod.static:
            continue
        src = pod.src4 if c.family == 4 else ""  # no src on IPv6 routes (kernel bug 107071), as the plugin
        af = _AF[c.family]
        for dst, plen in registry.hijack_destinations(af, str(c.network), c.prefixlen):  # a default as two halves
            out[(af, dst, plen)] = Route(af, dst, plen, RT_TABLE_MAIN, 0, gateway, src, RT_SCOPE_UNIVERSE, RTPROT_EGRESS_HIJACK)
    return out


def changes(want: dict[Key, Route], have: list[Route], oif: int) -> Changes:
    """From the routes of table main in the pod (`have`, every protocol) to `want` on the veth `oif`."""
    ours = {route_key(r): r for r in have if r.protocol == RTPROT_EGRESS_HIJACK}
    foreign = {route_key(r) for r in have if r.protocol != RTPROT_EGRESS_HIJACK}
    create, replace = [], []
    for key, r in sorted(want.items()):
        if key in foreign:
            continue  # another owner routes it already: leave theirs alone
        wanted = _on(r, oif)
        mine = ours.get(key)
        if mine is None:
            create.append(wanted)
        elif (mine.oif, mine.gateway, mine.prefsrc, mine.scope) != (oif, r.gateway, r.prefsrc, r.scope):
            replace.append(wanted)
    remove = tuple(r for key, r in sorted(ours.items()) if key not in want)
    return Changes(tuple(create), tuple(replace), remove)


def _on(r: Route, oif: int) -> Route:
    return Route(r.family, r.dst, r.dst_len, r.table, oif, r.gateway, r.prefsrc, r.scope, r.protocol)
