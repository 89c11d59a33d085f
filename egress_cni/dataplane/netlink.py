"""Links, addresses, routes, rules, neighbours and FDB entries through pyroute2 (the netlink half of apply).

What we own is found in the kernel, not in memory: the VXLAN link by name; rules whose fwmark has our
mark bits; routes in the tables those marks name; EIPs by IFA_PROTO on the parent link and on the EIP
holder (`DataplaneConfig.eip_dev`, dataplane/eipdev.py), where IPv4 EIPs live while an agent holds it.

EIP addresses carry a valid lifetime (`DataplaneConfig.eip_lifetime`): the agent's fencing thread
renews it (`KernelDataplane.refresh_eips`, over dataplane/eipnetlink.py), so the kernel itself removes the EIPs of an agent that died or hangs.
Every EIP add, delete and renewal holds `eip_lock`: a renewal never resurrects an EIP that the
reconcile (or SIGTERM) just removed, since it only renews what it finds present under the lock.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from egress_cni.dataplane.inputs import DataplaneConfig
from egress_cni.dataplane.plan import IPV4, IPV6, Address, Fdb, Neighbour, Plan, Route, Rule, VxlanLink
from egress_cni.lowlevel.netlink import FR_ACT_UNREACHABLE, RT_TABLE_MAIN

log = logging.getLogger(__name__)
AF = {IPV4: socket.AF_INET, IPV6: socket.AF_INET6}
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
RTNH_F_ONLINK = 0x04
IFF_UP = 0x1


def link_has_carrier(msg: Any) -> bool:
    """An RTM_NEWLINK message's link is administratively up and has carrier."""
    return bool(msg["flags"] & IFF_UP) and bool(msg.get_attr("IFLA_CARRIER"))


def _family_of(ip: str) -> int:
    return IPV6 if ":" in ip else IPV4


def _route_key(msg: Any, table: int) -> dict[str, Any]:
    """The keys that name one dumped route for its delete."""
    key: dict[str, Any] = {"family": msg["family"], "table": table, "dst_len": msg["dst_len"], "scope": msg["scope"]}
    for attr, name in (("RTA_DST", "dst"), ("RTA_OIF", "oif")):
        value = msg.get_attr(attr)
        if value:
            key[name] = value
    return key


class Netlink:
    def __init__(self, config: DataplaneConfig, eip_lock: threading.Lock | None = None) -> None:
        self.config = config
        self.ipr = IPRoute()
        self.eip_lock = eip_lock or threading.Lock()

    def close(self) -> None:
        self.ipr.close()

    def index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    # --- read ---------------------------------------------------------------------------------

    def read_link(self) -> VxlanLink | None:
        idx = self.index(self.config.vxlan_name)
        if idx is None:
            return None
        msg = self.ipr.get_links(idx)[0]
        info = msg.get_attr("IFLA_LINKINFO")
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan" or data is None:
            return VxlanLink(self.config.vxlan_name, -1, 0, "", "", "", 0)  # foreign type: replaced
        parent_idx = data.get_attr("IFLA_VXLAN_LINK")
        parent = self.ipr.get_links(parent_idx)[0].get_attr("IFLA_IFNAME") if parent_idx else ""
        local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6") or ""
        return VxlanLink(self.config.vxlan_name, data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_PORT"),
                         parent, local, msg.get_attr("IFLA_ADDRESS"), msg.get_attr("IFLA_MTU"), bool(msg["flags"] & IFF_UP))

    def read_addresses(self, parent: str) -> set[Address]:
        out = {Address(dev, f"{ip}/{plen}", eip=True) for _, dev, ip, plen, _ in self._held_eips(parent)}
        vx = self.index(self.config.vxlan_name)
        if vx is not None:
            for a in self.ipr.get_addr(index=vx):
                ip = a.get_attr("IFA_ADDRESS")
                if not ip.startswith("fe80"):
                    out.add(Address(self.config.vxlan_name, f"{ip}/{a['prefixlen']}"))
        return out

    def read_rules(self) -> set[Rule]:
        out: set[Rule] = set()
        for f, af in AF.items():
            for r in self.ipr.get_rules(family=af):
                mark = r.get_attr("FRA_FWMARK")
                if mark is not None and self.config.owns_mark(mark):
                    unreachable = r["action"] == FR_ACT_UNREACHABLE
                    table = 0 if unreachable else r.get_attr("FRA_TABLE") or r["table"]
                    out.add(Rule(f, r.get_attr("FRA_PRIORITY") or 0, mark, table, unreachable))
        return out

    def read_routes(self, tables: set[int]) -> set[Route]:
        """Routes in our tables, from one dump per family (a dump returns every table)."""
        out: set[Route] = set()
        names: dict[int, str] = {}
        for f, af in AF.items():
            for r in self.ipr.route("dump", family=af):
                table = r.get_attr("RTA_TABLE")
                if table not in tables:
                    continue
                oif = r.get_attr("RTA_OIF")
                if oif not in names:
                    names[oif] = self.ipr.get_links(oif)[0].get_attr("IFLA_IFNAME") if oif else ""
                dst = "default" if r["dst_len"] == 0 else f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
                out.add(Route(f, table, dst, r.get_attr("RTA_GATEWAY") or "", names[oif]))
        return out

    def owned_tables(self) -> set[int]:
        return {r.table for r in self.read_rules() if not r.unreachable}

    def read_neighbours(self) -> tuple[set[Neighbour], set[Fdb]]:
        idx = self.index(self.config.vxlan_name)
        if idx is None:
            return set(), set()
        vx = self.config.vxlan_name
        neigh = {Neighbour(f, vx, n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"))
                 for f, af in AF.items() for n in self.ipr.get_neighbours(family=af, ifindex=idx)
                 if n["state"] & NUD_PERMANENT}
        fdb = {Fdb(vx, n.get_attr("NDA_LLADDR"), n.get_attr("NDA_DST"))
               for n in self.ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=idx)
               if n["state"] & NUD_PERMANENT and n.get_attr("NDA_DST")}
        return neigh, fdb

    # --- write --------------------------------------------------------------------------------

    def _quiet(self, ok: set[int], fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except NetlinkError as exc:
            if exc.code not in ok:
                raise

    def ensure_link(self, link: VxlanLink) -> None:
        idx = self.index(link.name)
        current = self.read_link() if idx is not None else None
        if current is not None and (current.vni, current.port, current.parent, current.local) != (
                link.vni, link.port, link.parent, link.local):
            log.info("replacing vxlan link", extra={"link": link.name, "had": repr(current)})
            self.ipr.link("del", index=idx)
            idx = None
        parent = self.index(link.parent)
        if parent is None:
            raise RuntimeError(f"parent link {link.parent!r} of {link.name} does not exist")
        if idx is None:
            local = {"vxlan_local6": link.local} if ":" in link.local else {"vxlan_local": link.local}
            self.ipr.link("add", ifname=link.name, kind="vxlan", vxlan_id=link.vni, vxlan_port=link.port,
                          vxlan_link=parent, vxlan_learning=0, vxlan_udp_csum=0, address=link.mac, mtu=link.mtu, **local)
            idx = self.index(link.name)
        self.ipr.link("set", index=idx, address=link.mac, mtu=link.mtu, state="up")

    def detach_underlay(self, veth_prefix: str, table: int, priority: int) -> list[str]:
        """The plugin's shared host rule and its table, once no pod of ours is left on its veth (a
        running underlay pod reaches Services and the node through them, the uninstall hook's pod too;
        its veth goes with its netns). In the main table (the default) the kernel removes a pod's
        routes with its veth and there is no rule: nothing to do."""
        if table == RT_TABLE_MAIN:
            return []
        for msg in self.ipr.get_links():
            name = msg.get_attr("IFLA_IFNAME") or ""
            info = msg.get_attr("IFLA_LINKINFO")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == "veth" and name.startswith(veth_prefix):
                log.info("underlay pods still run: their host rule stays", extra={"veth": name, "table": table})
                return []
        removed = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in self.ipr.get_rules(family=family):
                if r.get_attr("FRA_PRIORITY") == priority and (r.get_attr("FRA_TABLE") or r["table"]) == table:
                    self._quiet({errno.ENOENT}, self.ipr.rule, "del", family=family, priority=priority, table=table)
                    removed.append(f"rule {family} {priority} {table}")
            for route in self.ipr.route("dump", family=family):  # every table: filtered here (ids > 255)
                if route.get_attr("RTA_TABLE") != table:
                    continue
                self._quiet({errno.ESRCH, errno.ENOENT}, self.ipr.route, "del", **_route_key(route, table))
                removed.append(f"route {route.get_attr('RTA_DST')} table {table}")
        return removed

    def delete_link(self) -> None:
        idx = self.index(self.config.vxlan_name)
        if idx is not None:
            self._quiet({errno.ENODEV}, self.ipr.link, "del", index=idx)

    def address(self, cmd: str, a: Address) -> None:
        idx = self.index(a.dev)
        if idx is None:
            return
        ip, plen = a.cidr.split("/")
        extra: dict[str, Any] = {}
        if a.eip:
            extra = self._eip_attrs(ip) if cmd != "del" else {}
            with self.eip_lock:
                self._quiet({errno.EEXIST, errno.EADDRNOTAVAIL, errno.ENOENT}, self.ipr.addr, cmd, index=idx,
                            address=ip, prefixlen=int(plen), **extra)
            return
        if ":" in ip:
            extra = {"flags": IFA_F_NODAD}
        self._quiet({errno.EEXIST, errno.EADDRNOTAVAIL, errno.ENOENT}, self.ipr.addr, cmd, index=idx, address=ip,
                    prefixlen=int(plen), **extra)

    def _eip_attrs(self, ip: str, lifetime: int | None = None) -> dict[str, Any]:
        lifetime = self.config.eip_lifetime if lifetime is None else lifetime
        extra: dict[str, Any] = {"proto": self.config.eip_proto, "valid_lft": lifetime, "preferred_lft": lifetime,
                                 "flags": IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if ":" in ip else 0)}
        if ":" in ip:
            # deprecated: answers NDP and receives, but source selection (longest match) never
            # picks it for the node's own traffic
            extra["preferred_lft"] = 0
        return extra

    def _held_eips(self, parent: str) -> list[tuple[int, str, str, int, int]]:
        """(index, link, ip, prefixlen, seconds of lifetime left) of the EIP addresses on `parent`
        and on the EIP holder now."""
        out = []
        for dev in dict.fromkeys((parent, self.config.eip_dev)):
            idx = self.index(dev) if dev else None
            if idx is None:
                continue
            for a in self.ipr.get_addr(index=idx):
                if a.get_attr("IFA_PROTO") == self.config.eip_proto:
                    info = a.get_attr("IFA_CACHEINFO")
                    left = info["ifa_valid"] if info is not None else 0xFFFFFFFF
                    out.append((idx, dev, a.get_attr("IFA_ADDRESS"), a["prefixlen"], left))
        return out

    def hand_over_eips(self, parent: str, seconds: int) -> list[str]:
        """Every EIP on `parent` and the holder gets a lifetime of `seconds` (nobody renews it after
        this); the EIPs."""
        with self.eip_lock:
            held = [h for h in self._held_eips(parent) if h[4] > 0]
            for idx, _, ip, plen, _ in held:
                self._quiet({errno.EADDRNOTAVAIL, errno.ENOENT}, self.ipr.addr, "replace", index=idx, address=ip,
                            prefixlen=plen, **self._eip_attrs(ip, seconds))
        return [ip for _, _, ip, _, _ in held]

    def release_eips(self, parent: str) -> list[str]:
        """Remove every EIP address on `parent` and the holder at once; the EIPs removed."""
        with self.eip_lock:
            held = self._held_eips(parent)
            for idx, _, ip, plen, _ in held:
                self._quiet({errno.EADDRNOTAVAIL, errno.ENOENT}, self.ipr.addr, "del", index=idx, address=ip,
                            prefixlen=plen)
        return [ip for _, _, ip, _, _ in held]

    def link_up(self, name: str) -> None:
        idx = self.index(name)
        if idx is not None:
            self.ipr.link("set", index=idx, state="up")

    def delete_eip_holder(self) -> None:
        idx = self.index(self.config.eip_dev) if self.config.eip_dev else None
        if idx is not None:
            self._quiet({errno.ENODEV}, self.ipr.link, "del", index=idx)

    def route(self, cmd: str, r: Route) -> None:
        idx = self.index(r.dev)
        if idx is None:
            return
        self._quiet({errno.EEXIST, errno.ESRCH, errno.ENOENT}, self.ipr.route, cmd, family=AF[r.family], dst=r.dst,
                    gateway=r.via, oif=idx, table=r.table, flags=RTNH_F_ONLINK)

    def rule(self, cmd: str, r: Rule) -> None:
        target: dict[str, Any] = {"action": FR_ACT_UNREACHABLE} if r.unreachable else {"table": r.table}
        self._quiet({errno.EEXIST, errno.ENOENT}, self.ipr.rule, cmd, family=AF[r.family], priority=r.priority,
                    fwmark=r.fwmark, fwmask=0xFFFFFFFF, **target)

    def neighbour(self, cmd: str, n: Neighbour) -> None:
        idx = self.index(n.dev)
        if idx is not None:
            self._quiet({errno.EEXIST, errno.ENOENT}, self.ipr.neigh, "replace" if cmd == "add" else "del",
                        family=AF[n.family], dst=n.ip, lladdr=n.mac, ifindex=idx, state=NUD_PERMANENT)

    def fdb(self, cmd: str, e: Fdb) -> None:
        idx = self.index(e.dev)
        if idx is not None:
            self._quiet({errno.EEXIST, errno.ENOENT}, self.ipr.neigh, "append" if cmd == "add" else "del",
                        family=socket.AF_BRIDGE, ifindex=idx, lladdr=e.mac, dst=e.dst, state=NUD_PERMANENT,
                        flags=NTF_SELF)

    def apply_adds(self, plan: Plan) -> None:
        if plan.link is not None:
            self.ensure_link(plan.link)
        for a in plan.add_addresses:
            self.address("add", a)
        for e in plan.add_fdb:
            self.fdb("add", e)
        for n in plan.add_neighbours:
            self.neighbour("add", n)
        for r in plan.add_routes:
            self.route("add", r)
        for rule in plan.add_rules:
            self.rule("add", rule)

    def apply_removes(self, plan: Plan) -> None:
        for rule in plan.del_rules:
            self.rule("del", rule)
        for r in plan.del_routes:
            self.route("del", r)
        for n in plan.del_neighbours:
            self.neighbour("del", n)
        for e in plan.del_fdb:
            self.fdb("del", e)
        for a in plan.del_addresses:
            self.address("del", a)
        if plan.delete_link:
            self.delete_link()
