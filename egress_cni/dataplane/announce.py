"""Tell the L2 segment that an EIP moved here: gratuitous ARP (IPv4) and unsolicited NA (IPv6).

Neighbours keep the old MAC for an EIP until told otherwise, so every takeover sends a few of these
(the first at once, then spaced out, because a busy switch or a neighbour in its ARP locktime can
miss one). Linux updates an existing entry from a gratuitous ARP even with arp_accept=0.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterable

from egress_cni.api.net import IP, parse_ip

log = logging.getLogger(__name__)
ETH_P_ARP = 0x0806
ARP_REQUEST, ARP_REPLY = 1, 2
ND_SOLICIT, ND_ADVERT = 135, 136
BROADCAST = b"\xff" * 6
ALL_NODES = "ff02::1"
SO_BINDTODEVICE = 25
SIOCGIFHWADDR = 0x8927


def mac_of(dev: str) -> bytes:
    """The link's MAC in this process's network namespace (SIOCGIFHWADDR; sysfs may be another netns's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", dev.encode()))
    return ifreq[18:24]


def arp_frame(mac: bytes, sender: bytes, target: bytes, opcode: int, dst: bytes = BROADCAST) -> bytes:
    """An Ethernet frame carrying one ARP packet (IPv4 over Ethernet); addresses are packed bytes.
    A reply's target MAC is `dst`; a request leaves it zero."""
    target_mac = dst if opcode == ARP_REPLY else b"\x00" * 6
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, opcode, mac, sender, target_mac, target)
    return dst + mac + struct.pack("!H", ETH_P_ARP) + arp


def nd_message(kind: int, flags: int, target: IP, options: bytes = b"") -> bytes:
    """An ICMPv6 neighbour solicitation or advertisement for `target`, checksum left zero."""
    return struct.pack("!BBHI16s", kind, 0, 0, flags, target.packed) + options


def na_message(mac: bytes, ip: IP) -> bytes:
    """Neighbor Advertisement, Override set, with the target link-layer address option
    (the kernel fills in the checksum for raw ICMPv6 sockets)."""
    return nd_message(ND_ADVERT, 0x20000000, ip, struct.pack("!BB6s", 2, 1, mac))


def send_once(dev: str, ips: Iterable[str]) -> None:
    mac = mac_of(dev)
    for text in ips:
        ip = parse_ip(text)
        try:
            if ip.family == 6:
                with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
                    s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, dev.encode())
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, socket.if_nametoindex(dev))
                    s.sendto(na_message(mac, ip), (ALL_NODES, 0, 0, socket.if_nametoindex(dev)))
            else:
                with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
                    s.bind((dev, ETH_P_ARP))
                    s.send(arp_frame(mac, ip.packed, ip.packed, ARP_REQUEST))
                    s.send(arp_frame(mac, ip.packed, ip.packed, ARP_REPLY))
        except OSError as exc:
            log.warning("cannot announce eip", extra={"dev": dev, "eip": text, "error": str(exc)})


def announce(dev: str, ips: list[str], repeats: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0, 2.0)) -> threading.Thread:
    """Send now and again after each delay (seconds since start) in a daemon thread."""

    def run() -> None:
        start = time.monotonic()
        for delay in repeats:
            time.sleep(max(0.0, start + delay - time.monotonic()))
            send_once(dev, ips)

    log.info("announcing eips", extra={"dev": dev, "eips": ips})
    t = threading.Thread(target=run, name="announce", daemon=True)
    t.start()
    return t
