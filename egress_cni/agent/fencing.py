"""Fencing by the kernel: EIP addresses carry a valid lifetime that a dedicated thread renews.

- IPv4 EIPs live on the EIP holder, a TUN device this process holds open (dataplane/eipdev.py): when
  the agent dies (SIGKILL, a crash) the kernel deletes it, and the addresses and ARP answers with it,
  at once.
- `EipRefresher` renews, every 100 ms, the lifetime of the EIP addresses the last reconcile desired
  (its own thread and netlink socket: never queued behind a full apply). An agent that hangs with its
  descriptors open (SIGSTOP), or dies holding IPv6 EIPs (which stay on the parent: NDP answers only
  for on-link addresses), stops renewing, and the kernel removes the addresses (and with them the
  ARP/NDP answers) once their lifetime (`DataplaneConfig.eip_lifetime`) runs out. A restarted agent
  adopts the EIPs it finds: until a reconcile from a synced view has said which EIPs are ours, every
  EIP present is renewed, so a restart never lets one lapse. SIGTERM hands them over (`hand_over`):
  the holder is made persistent and each EIP gets a last lifetime of HANDOVER seconds, shorter than
  the RESTART_GRACE peers hold off for, so the node answers for them while its agent restarts (a
  rollout moves nothing and interrupts nothing) and they expire before a peer may claim them if it
  never comes back. Uninstall releases them at once (`release`).
- A parent link without carrier (the node lost its uplink) claims no EIP: the refresher notices the
  flip within one interval, stops renewing and asks for a reconcile, which removes them.
- EIPs the apply did not claim because someone on the segment answers for them (`contested`) are
  retried by asking for another reconcile, with backoff.
- The liveness Lease is still renewed (`Fencing`, for the controller), but losing it no longer
  withdraws EIPs: an API outage must not take egress down.
The heartbeat file tells the CNI plugin that an agent is running on this node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from egress_cni import registry
from egress_cni.backoff import Backoff
from egress_cni.dataplane.plan import Address, Dataplane, Plan

log = logging.getLogger(__name__)
REFRESH_SECONDS = 0.1  # well inside the 1 s lifetime: a stall must pass 0.9 s to drop an EIP


class Lease(Protocol):
    def try_acquire_or_renew(self) -> bool: ...
    def release(self) -> None: ...


class NoLease:
    """For sources without an API server (YAML): the node always counts as live."""

    def try_acquire_or_renew(self) -> bool:
        return True

    def release(self) -> None:
        return None


class EipPort(Protocol):
    """The kernel as the fencing thread reaches it (dataplane.apply.KernelDataplane, the fake)."""

    @property
    def contested(self) -> frozenset[str]:
        """EIPs the last apply left unclaimed because another node answers for them."""

    def refresh_eips(self, addresses: Iterable[Address] | None) -> int:
        """Renew those EIP addresses (None: every EIP we own) that are present; never add one."""

    def release_eips(self) -> list[str]:
        """Remove every EIP address we own; the EIPs removed."""

    def hand_over_eips(self, seconds: int) -> list[str]:
        """Keep every EIP address we own for `seconds` more, past this process (a restart); the EIPs."""

    def carrier(self) -> bool:
        """Whether the parent link has carrier."""


class Fencing:
    """Whether this node holds its Lease; `on_change` is called when that verdict flips."""

    def __init__(self, lease: Lease, *, lease_seconds: float, on_change: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease, self.lease_seconds = lease, lease_seconds
        self._on_change, self._clock = on_change, clock
        self._ok_at = clock()
        self._holds = True

    @property
    def holds_lease(self) -> bool:
        return self._holds

    def renew(self) -> bool:
        """One renewal attempt; any API failure counts as a missed renewal."""
        started = self._clock()  # the renewTime the API records is taken before the call
        try:
            ok = self.lease.try_acquire_or_renew()
        except Exception as exc:
            log.warning("lease renewal failed", extra={"error": str(exc)})
            ok = False
        if ok:
            self._ok_at = max(self._ok_at, started)
        self.check()
        return ok

    def check(self) -> bool:
        """Re-judge the Lease on the clock; True while held."""
        held = self._clock() - self._ok_at < self.lease_seconds
        if held != self._holds:
            log.warning("lease state changed", extra={"held": held})
            self._holds = held
            self._on_change()
        return held

    def keep(self, stop: threading.Event, renew_seconds: float) -> None:
        """Thread body: renew until `stop`. Not released on stop: a restarting agent keeps its EIPs
        and flows; the Lease simply expires."""
        while not stop.wait(renew_seconds):
            self.renew()

    def heartbeat(self, stop: threading.Event, every: float, registry_dir: str, node: str) -> None:
        """Thread body: the registry heartbeat, and the Lease verdict once more."""
        while not stop.wait(every):
            self.check()
            try:
                registry.write_heartbeat(registry_dir, node)
            except OSError as exc:
                log.warning("cannot write heartbeat", extra={"error": str(exc)})


class EipRefresher:
    """The fast path of fencing: renews the EIPs' kernel lifetime; `wake` asks for a reconcile."""

    def __init__(self, kernel: EipPort, *, wake: Callable[[], None], interval: float = REFRESH_SECONDS,
                 retry: Backoff | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.kernel, self.interval, self._wake, self._clock = kernel, interval, wake, clock
        self._retry = retry or Backoff(base=0.25, cap=5.0)
        self._retry_at = 0.0
        self._lock = threading.Lock()
        # One user of the kernel port at a time: hand_over/release run on the main thread while a
        # tick may be in flight, and a netlink socket shared by two threads can lose a reply (and hang).
        self._kernel_lock = threading.Lock()
        self._want: frozenset[Address] | None = None  # None: adopt every EIP present (no synced reconcile yet)
        self._carrier = True
        self._released = False

    @property
    def carrier(self) -> bool:
        """The parent link's carrier as the last tick saw it."""
        return self._carrier

    def desired(self, dataplane: Dataplane, *, complete: bool) -> None:
        """After a reconcile: its desired EIPs become the ones renewed once its view was complete
        (before that, EIPs found in the kernel are adopted and renewed too)."""
        eips = frozenset(a for a in dataplane.addresses if a.eip)
        with self._lock:
            if complete or self._want is not None:
                self._want = eips

    def tick(self) -> None:
        """One round: carrier check, renewal, contested retry."""
        with self._kernel_lock:
            self._tick()

    def _tick(self) -> None:
        carrier = self.kernel.carrier()
        if carrier != self._carrier:
            log.warning("parent link carrier changed", extra={"carrier": carrier})
            self._carrier = carrier
            self._wake()
        with self._lock:
            want, released = self._want, self._released
        if carrier and not released:
            self.kernel.refresh_eips(want)
        if self.kernel.contested:
            if self._clock() >= self._retry_at:
                self._retry_at = self._clock() + self._retry.next()
                self._wake()
        else:
            self._retry.reset()
            self._retry_at = 0.0

    def run(self, stop: threading.Event) -> None:
        """Thread body: a tick every `interval` until `stop`; a failed tick is logged and retried."""
        while True:
            try:
                self.tick()
            except Exception as exc:
                log.warning("cannot renew eips", extra={"error": str(exc)})
            if stop.wait(self.interval):
                return

    def hand_over(self, seconds: int) -> list[str]:
        """SIGTERM: stop renewing and leave every EIP to the next agent for `seconds` (the kernel
        removes them then if none came back to renew them)."""
        with self._kernel_lock:
            with self._lock:
                self._released = True
            kept = self.kernel.hand_over_eips(seconds)
        if kept:
            log.info("eips handed over to the next agent", extra={"eips": kept, "seconds": seconds})
        return kept

    def release(self) -> list[str]:
        """Uninstall: stop renewing and remove every EIP now."""
        with self._kernel_lock:
            with self._lock:
                self._released = True
            released = self.kernel.release_eips()
        if released:
            log.info("released eips", extra={"eips": released})
        return released


def release_stale_eips(plan: Plan, actual: Dataplane, desired: Dataplane) -> Plan:
    """A node without carrier gives up the EIPs it holds even while the plan may not prune
    (sources not synced): fencing does not wait for a complete view."""
    if plan.prune:
        return plan
    stale = tuple(a for a in sorted(actual.addresses) if a.eip and a not in desired.addresses)
    return replace(plan, del_addresses=plan.del_addresses + stale)
