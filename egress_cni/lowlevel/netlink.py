"""Minimal rtnetlink over a raw socket (stdlib `_socket` + `struct`), only what the plugin needs.

Why not pyroute2: `import pyroute2` costs ~150 ms per pod start, ten times Debian's whole `bridge`
ADD. The messages below are the stable kernel UAPI (linux/rtnetlink.h, if_link.h, neighbour.h,
fib_rules.h). A socket talks to the netns it was created in: create it after `netns.enter()`.
Errors are OSError with the kernel's errno (EEXIST 17, ESRCH 3, ENOENT 2, ENODEV 19).
"""

from __future__ import annotations

import _socket
import struct

from egress_cni.lowlevel.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

AF_NETLINK, NETLINK_ROUTE = 16, 0
AF_INET, AF_INET6 = _socket.AF_INET, _socket.AF_INET6
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_GETADDR = 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWRULE, RTM_GETRULE = 32, 34
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_CARRIER = 1, 3, 4, 5, 18, 28, 33
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
NDA_DST, NDA_LLADDR = 1, 2
FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK = 6, 10, 15, 16
FR_ACT_TO_TBL = 1
FR_ACT_UNREACHABLE = 7
IFF_UP = 0x1
NUD_PERMANENT = 0x80
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1
RTPROT_STATIC = 4
# Our route protocol for the underlay pods' hijack routes that follow hijack.json: the agent adds and
# removes only routes of this protocol in a pod (docs/cni.md). Unused in iproute2's rt_protos.
RTPROT_EGRESS_HIJACK = 231
RT_TABLE_MAIN = 254

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg; also fib_rule_hdr (same layout)
_NDMSG = struct.Struct("=BBHiHBB")  # ndmsg
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")


def attr(kind: int, data: bytes) -> bytes:
    length = _RTA.size + len(data)
    return _RTA.pack(length, kind) + data + b"\0" * (-length % 4)


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def parse_attrs(buf: bytes, offset: int = 0) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + _RTA.size <= len(buf):
        length, kind = _RTA.unpack_from(buf, offset)
        if length < _RTA.size:
            break
        out[kind & 0x3FFF] = buf[offset + _RTA.size : offset + length]
        offset += (length + 3) & ~3
    return out


def _u32(attrs: dict[int, bytes], kind: int, default: int = 0) -> int:
    raw = attrs.get(kind)
    return _U32.unpack(raw[:4])[0] if raw and len(raw) >= 4 else default


def _ip(attrs: dict[int, bytes], kind: int, family: int) -> str:
    raw = attrs.get(kind)
    return _socket.inet_ntop(family, raw) if raw else ""


class Link(Record):
    __slots__ = ("carrier", "flags", "index", "kind", "mac", "name", "peer_index")
    index: int
    name: str
    mac: bytes
    kind: str
    peer_index: int
    flags: int
    carrier: bool  # IFLA_CARRIER

    def __init__(self, index: int, name: str, mac: bytes, kind: str, peer_index: int, flags: int, carrier: bool = False) -> None:
        self._init(index=index, name=name, mac=mac, kind=kind, peer_index=peer_index, flags=flags, carrier=carrier)


class Route(Record):
    __slots__ = ("dst", "dst_len", "family", "gateway", "oif", "prefsrc", "protocol", "scope", "table")
    family: int
    dst: str
    dst_len: int
    table: int
    oif: int
    gateway: str
    prefsrc: str
    scope: int
    protocol: int  # rtm_protocol: who owns the route (RTPROT_STATIC for what the plugin alone manages)

    def __init__(self, family: int, dst: str, dst_len: int, table: int, oif: int = 0, gateway: str = "", prefsrc: str = "",
                 scope: int = 0, protocol: int = RTPROT_STATIC) -> None:
        self._init(family=family, dst=dst, dst_len=dst_len, table=table, oif=oif, gateway=gateway, prefsrc=prefsrc, scope=scope,
                   protocol=protocol)


class Rule(Record):
    __slots__ = ("action", "dst_len", "family", "fwmark", "priority", "src_len", "table")
    family: int
    priority: int
    table: int
    action: int
    src_len: int
    dst_len: int
    fwmark: int

    def __init__(self, family: int, priority: int, table: int, action: int, src_len: int, dst_len: int, fwmark: int = 0) -> None:
        self._init(family=family, priority=priority, table=table, action=action, src_len=src_len, dst_len=dst_len, fwmark=fwmark)


class Netlink:
    """One NETLINK_ROUTE socket (or another protocol's), bound in the netns current at construction."""

    def __init__(self, protocol: int = NETLINK_ROUTE) -> None:
        self._sock = _socket.socket(AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, protocol)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---

    def _send(self, msg_type: int, flags: int, body: bytes) -> int:
        self._seq += 1
        self._sock.send(_HDR.pack(_HDR.size + len(body), msg_type, flags | NLM_F_REQUEST, self._seq, 0) + body)
        return self._seq

    def call_all(self, requests: list[tuple[int, int, bytes]]) -> list[int]:
        """Change requests (type, flags, body) sent as one batch; each one's errno (0: done)."""
        first = self._seq + 1
        data = b""
        for msg_type, flags, body in requests:
            self._seq += 1
            data += _HDR.pack(_HDR.size + len(body), msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, self._seq, 0) + body
        self._sock.sendall(data)
        errors: dict[int, int] = {}
        while len(errors) < len(requests):
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, msg_type, _, msg_seq, _ = _HDR.unpack_from(data, offset)
                if msg_type == NLMSG_ERROR and first <= msg_seq <= self._seq:
                    errors[msg_seq] = -struct.unpack_from("=i", data, offset + _HDR.size)[0]
                offset += max((length + 3) & ~3, _HDR.size)
        return [errors[s] for s in range(first, self._seq + 1)]

    def _replies(self, seq: int) -> Iterator[tuple[int, int, bytes]]:
        """(type, flags, payload) until DONE or the ack; raises OSError on a kernel error."""
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, msg_type, flags, msg_seq, _ = _HDR.unpack_from(data, offset)
                payload = data[offset + _HDR.size : offset + length]
                offset += (length + 3) & ~3
                if msg_seq != seq:
                    continue
                if msg_type == NLMSG_DONE:
                    return
                if msg_type == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", payload)[0]
                    if error:
                        raise OSError(error, _strerror(error))
                    return
                yield msg_type, flags, payload

    def call(self, msg_type: int, flags: int, body: bytes) -> None:
        """A change request; waits for the kernel's ack."""
        for _ in self._replies(self._send(msg_type, flags | NLM_F_ACK, body)):
            pass

    def get(self, msg_type: int, body: bytes) -> list[bytes]:
        return [p for _, _, p in self._replies(self._send(msg_type, NLM_F_ACK, body))]

    def dump(self, msg_type: int, body: bytes) -> list[bytes]:
        for _attempt in range(5):  # a dump racing a change is flagged; retry like the Go plugins do
            out, interrupted = [], False
            for _, flags, payload in self._replies(self._send(msg_type, NLM_F_DUMP, body)):
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                out.append(payload)
            if not interrupted:
                break
        return out

    # --- links ---

    def link(self, name: str) -> Link | None:
        try:
            replies = self.get(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name))
        except OSError as exc:
            if exc.errno == 19:  # ENODEV
                return None
            raise
        return _parse_link(replies[0]) if replies else None

    def existing_link(self, name: str, what: str) -> Link:
        """The link, or OSError ENODEV naming `what` it was (a pod veth that should be there)."""
        link = self.link(name)
        if link is None:
            raise OSError(19, f"{what} {name} missing")
        return link

    def create_veth(self, name: str, mac: bytes, peer: str, peer_mac: bytes, mtu: int, peer_netns_fd: int) -> None:
        peer_info = _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, peer) + attr(IFLA_ADDRESS, peer_mac)
        peer_info += attr_u32(IFLA_MTU, mtu) + attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
        info = attr_str(IFLA_INFO_KIND, "veth") + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_info))
        body = _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name) + attr(IFLA_ADDRESS, mac)
        body += attr_u32(IFLA_MTU, mtu) + attr(IFLA_LINKINFO, info)
        self.call(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def set_up(self, index: int) -> None:
        self.call(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP))

    def delete_link(self, name: str) -> bool:
        try:
            self.call(RTM_DELLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name))
        except OSError as exc:
            if exc.errno in (19, 2):
                return False
            raise
        return True

    # --- addresses ---

    def addresses(self, index: int) -> list[tuple[int, str, int]]:
        """(family, address, prefixlen) on the link."""
        out = []
        for p in self.dump(RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0)):
            family, plen, _, _, ifindex = _IFADDR.unpack_from(p)
            if ifindex == index:
                attrs = parse_attrs(p, _IFADDR.size)
                out.append((family, _ip(attrs, IFA_LOCAL if IFA_LOCAL in attrs else IFA_ADDRESS, family), plen))
        return out

    # --- neighbours ---

    def neigh_replace(self, family: int, index: int, dst: bytes, mac: bytes) -> None:
        body = _NDMSG.pack(family, 0, 0, index, NUD_PERMANENT, 0, 0) + attr(NDA_DST, dst) + attr(NDA_LLADDR, mac)
        self.call(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body)

    def neigh_delete(self, family: int, index: int, dst: bytes) -> bool:
        try:
            self.call(RTM_DELNEIGH, 0, _NDMSG.pack(family, 0, 0, index, 0, 0, 0) + attr(NDA_DST, dst))
        except OSError as exc:
            if exc.errno in (2, 19):
                return False
            raise
        return True

    # --- routes ---

    def _route_body(self, r: Route) -> bytes:
        table_byte = r.table if r.table < 256 else 0
        body = _RTMSG.pack(r.family, r.dst_len, 0, 0, table_byte, r.protocol, r.scope, RTN_UNICAST, 0)
        body += attr(RTA_DST, _socket.inet_pton(r.family, r.dst)) + attr_u32(RTA_TABLE, r.table)
        if r.oif:
            body += attr_u32(RTA_OIF, r.oif)
        if r.gateway:
            body += attr(RTA_GATEWAY, _socket.inet_pton(r.family, r.gateway))
        if r.prefsrc:
            body += attr(RTA_PREFSRC, _socket.inet_pton(r.family, r.prefsrc))
        return body

    def route_replace(self, route: Route) -> None:
        self.call(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, self._route_body(route))

    def route_add(self, route: Route) -> bool:
        """Create the route; False when one with the same destination already exists (whoever owns it)."""
        try:
            self.call(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, self._route_body(route))
        except OSError as exc:
            if exc.errno == 17:
                return False
            raise
        return True

    def route_delete(self, route: Route) -> bool:
        """Delete the route; the kernel matches its protocol too, so another owner's route stays. False when absent."""
        try:
            self.call(RTM_DELROUTE, 0, self._route_body(route))
        except OSError as exc:
            if exc.errno in (3, 2, 19):
                return False
            raise
        return True

    def routes(self, family: int, table: int) -> list[Route]:
        out = []
        for p in self.dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            fam, dst_len, _, _, tbl, proto, scope, rtype, _ = _RTMSG.unpack_from(p)
            attrs = parse_attrs(p, _RTMSG.size)
            tbl = _u32(attrs, RTA_TABLE, tbl)
            if tbl != table or rtype != RTN_UNICAST:
                continue
            dst = _ip(attrs, RTA_DST, fam) or ("0.0.0.0" if fam == AF_INET else "::")
            out.append(Route(fam, dst, dst_len, tbl, _u32(attrs, RTA_OIF), _ip(attrs, RTA_GATEWAY, fam), _ip(attrs, RTA_PREFSRC, fam),
                             scope, proto))
        return out

    def route_get(self, family: int, dst: str) -> Route | None:
        """What `ip route get <dst>` answers (output interface and preferred source), None if unreachable."""
        bits = 32 if family == AF_INET else 128
        body = _RTMSG.pack(family, bits, 0, 0, 0, 0, 0, 0, 0) + attr(RTA_DST, _socket.inet_pton(family, dst))
        try:
            replies = self.get(RTM_GETROUTE, body)
        except OSError as exc:
            if exc.errno in (101, 113, 22):  # ENETUNREACH, EHOSTUNREACH, EINVAL
                return None
            raise
        if not replies:
            return None
        attrs = parse_attrs(replies[0], _RTMSG.size)
        return Route(family, dst, bits, _u32(attrs, RTA_TABLE), _u32(attrs, RTA_OIF), _ip(attrs, RTA_GATEWAY, family), _ip(attrs, RTA_PREFSRC, family))

    # --- rules ---

    def rule_add(self, family: int, priority: int, table: int, fwmark: int = 0) -> bool:
        """`ip rule add [fwmark <m>] pref <priority> lookup <table>`; False when it already exists."""
        body = _RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, 0, 0, FR_ACT_TO_TBL, 0)
        body += attr_u32(FRA_PRIORITY, priority) + attr_u32(FRA_TABLE, table)
        if fwmark:
            body += attr_u32(FRA_FWMARK, fwmark) + attr_u32(FRA_FWMASK, 0xFFFFFFFF)
        try:
            self.call(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, body)
        except OSError as exc:
            if exc.errno == 17:
                return False
            raise
        return True

    def rules(self, family: int) -> list[Rule]:
        out = []
        for p in self.dump(RTM_GETRULE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            fam, dst_len, src_len, _, tbl, _, _, action, _ = _RTMSG.unpack_from(p)
            attrs = parse_attrs(p, _RTMSG.size)
            out.append(Rule(fam, _u32(attrs, FRA_PRIORITY), _u32(attrs, FRA_TABLE, tbl), action, src_len, dst_len, _u32(attrs, FRA_FWMARK)))
        return out


def _parse_link(payload: bytes) -> Link:
    _, _, index, flags, _ = _IFINFO.unpack_from(payload)
    attrs = parse_attrs(payload, _IFINFO.size)
    kind = parse_attrs(attrs.get(IFLA_LINKINFO, b"")).get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
    name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
    carrier = attrs.get(IFLA_CARRIER, b"\0")[:1] != b"\0"
    return Link(index, name, attrs.get(IFLA_ADDRESS, b""), kind, _u32(attrs, IFLA_LINK), flags, carrier)


def _strerror(error: int) -> str:
    import os

    return os.strerror(error)
