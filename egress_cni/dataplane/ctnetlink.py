"""Delete conntrack entries by their original tuple over a raw NETLINK_NETFILTER socket, many per
send (stdlib `_socket` + `struct`; the UAPI of linux/netfilter/nfnetlink_conntrack.h).

Why not pyroute2: its per-message classes made the agent's previous dump-and-delete 82x slower at
100,000 entries (bench/conntrack.py), and a gateway move may forget thousands of flows.
A socket talks to the netns it was created in.
"""

from __future__ import annotations

import _socket
import errno
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from egress_cni.api.net import parse_ip
from egress_cni.lowlevel.netlink import attr

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE = 1, 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG = 1
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 7, 8, 9
ICMP, ICMPV6 = 1, 58
PORTED = frozenset({6, 17, 33, 132, 136})  # tcp, udp, dccp, sctp, udplite

_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
# Each ack costs the receive buffer a whole skb (about 1 KiB of truesize), not its 36 bytes: a batch
# of 400 overflowed the default 208 KiB with ENOBUFS. 128 per send, with a 1 MiB buffer.
_BATCH = 128
_RCVBUF = 1 << 20


@dataclass(frozen=True)
class OrigTuple:
    proto: int
    src: str
    dst: str
    sport: int = 0  # or the ICMP id
    dport: int = 0  # or (ICMP type << 8) | code

    @property
    def deletable(self) -> bool:
        return self.proto in PORTED or self.proto in (ICMP, ICMPV6)


def _nested(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def delete_body(t: OrigTuple) -> bytes:
    """nfgenmsg + attributes of one IPCTNL_MSG_CT_DELETE (pure)."""
    src, dst = parse_ip(t.src), parse_ip(t.dst)
    v6 = src.family == 6
    ip = _nested(CTA_TUPLE_IP, attr(CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, src.packed),
                 attr(CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, dst.packed))
    proto = [attr(CTA_PROTO_NUM, bytes([t.proto]))]
    if t.proto in (ICMP, ICMPV6):
        ids = (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE) if t.proto == ICMPV6 else \
            (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
        proto += [attr(ids[0], struct.pack("!H", t.sport)), attr(ids[1], bytes([t.dport >> 8])),
                  attr(ids[2], bytes([t.dport & 0xFF]))]
    else:
        proto += [attr(CTA_PROTO_SRC_PORT, struct.pack("!H", t.sport)), attr(CTA_PROTO_DST_PORT, struct.pack("!H", t.dport))]
    family = _socket.AF_INET6 if v6 else _socket.AF_INET
    return _NFGEN.pack(family, 0, 0) + _nested(CTA_TUPLE_ORIG, ip, _nested(CTA_TUPLE_PROTO, *proto))


def delete(tuples: Iterable[OrigTuple]) -> int:
    """Delete each entry; returns how many the kernel deleted (ENOENT: expired meanwhile, skipped)."""
    sock = _socket.socket(16, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, _RCVBUF)
        sock.bind((0, 0))
        msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
        deleted, batch = 0, []
        for seq, t in enumerate(tuples, start=1):
            body = delete_body(t)
            batch.append(_HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
            if len(batch) == _BATCH:
                deleted += _flush(sock, batch)
                batch = []
        if batch:
            deleted += _flush(sock, batch)
        return deleted
    finally:
        sock.close()


def _flush(sock: _socket.socket, batch: list[bytes]) -> int:
    sock.send(b"".join(batch))
    pending = len(batch)
    deleted = 0
    while pending:
        data = sock.recv(1 << 16)
        offset = 0
        while offset + _HDR.size <= len(data):
            length, msg_type, _, _, _ = _HDR.unpack_from(data, offset)
            if msg_type == NLMSG_ERROR:
                pending -= 1
                error = -struct.unpack_from("=i", data, offset + _HDR.size)[0]
                if error == 0:
                    deleted += 1
                elif error != errno.ENOENT:
                    raise OSError(error, f"conntrack delete: {errno.errorcode.get(error, error)}")
            offset += (length + 3) & ~3
    return deleted
