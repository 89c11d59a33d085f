"""This node's facts from the kernel: the parent (underlay) link, its first global IPs, MTU, carrier,
MAC, connected prefixes (which peers are on-link, for the no-encapsulation mode) and rp_filter.

The parent is `--parent` when given, else the link of the default route (IPv4 first). Our own EIPs
(IFA_PROTO = ours) and host prefixes are never taken as the node's underlay address.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from pyroute2 import IPRoute

from egress_cni.dataplane.eipnetlink import EipNetlink
from egress_cni.dataplane.inputs import DataplaneConfig, NodeFacts
from egress_cni.dataplane.netlink import link_has_carrier

log = logging.getLogger(__name__)


def default_route_link(ipr: IPRoute) -> str | None:
    for af in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=af, table=254):
            if r["dst_len"] == 0 and r.get_attr("RTA_OIF"):
                return str(ipr.get_links(r.get_attr("RTA_OIF"))[0].get_attr("IFLA_IFNAME"))
    return None


def read_facts(name: str, parent: str | None, config: DataplaneConfig, *, ipv4: bool = True,
               ipv6: bool = False, eip_dev: str = "") -> NodeFacts:
    with IPRoute() as ipr:
        link = parent or default_route_link(ipr)
        if not link:
            raise RuntimeError("no parent link: pass --parent or give the node a default route")
        found = ipr.link_lookup(ifname=link)
        if not found:
            raise RuntimeError(f"parent link {link!r} does not exist")
        idx = found[0]
        msg = ipr.get_links(idx)[0]
        mtu, carrier = int(msg.get_attr("IFLA_MTU")), link_has_carrier(msg)
        mac = str(msg.get_attr("IFLA_ADDRESS") or "")
        first: dict[int, str] = {}
        onlink: list[str] = []
        for a in ipr.get_addr(index=idx):
            if a.get_attr("IFA_PROTO") == config.eip_proto or a["scope"] != 0:
                continue
            fam = 4 if a["family"] == socket.AF_INET else 6
            if a["prefixlen"] in (32, 128):
                continue
            first.setdefault(fam, a.get_attr("IFA_ADDRESS"))
            onlink.append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
    return NodeFacts(name, link, first.get(4, ""), first.get(6, ""), mtu, ipv4, ipv6, carrier, eip_dev,
                     parent_mac=mac, onlink=tuple(onlink), rp_filter=rp_filter(link))


def rp_filter(link: str) -> int:
    """The effective IPv4 reverse-path filter of `link`: the larger of `all` and the link's own."""
    values = []
    for conf in ("all", link):
        try:
            with open(f"/proc/sys/net/ipv4/conf/{conf}/rp_filter", encoding="ascii") as f:
                values.append(int(f.read().strip() or 0))
        except (OSError, ValueError):
            values.append(0)
    return max(values)


def kernel_eips(parent: str, config: DataplaneConfig) -> Callable[[], frozenset[str]]:
    """A reader of the EIPs held (on `parent` or the EIP holder), for the peer thread only (its
    own raw socket: it reads at every tick)."""
    nl = EipNetlink(config.eip_proto)
    return lambda: frozenset(ip for _, _, ip, _, _ in nl.held([parent, config.eip_dev]))


def held_now(parent: str, config: DataplaneConfig) -> frozenset[str]:
    """The EIPs held now (one read; for `PeerMonitor.adopt` at start)."""
    try:
        nl = EipNetlink(config.eip_proto)
        try:
            return frozenset(ip for _, _, ip, _, _ in nl.held([parent, config.eip_dev]))
        finally:
            nl.close()
    except OSError as exc:
        log.warning("cannot read the eips held", extra={"error": str(exc)})
        return frozenset()
