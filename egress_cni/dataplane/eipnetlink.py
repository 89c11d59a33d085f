"""The fencing thread's netlink: EIP lifetimes renewed and the parent's carrier read over a raw
rtnetlink socket (lowlevel.netlink: stdlib socket + struct).

The thread ticks ten times a second (agent/fencing.py). Through pyroute2 each tick cost a link
lookup per device, an address dump per device and one request per EIP, each with milliseconds of
pyroute2's own CPU: about a tenth of a core for an agent with no EIP, much more for a gateway with
200. Here a tick is two link requests (`lowlevel.netlink.Netlink.link`), one address dump and one batch of replaces (one send, one
ack per message), the same messages pyroute2 sent.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from egress_cni.api.net import parse_ip
from egress_cni.lowlevel import netlink as ll

RTM_NEWADDR = 20
IFA_CACHEINFO, IFA_FLAGS, IFA_PROTO = 6, 8, 11
IFA_F_NODAD, IFA_F_NOPREFIXROUTE = 0x02, 0x200
_IFADDR = struct.Struct("=BBBBI")
_CACHEINFO = struct.Struct("=IIII")  # prefered, valid, cstamp, tstamp
FOREVER = 0xFFFFFFFF


class EipNetlink:
    """One raw socket, owned by the thread that uses it (the caller holds the EIP lock)."""

    def __init__(self, proto: int) -> None:
        self.proto = proto
        self.nl = ll.Netlink()

    def close(self) -> None:
        self.nl.close()

    def carrier(self, name: str) -> bool:
        """Link `name` is administratively up and has carrier (a missing link has none)."""
        link = self.nl.link(name)
        return link is not None and bool(link.flags & ll.IFF_UP) and link.carrier

    def held(self, devices: list[str]) -> list[tuple[int, str, str, int, int]]:
        """(index, link, ip, prefixlen, seconds of lifetime left) of our EIP addresses on `devices`."""
        indexes = {}
        for dev in dict.fromkeys(d for d in devices if d):
            link = self.nl.link(dev)
            if link is not None:
                indexes[link.index] = dev
        if not indexes:
            return []
        out = []
        for p in self.nl.dump(ll.RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0)):
            family, plen, _, _, index = _IFADDR.unpack_from(p)
            if index not in indexes:
                continue
            attrs = ll.parse_attrs(p, _IFADDR.size)
            if attrs.get(IFA_PROTO, b"\0")[:1] != bytes([self.proto]):
                continue
            raw = attrs.get(ll.IFA_ADDRESS) or attrs.get(ll.IFA_LOCAL) or b""
            info = attrs.get(IFA_CACHEINFO)
            left = _CACHEINFO.unpack(info[:16])[1] if info and len(info) >= 16 else FOREVER
            out.append((index, indexes[index], socket.inet_ntop(family, raw), plen, left))
        return out

    def renew(self, held: list[tuple[int, str, str, int]], lifetime: int) -> None:
        """Each (index, link, ip, prefixlen) gets `lifetime` seconds again, as one batch; an address
        gone meanwhile is skipped (EADDRNOTAVAIL/ENOENT)."""
        if not held:
            return
        requests = []
        for index, _, ip, plen in held:
            addr = parse_ip(ip)
            v6 = addr.family == 6
            family = socket.AF_INET6 if v6 else socket.AF_INET
            raw = addr.value.to_bytes(16 if v6 else 4, "big")
            # IPv6: deprecated (preferred 0): answers NDP and receives, never the node's own source
            body = _IFADDR.pack(family, plen, 0, 0, index) + ll.attr(ll.IFA_ADDRESS, raw)
            if not v6:
                body += ll.attr(ll.IFA_LOCAL, raw)
            body += ll.attr(IFA_CACHEINFO, _CACHEINFO.pack(0 if v6 else lifetime, lifetime, 0, 0))
            body += ll.attr_u32(IFA_FLAGS, IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if v6 else 0))
            body += ll.attr(IFA_PROTO, bytes([self.proto]))
            requests.append((RTM_NEWADDR, ll.NLM_F_CREATE | ll.NLM_F_REPLACE, body))
        for (_, _, ip, _), error in zip(held, self.nl.call_all(requests), strict=True):
            if error and error not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                raise OSError(error, f"{os.strerror(error)} renewing {ip}")
