"""The gateway peers' UDP socket: the thin thread around `PeerMonitor` (agent/peers.py)."""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable

from egress_cni.agent.peers import PORT, PeerMonitor
from egress_cni.dataplane.inputs import ClusterState

log = logging.getLogger(__name__)


class PeerService:
    """The monitor's thread: a UDP socket on the underlay address; update, tick, send, receive."""

    def __init__(self, monitor: PeerMonitor, *, address: str, port: int = PORT,
                 held: Callable[[], Callable[[], frozenset[str]]] | None = None) -> None:
        self.monitor, self.address, self.port = monitor, address, port
        self._held_factory = held  # built inside the thread (netlink sockets stay in one thread)
        self.state: Callable[[], ClusterState] = ClusterState
        self.sock: socket.socket | None = None

    def bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.address, self.port))
        except OSError as exc:  # the underlay address is not there (yet): listen on every address
            log.warning("peer socket: cannot bind the underlay address", extra={"address": self.address,
                                                                                "error": str(exc)})
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", self.port))
        sock.setblocking(False)
        self.sock = sock
        return sock

    def farewell(self) -> None:
        """Tell the peers we are restarting (SIGTERM), before the EIPs are released."""
        sock = self.sock
        if sock is None:
            return
        for address, data in self.monitor.farewell():
            for _ in range(2):  # UDP: twice, as the loss of one would cost a takeover
                try:
                    sock.sendto(data, (address, self.port))
                except OSError:
                    pass

    def run(self, stop: threading.Event) -> None:
        sock = self.sock or self.bind()
        held = self._held_factory() if self._held_factory is not None else (lambda: frozenset())
        interval = self.monitor.interval
        next_tick = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                # what arrived while this thread stalled (GIL, load) first: a tick that judged liveness
                # before reading it would count live peers as lost
                self._drain(sock)
                try:
                    self.monitor.update(self.state(), held())
                    for address, data in self.monitor.tick():
                        try:
                            sock.sendto(data, (address, self.port))
                        except OSError:
                            pass  # unreachable peer (link down): it will count as lost
                except Exception:
                    log.exception("peer tick failed")
                next_tick = max(next_tick + interval, now)
            ready, _, _ = select.select([sock], [], [], max(0.0, next_tick - time.monotonic()))
            if ready:
                self._drain(sock)
        # the socket stays open: the farewell goes out on it after the thread stopped (`close`)

    def _drain(self, sock: socket.socket) -> None:
        """Every datagram waiting on the (non-blocking) socket, to the monitor."""
        while True:
            try:
                data = sock.recv(65535)
            except OSError:  # BlockingIOError: nothing left; any other: the next round tries again
                return
            self.monitor.receive(data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
