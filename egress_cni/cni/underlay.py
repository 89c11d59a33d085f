"""Underlay mode (macvlan/ipvlan/SR-IOV pods): steer hijacked destinations through the host.

Like spiderpool's coordinator: a veth pair pod `veth0` <-> host `egw<hash>`, static neighbours both
ways (no ARP over the veth), pod `/32` routes to the node IP(s) and then `<cidr> via <nodeIP> dev
veth0`, and on the host `<podIP>/32 dev <hostveth>` in the main table (or, with `hostRuleTable`, in
that table behind the shared `ip rule pref <hostRulePriority> lookup <table>`, as the coordinator
does), so gateway rules in the host netns see the pod's traffic and replies return the same way.
plan() is pure; apply()/check()/teardown() do the netlink work.
Deleting the host veth removes its peer and every route/neighbour through either end.
"""

from __future__ import annotations

import _sha1  # type: ignore[import-not-found]  # hashlib would load OpenSSL (~3 ms)

from egress_cni.cni.config import AF_INET, AF_INET6, Cidr
from egress_cni.lowlevel import netlink
from egress_cni.lowlevel.netlink import (
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTPROT_EGRESS_HIJACK,
    RTPROT_STATIC,
    Netlink,
    Route,
)
from egress_cni.lowlevel.netns import Switch
from egress_cni.lowlevel.record import Record
from egress_cni.registry import hijack_destinations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def veth_identity(prefix: str, network: str, container_id: str, ifname: str) -> tuple[str, bytes, bytes]:
    """(host veth name <= 15 chars, host MAC, pod MAC): stable per attachment, explicit so udev never rewrites them."""
    digest: bytes = _sha1.sha1(f"{network}\0{container_id}\0{ifname}".encode()).digest()
    name = prefix + digest.hex()[: 15 - len(prefix)]
    return name, b"\x02" + digest[10:15], b"\x0a" + digest[15:20]


# replyViaVeth (coordinator's makeReplyPacketViaVeth): connections that enter the pod through the veth
# (node -> pod, Service traffic DNATed on the node) are marked and their replies routed back via the veth.
REPLY_MARK = 0x1
REPLY_TABLE = 100
REPLY_RULE_PRIORITY = 1000
REPLY_IPTABLES = """*mangle
-A PREROUTING -i {veth} -m conntrack --ctstate NEW -j MARK --set-xmark 0x1/0xffffffff
-A PREROUTING -m mark --mark 0x1 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
"""


def full_len(family: int) -> int:
    return 32 if family == AF_INET else 128


class Plan(Record):
    """Everything underlay ADD creates for one attachment (and CHECK verifies)."""

    __slots__ = ("host_mac", "host_routes", "host_veth", "mtu", "node_ips", "pod_ips", "pod_mac", "pod_routes", "pod_veth",
                 "reply_families", "reply_routes", "rules")
    host_veth: str
    host_mac: bytes
    pod_veth: str
    pod_mac: bytes
    mtu: int
    pod_ips: tuple[tuple[int, str], ...]
    node_ips: tuple[tuple[int, str], ...]
    pod_routes: tuple[Route, ...]  # oif 0 = the pod veth (its index is known only after creation)
    host_routes: tuple[Route, ...]  # oif 0 = the host veth
    rules: tuple[tuple[int, int, int], ...]  # (family, priority, table)
    reply_families: tuple[int, ...]  # replyViaVeth: families with the pod's CONNMARK + fwmark rule
    reply_routes: tuple[Route, ...]  # replyViaVeth: default via the node in REPLY_TABLE (oif 0 = pod veth)

    def __init__(self, **values: Any) -> None:
        self._init(**values)

    def to_state(self) -> dict[str, Any]:
        return {
            "hostVeth": self.host_veth, "hostMAC": self.host_mac.hex(), "podVeth": self.pod_veth, "podMAC": self.pod_mac.hex(),
            "mtu": self.mtu, "podIPs": [list(p) for p in self.pod_ips], "nodeIPs": [list(n) for n in self.node_ips],
            "podRoutes": [_route_state(r) for r in self.pod_routes], "hostRoutes": [_route_state(r) for r in self.host_routes],
            "rules": [list(r) for r in self.rules], "replyFamilies": list(self.reply_families),
            "replyRoutes": [_route_state(r) for r in self.reply_routes],
        }  # fmt: skip

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Plan:
        return cls(
            host_veth=d["hostVeth"], host_mac=bytes.fromhex(d["hostMAC"]), pod_veth=d["podVeth"], pod_mac=bytes.fromhex(d["podMAC"]),
            mtu=d["mtu"], pod_ips=tuple((f, a) for f, a in d["podIPs"]), node_ips=tuple((f, a) for f, a in d["nodeIPs"]),
            pod_routes=tuple(Route(*r) for r in d["podRoutes"]), host_routes=tuple(Route(*r) for r in d["hostRoutes"]),
            rules=tuple((f, p, t) for f, p, t in d["rules"]), reply_families=tuple(d.get("replyFamilies", ())),
            reply_routes=tuple(Route(*r) for r in d.get("replyRoutes", ())),
        )  # fmt: skip


def _route_state(r: Route) -> list[Any]:
    return [r.family, r.dst, r.dst_len, r.table, r.oif, r.gateway, r.prefsrc, r.scope, r.protocol]


def plan(
    *,
    identity: tuple[str, bytes, bytes],
    pod_veth: str,
    mtu: int,
    pod_ips: tuple[tuple[int, str], ...],
    node_ips: tuple[tuple[int, str], ...],
    hijack: tuple[Cidr, ...],
    table: int,
    priority: int,
    reply_via_veth: bool = False,
    dynamic: tuple[Cidr, ...] = (),
) -> tuple[Plan, list[str]]:
    """The objects to create, plus warnings (hijacked CIDRs of a family the pod or node lacks).
    hijack: the conflist's CIDRs (RTPROT_STATIC, the plugin's for the pod's life); dynamic: hijack.json's
    (RTPROT_EGRESS_HIJACK, the agent keeps them in step with the file afterwards; a CIDR in both is static)."""
    warnings: list[str] = []
    first_v4 = next((ip for fam, ip in pod_ips if fam == AF_INET), "")
    pod_families = {fam for fam, _ in pod_ips}
    node_by_family: dict[int, str] = {}
    for fam, ip in node_ips:
        node_by_family.setdefault(fam, ip)
    pod_routes: list[Route] = []
    for fam, ip in node_ips:  # the /32s first: a `via` route needs its gateway on-link already
        src = first_v4 if fam == AF_INET else ""  # no src on v6 routes (kernel bug 107071)
        pod_routes.append(Route(fam, ip, full_len(fam), RT_TABLE_MAIN, 0, "", src, RT_SCOPE_LINK))
    seen: set[tuple[int, str, int]] = set()
    for cidr, protocol in [(c, RTPROT_STATIC) for c in hijack] + [(c, RTPROT_EGRESS_HIJACK) for c in dynamic]:
        gateway = node_by_family.get(cidr.family)
        if cidr.family not in pod_families or not gateway:
            warnings.append(f"hijackCIDR {cidr} skipped: no {'IPv4' if cidr.family == AF_INET else 'IPv6'} on the pod or the node")
            continue
        dsts = ((cidr.address, cidr.prefixlen),) if protocol == RTPROT_STATIC else \
            hijack_destinations(cidr.family, cidr.address, cidr.prefixlen)
        for address, prefixlen in dsts:
            if (cidr.family, address, prefixlen) not in seen:
                seen.add((cidr.family, address, prefixlen))
                src = first_v4 if cidr.family == AF_INET else ""
                pod_routes.append(Route(cidr.family, address, prefixlen, RT_TABLE_MAIN, 0, gateway, src, RT_SCOPE_UNIVERSE, protocol))
    host_routes = tuple(Route(fam, ip, full_len(fam), table, 0, "", "", RT_SCOPE_LINK) for fam, ip in pod_ips)
    rules = () if table == RT_TABLE_MAIN else tuple((fam, priority, table) for fam in sorted(pod_families))
    reply_families = tuple(sorted(f for f in pod_families if f in node_by_family)) if reply_via_veth else ()
    reply_routes = tuple(
        Route(f, "0.0.0.0" if f == AF_INET else "::", 0, REPLY_TABLE, 0, node_by_family[f], first_v4 if f == AF_INET else "", RT_SCOPE_UNIVERSE)
        for f in reply_families
    )
    name, host_mac, pod_mac = identity
    return Plan(
        host_veth=name, host_mac=host_mac, pod_veth=pod_veth, pod_mac=pod_mac, mtu=mtu, pod_ips=pod_ips, node_ips=node_ips,
        pod_routes=tuple(pod_routes), host_routes=host_routes, rules=rules, reply_families=reply_families, reply_routes=reply_routes,
    ), warnings  # fmt: skip


def node_ips_for(host: Netlink, pod_ips: tuple[tuple[int, str], ...]) -> tuple[tuple[tuple[int, str], ...], tuple[tuple[int, int, str], ...]]:
    """The node's source address towards each pod IP (`ip route get <podIP>` in the host netns, deduplicated),
    and (family, ifindex, podIP) of the host device that route leaves by (where a stale neighbour may linger)."""
    nodes: list[tuple[int, str]] = []
    uplinks: list[tuple[int, int, str]] = []
    for fam, ip in pod_ips:
        route = host.route_get(fam, ip)
        if route and route.prefsrc and (fam, route.prefsrc) not in nodes:
            nodes.append((fam, route.prefsrc))
        if route and route.oif:
            uplinks.append((fam, route.oif, ip))
    return tuple(nodes), tuple(uplinks)


def pod_link_kind(switch: Switch, ifname: str) -> str:
    """Kind of the pod's interface ('veth', 'macvlan', ...; '' when the kernel does not say)."""
    with switch.inside(), Netlink() as pod:
        link = pod.link(ifname)
    return link.kind if link else ""


def apply(p: Plan, switch: Switch, stale_neighbours: tuple[tuple[int, int, str], ...] = ()) -> None:
    """Create the plan; on failure the caller runs teardown() (deleting the veth undoes everything else).
    stale_neighbours: (family, ifindex, ip) entries to drop first (an old MAC for a reused pod IP)."""
    with Netlink() as host:
        host.delete_link(p.host_veth)  # a leftover from an interrupted ADD of the same attachment
        host.create_veth(p.host_veth, p.host_mac, p.pod_veth, p.pod_mac, p.mtu, switch.target_fd)
        host_link = host.link(p.host_veth)
        if host_link is None:
            raise OSError(19, f"host veth {p.host_veth} vanished after creation")
        host.set_up(host_link.index)
        with switch.inside(), Netlink() as pod:
            pod_link = pod.existing_link(p.pod_veth, "pod veth")
            pod.set_up(pod_link.index)
            for fam, ip in p.node_ips:
                pod.neigh_replace(fam, pod_link.index, _packed(fam, ip), p.host_mac)
            for r in p.pod_routes:
                if r.protocol != RTPROT_EGRESS_HIJACK:
                    pod.route_replace(_on(r, pod_link.index))
                else:  # hijack.json's: never displaces a route the pod has (its IPAM's), as the agent never does
                    pod.route_add(_on(r, pod_link.index))
            for r in p.reply_routes:
                pod.route_replace(_on(r, pod_link.index))
            for fam in p.reply_families:
                pod.rule_add(fam, REPLY_RULE_PRIORITY, REPLY_TABLE, REPLY_MARK)
                _iptables_restore(fam, REPLY_IPTABLES.format(veth=p.pod_veth))  # the child inherits the pod netns
        for fam, index, ip in stale_neighbours:
            if index != host_link.index:
                host.neigh_delete(fam, index, _packed(fam, ip))
        for fam, ip in p.pod_ips:
            host.neigh_replace(fam, host_link.index, _packed(fam, ip), p.pod_mac)
        for fam, priority, table in p.rules:
            host.rule_add(fam, priority, table)
        for r in p.host_routes:
            host.route_replace(_on(r, host_link.index))


def teardown(host_veth: str) -> bool:
    """Delete the host veth (and with it the pod end, table routes and neighbours); False when already gone."""
    with Netlink() as host:
        return host.delete_link(host_veth)


def check(p: Plan, switch: Switch) -> list[str]:
    """What is missing or different from the plan (empty = healthy)."""
    problems: list[str] = []
    with Netlink() as host:
        host_link = host.link(p.host_veth)
        if host_link is None:
            return [f"host veth {p.host_veth} is missing"]
        if not host_link.flags & netlink.IFF_UP:
            problems.append(f"host veth {p.host_veth} is down")
        for fam, priority, table in p.rules:
            if not any(r.priority == priority and r.table == table and r.src_len == 0 and r.dst_len == 0 for r in host.rules(fam)):
                problems.append(f"host rule 'pref {priority} lookup {table}' is missing")
        problems += _missing_routes(host, p.host_routes, host_link.index, "host")
    with switch.inside(), Netlink() as pod:
        pod_link = pod.link(p.pod_veth)
        if pod_link is None:
            problems.append(f"pod veth {p.pod_veth} is missing")
        else:
            static = tuple(r for r in p.pod_routes if r.protocol != RTPROT_EGRESS_HIJACK)  # the agent's follow hijack.json
            problems += _missing_routes(pod, static + p.reply_routes, pod_link.index, "pod")
        for fam in p.reply_families:
            if not any(r.fwmark == REPLY_MARK and r.table == REPLY_TABLE for r in pod.rules(fam)):
                problems.append(f"pod rule 'fwmark {REPLY_MARK:#x} lookup {REPLY_TABLE}' is missing")
    return problems


def _missing_routes(nl: Netlink, wanted: tuple[Route, ...], oif: int, where: str) -> list[str]:
    problems = []
    tables: dict[tuple[int, int], list[Route]] = {}
    for r in wanted:
        have = tables.setdefault((r.family, r.table), nl.routes(r.family, r.table))
        if not any(h.dst == r.dst and h.dst_len == r.dst_len and h.oif == oif and h.gateway == r.gateway for h in have):
            via = f" via {r.gateway}" if r.gateway else ""
            problems.append(f"{where} route {r.dst}/{r.dst_len}{via} table {r.table} is missing")
    return problems


def _iptables_restore(family: int, rules: str) -> None:
    from egress_cni.lowlevel.command import CommandError, run  # only with replyViaVeth (subprocess costs pod-start time)

    tool = "iptables-restore" if family == AF_INET else "ip6tables-restore"
    try:
        run([tool, "-w", "5", "--noflush"], stdin=rules)
    except CommandError as exc:
        raise OSError(5, f"{tool} in the pod failed: {exc.stderr.strip()}") from exc


def _on(r: Route, oif: int) -> Route:
    return Route(r.family, r.dst, r.dst_len, r.table, oif, r.gateway, r.prefsrc, r.scope, r.protocol)


def _packed(family: int, ip: str) -> bytes:
    import _socket

    return _socket.inet_pton(family, ip)


__all__ = ["AF_INET", "AF_INET6", "Plan", "apply", "check", "node_ips_for", "plan", "pod_link_kind", "teardown", "veth_identity"]
