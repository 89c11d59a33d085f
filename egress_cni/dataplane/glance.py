"""The drift check's cheap kernel reads: raw rtnetlink dumps and the nftables generation (read only).

The check runs every second, so what it costs matters more than for the full read: pyroute2 spends
milliseconds of CPU per request (its asyncio machinery) before parsing a single message, while a
dump over `lowlevel.netlink` (stdlib socket + struct) costs tens of microseconds plus the messages.
These readers return exactly what `dataplane/netlink.py` reads through pyroute2 for the same kernel
state (the same frozen values: `VxlanLink`, `Address`, `Route`, `Rule`, `Neighbour`, `Fdb`), so
`drift.compare` sees no difference where `plan.diff` sees none; tests/agent/test_netns_apply.py
checks that on every golden case.

`nft_generation()` is the nftables ruleset's generation id: the kernel bumps it on every commit in
the netns (ours, kube-proxy's, Calico's, a hand-run `iptables-nft`), so an unchanged id means the
iptables-nft state is the one the last `iptables-save` showed and the check need not run it again.
`legacy_fingerprint()` is the same for iptables-legacy, which has no generation: a hash of each
table's rule blob as the kernel hands it to iptables-save (`IPT_SO_GET_ENTRIES`), counters zeroed.
"""

from __future__ import annotations

import ctypes
import hashlib
import socket
import struct

from egress_cni.dataplane.inputs import DataplaneConfig
from egress_cni.dataplane.plan import IPV4, IPV6, Address, Fdb, Neighbour, Route, Rule, VxlanLink
from egress_cni.lowlevel import netlink as ll

AF = {IPV4: socket.AF_INET, IPV6: socket.AF_INET6}
AF_BRIDGE = 7
RTM_GETRULE = 34
IFA_PROTO = 11
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6 = 1, 3, 4, 15, 17
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BBHiHBB")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")


def _u32(attrs: dict[int, bytes], kind: int) -> int | None:
    raw = attrs.get(kind)
    return _U32.unpack(raw[:4])[0] if raw and len(raw) >= 4 else None


def _ip(raw: bytes | None) -> str:
    if not raw:
        return ""
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _mac(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw else ""


class _Link:
    __slots__ = ("attrs", "flags", "name")

    def __init__(self, name: str, flags: int, attrs: dict[int, bytes]) -> None:
        self.name, self.flags, self.attrs = name, flags, attrs


class Glancer:
    """One raw NETLINK_ROUTE socket in this process's netns; one thread (the reconcile worker) uses it."""

    def __init__(self, config: DataplaneConfig) -> None:
        self.config = config
        self.nl = ll.Netlink()

    def close(self) -> None:
        self.nl.close()

    def read(self, parent: str, tables: set[int]) -> tuple[VxlanLink | None, set[Address], set[Rule], set[Route],
                                                          set[Neighbour], set[Fdb]]:
        """The VXLAN link, our addresses (EIPs on the parent and the holder, the VXLAN link's own), our
        rules, the routes in their tables and in `tables`, and the VXLAN link's permanent neighbours
        and FDB entries."""
        links = self._links()
        by_name = {link.name: index for index, link in links.items()}
        rules = self._rules()
        vx = by_name.get(self.config.vxlan_name)
        return (self._vxlan(links, vx), self._addresses(by_name, vx, parent), rules,
                self._routes({r.table for r in rules} | tables, links), *self._neighbours(vx))

    def _links(self) -> dict[int, _Link]:
        out = {}
        for p in self.nl.dump(ll.RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0)):
            _, _, index, flags, _ = _IFINFO.unpack_from(p)
            attrs = ll.parse_attrs(p, _IFINFO.size)
            out[index] = _Link(attrs.get(ll.IFLA_IFNAME, b"").rstrip(b"\0").decode(), flags, attrs)
        return out

    def _vxlan(self, links: dict[int, _Link], index: int | None) -> VxlanLink | None:
        """What `Netlink.read_link` returns for the same link."""
        if index is None:
            return None
        link = links[index]
        info = ll.parse_attrs(link.attrs.get(ll.IFLA_LINKINFO, b""))
        kind = info.get(ll.IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
        if kind != "vxlan" or ll.IFLA_INFO_DATA not in info:
            return VxlanLink(self.config.vxlan_name, -1, 0, "", "", "", 0)  # foreign type: replaced
        data = ll.parse_attrs(info[ll.IFLA_INFO_DATA])
        parent_idx = _u32(data, IFLA_VXLAN_LINK)
        parent = links[parent_idx].name if parent_idx and parent_idx in links else ""
        port = data.get(IFLA_VXLAN_PORT)
        return VxlanLink(self.config.vxlan_name, _u32(data, IFLA_VXLAN_ID) or 0, _BE16.unpack(port)[0] if port else 0,
                         parent, _ip(data.get(IFLA_VXLAN_LOCAL) or data.get(IFLA_VXLAN_LOCAL6)),
                         _mac(link.attrs.get(ll.IFLA_ADDRESS)), _u32(link.attrs, ll.IFLA_MTU) or 0,
                         bool(link.flags & ll.IFF_UP))

    def _addresses(self, by_name: dict[str, int], vx: int | None, parent: str) -> set[Address]:
        """What `Netlink.read_addresses` returns: EIPs by IFA_PROTO on the parent and the holder, the
        VXLAN link's addresses but link-local ones."""
        eip_devs = {by_name[d]: d for d in (parent, self.config.eip_dev) if d and d in by_name}
        out: set[Address] = set()
        for p in self.nl.dump(ll.RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0)):
            _, plen, _, _, index = _IFADDR.unpack_from(p)
            if index not in eip_devs and index != vx:
                continue
            attrs = ll.parse_attrs(p, _IFADDR.size)
            ip = _ip(attrs.get(ll.IFA_ADDRESS))
            proto = attrs.get(IFA_PROTO)
            if index in eip_devs and proto and proto[0] == self.config.eip_proto:
                out.add(Address(eip_devs[index], f"{ip}/{plen}", eip=True))
            if index == vx and not ip.startswith("fe80"):
                out.add(Address(self.config.vxlan_name, f"{ip}/{plen}"))
        return out

    def _rules(self) -> set[Rule]:
        out: set[Rule] = set()
        for f, af in AF.items():
            for p in self.nl.dump(RTM_GETRULE, _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)):
                header = _RTMSG.unpack_from(p)
                attrs = ll.parse_attrs(p, _RTMSG.size)
                mark = _u32(attrs, ll.FRA_FWMARK)
                if mark is not None and self.config.owns_mark(mark):
                    unreachable = header[7] == ll.FR_ACT_UNREACHABLE
                    table = 0 if unreachable else _u32(attrs, ll.FRA_TABLE) or header[4]
                    out.add(Rule(f, _u32(attrs, ll.FRA_PRIORITY) or 0, mark, table, unreachable))
        return out

    def _routes(self, tables: set[int], links: dict[int, _Link]) -> set[Route]:
        out: set[Route] = set()
        for f, af in AF.items():
            for p in self.nl.dump(ll.RTM_GETROUTE, _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)):
                dst_len = p[1]
                attrs = ll.parse_attrs(p, _RTMSG.size)
                table = _u32(attrs, ll.RTA_TABLE)
                if table not in tables:
                    continue
                oif = _u32(attrs, ll.RTA_OIF)
                dev = links[oif].name if oif and oif in links else ""
                dst = "default" if dst_len == 0 else f"{_ip(attrs.get(ll.RTA_DST))}/{dst_len}"
                out.add(Route(f, table, dst, _ip(attrs.get(ll.RTA_GATEWAY)), dev))
        return out

    def _neighbours(self, vx: int | None) -> tuple[set[Neighbour], set[Fdb]]:
        if vx is None:
            return set(), set()
        name = self.config.vxlan_name
        neigh: set[Neighbour] = set()
        fdb: set[Fdb] = set()
        for f, af in (*AF.items(), (0, AF_BRIDGE)):
            for p in self.nl.dump(ll.RTM_GETNEIGH, _NDMSG.pack(af, 0, 0, 0, 0, 0, 0)):
                _, _, _, index, state, _, _ = _NDMSG.unpack_from(p)
                if index != vx or not state & ll.NUD_PERMANENT:
                    continue
                attrs = ll.parse_attrs(p, _NDMSG.size)
                dst, mac = _ip(attrs.get(ll.NDA_DST)), _mac(attrs.get(ll.NDA_LLADDR))
                if af == AF_BRIDGE:
                    if dst:
                        fdb.add(Fdb(name, mac, dst))
                else:
                    neigh.add(Neighbour(f, name, dst, mac))
        return neigh, fdb


NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN, NFT_MSG_NEWGEN = 16, 15
NFTA_GEN_ID = 1
_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")


def nft_generation() -> int | None:
    """The nftables generation id of this netns; None when nf_tables cannot tell (module absent)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as s:
            s.settimeout(1.0)
            body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
            msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
            s.send(_HDR.pack(_HDR.size + len(body), msg_type, ll.NLM_F_REQUEST, 1, 0) + body)
            data = s.recv(4096)
    except OSError:
        return None
    return parse_generation(data)


def parse_generation(data: bytes) -> int | None:
    """The generation id in a NFT_MSG_NEWGEN reply; None for an error or anything else."""
    if len(data) < _HDR.size + _NFGEN.size:
        return None
    _, msg_type, _, _, _ = _HDR.unpack_from(data)
    if msg_type != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
        return None
    raw = ll.parse_attrs(data, _HDR.size + _NFGEN.size).get(NFTA_GEN_ID)
    return struct.unpack("!I", raw[:4])[0] if raw and len(raw) >= 4 else None


SOL_IP, SOL_IPV6 = 0, 41
SO_GET_INFO, SO_GET_ENTRIES = 64, 65  # IPT_/IP6T_SO_GET_*
XT_TABLES = ("raw", "mangle", "nat", "filter")
_GETINFO_SIZE = 84  # struct ipt_getinfo: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size
_GET_ENTRIES_HEAD = 40  # struct ipt_get_entries: name[32], size, then the 8-aligned entry table
# (offset of next_offset, offset of the counters) in struct ipt_entry / ip6t_entry
_ENTRY = {IPV4: (90, 96), IPV6: (142, 152)}


def legacy_fingerprint(families: list[int]) -> tuple[str, ...] | None:
    """One hash per (family, table) of the iptables-legacy rules, counters left out; None when the
    kernel cannot be asked (then the check runs iptables-save every time)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        out = []
        for f in families:
            level = SOL_IP if f == IPV4 else SOL_IPV6
            with socket.socket(AF[f], socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
                for table in XT_TABLES:
                    out.append(_table_hash(libc, s.fileno(), level, f, table))
        return tuple(out)
    except (OSError, AttributeError):
        return None


def _getsockopt(libc: ctypes.CDLL, fd: int, level: int, opt: int, buf: ctypes.Array[ctypes.c_char]) -> int:
    size = ctypes.c_uint(len(buf))
    if libc.getsockopt(fd, level, opt, buf, ctypes.byref(size)) != 0:
        return ctypes.get_errno()
    return 0


def _table_hash(libc: ctypes.CDLL, fd: int, level: int, family: int, table: str) -> str:
    name = table.encode()
    info = ctypes.create_string_buffer(name, _GETINFO_SIZE)
    error = _getsockopt(libc, fd, level, SO_GET_INFO, info)
    if error:
        return f"{table}:errno{error}"  # ENOENT: the table is not loaded (stable until someone loads it)
    size = struct.unpack_from("=I", info.raw, 80)[0]
    buf = ctypes.create_string_buffer(_GET_ENTRIES_HEAD + size)
    struct.pack_into("=32sI", buf, 0, name, size)
    error = _getsockopt(libc, fd, level, SO_GET_ENTRIES, buf)
    if error:
        return f"{table}:errno{error}"  # EAGAIN: changed since GET_INFO; a changed hash either way
    return table + ":" + blob_hash(buf.raw[_GET_ENTRIES_HEAD:], family) + ":" + info.raw[32:].hex()


def blob_hash(blob: bytes, family: int) -> str:
    """sha256 of a table's entries with each entry's packet and byte counters zeroed."""
    next_at, counters_at = _ENTRY[family]
    data = bytearray(blob)
    offset = 0
    while offset + counters_at + 16 <= len(data):
        step = struct.unpack_from("=H", data, offset + next_at)[0]
        data[offset + counters_at:offset + counters_at + 16] = bytes(16)
        if step <= 0:
            break
        offset += step
    return hashlib.sha256(bytes(data)).hexdigest()
