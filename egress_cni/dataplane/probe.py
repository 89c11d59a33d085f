"""Probe before claim: does anyone on the segment already answer for an EIP?

IPv4 sends ARP probes (RFC 5227: sender IP 0.0.0.0, our MAC, target the EIP); IPv6 sends the
neighbour solicitation of duplicate address detection (source ::, to the EIP's solicited-node
group, RFC 4862). A holder answers either one (an ARP reply, a neighbour advertisement to all
nodes); another node probing or announcing the same address at the same time counts too, so two
claimants back off rather than both taking it. Runs in the network namespace of the calling thread.
"""

from __future__ import annotations

import select
import socket
import struct
import time

from egress_cni.api.net import IP
from egress_cni.dataplane.announce import (
    ARP_REQUEST,
    ETH_P_ARP,
    ND_ADVERT,
    ND_SOLICIT,
    arp_frame,
    mac_of,
    nd_message,
)

ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
UNSPECIFIED = bytes(16)
IPPROTO_ICMPV6 = 58


def address_in_use(ifname: str, ip: IP, *, attempts: int = 3, interval: float = 0.05) -> bool:
    """True when another host claims `ip` on `ifname` within `attempts` probes `interval` apart
    (the last one waited out too)."""
    mac = mac_of(ifname)
    proto = ETH_P_ARP if ip.family == 4 else ETH_P_IPV6
    frame = _arp_probe(mac, ip) if ip.family == 4 else _dad_probe(mac, ip)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto)) as s:
        s.bind((ifname, proto))  # bound before the first probe: no answer can slip past
        for _ in range(attempts):
            s.send(frame)
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([s], [], [], left)[0]:
                    break
                data, addr = s.recvfrom(2048)
                if addr[2] != PACKET_OUTGOING and data[6:12] != mac and _claims(data, ip):
                    return True
    return False


def _arp_probe(mac: bytes, ip: IP) -> bytes:
    return arp_frame(mac, bytes(4), ip.packed, ARP_REQUEST)


def _dad_probe(mac: bytes, ip: IP) -> bytes:
    group = b"\xff\x02" + bytes(9) + b"\x01\xff" + ip.packed[13:]
    icmp = bytearray(nd_message(ND_SOLICIT, 0, ip))  # no source link-layer option from ::
    icmp[2:4] = struct.pack("!H", _checksum(UNSPECIFIED + group + struct.pack("!I3xB", len(icmp), IPPROTO_ICMPV6)
                                            + bytes(icmp)))
    ipv6 = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), IPPROTO_ICMPV6, 255, UNSPECIFIED, group)
    dst_mac = b"\x33\x33" + group[12:]
    return dst_mac + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + bytes(icmp)


def _claims(frame: bytes, ip: IP) -> bool:
    """An ARP packet whose sender is `ip`, or a neighbour advertisement whose target is `ip`."""
    payload = frame[14:]
    if ip.family == 4:
        return len(payload) >= 28 and payload[14:18] == ip.packed
    # IPv6 header (40 bytes) without extension headers, then ICMPv6: type, code, checksum, flags, target
    return (len(payload) >= 64 and payload[6] == IPPROTO_ICMPV6 and payload[40] == ND_ADVERT
            and payload[48:64] == ip.packed)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

