"""The EIP holder: a TUN device that lives exactly as long as the agent process holds it open.

IPv4 EIPs are placed on it rather than on the parent link. With `arp_ignore=0` on the parent (the
kernel's default) the node answers ARP on the segment for an address on any of its links, so the
EIP serves as before; but when the agent dies, by SIGKILL or a crash, the kernel closes its file
descriptor, deletes the device and with it the addresses, their local routes and the ARP answers,
at once. Their valid lifetime still fences an agent that hangs (SIGSTOP) with its descriptor open.
IPv6 EIPs stay on the parent: the kernel answers neighbour solicitations only for addresses on the
receiving link, so they are fenced by their lifetime alone.

The device is multi-queue, so an agent starting while the old one still exits attaches beside it.
A daemon clears the persist flag when it attaches (the device dies with the last agent); a one-shot
run sets it, so what it applied outlives the run, and so does a daemon stopped by SIGTERM (a
restart: agent/fencing.py hands its EIPs over with a short last lifetime).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct

log = logging.getLogger(__name__)
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100


def arp_ignore(parent: str) -> int:
    """The parent's effective arp_ignore (the kernel takes the larger of `all` and the link's)."""
    values = []
    for conf in ("all", parent):
        try:
            with open(f"/proc/sys/net/ipv4/conf/{conf}/arp_ignore", encoding="ascii") as f:
                values.append(int(f.read().strip()))
        except (OSError, ValueError):
            values.append(0)
    return max(values)


class EipHolder:
    """Holds the device open; `name` is "" when it could not (EIPs then live on the parent)."""

    def __init__(self, name: str, parent: str, *, persist: bool) -> None:
        self.name, self._fd = "", -1
        reason = self._why_not(parent)
        if reason:
            log.warning("eips stay on the parent link", extra={"parent": parent, "reason": reason})
            return
        try:
            self._fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fcntl.ioctl(self._fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE))
            fcntl.ioctl(self._fd, TUNSETPERSIST, int(persist))
        except OSError as exc:
            log.warning("eips stay on the parent link", extra={"parent": parent, "reason": f"cannot hold {name}: {exc}"})
            self.close()
            return
        self.name = name

    @staticmethod
    def _why_not(parent: str) -> str:
        ignore = arp_ignore(parent)
        if ignore:
            return f"arp_ignore={ignore} on {parent}: the node answers ARP only for addresses on that link"
        return ""

    def persist(self, on: bool) -> None:
        """Whether the device outlives this process (a restart hands it to the next agent)."""
        if self._fd >= 0:
            fcntl.ioctl(self._fd, TUNSETPERSIST, int(on))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
