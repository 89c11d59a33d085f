"""Fencing: a node answers for its EIPs only while its liveness Lease is fresh.

The Lease is renewed every `renew_seconds`; when it has not been renewed for its whole duration
the node stops claiming EIPs, because the controller may already have moved them. The verdict is
also checked from the heartbeat thread, so a renewal stuck in a hung API call cannot keep the EIPs.
The heartbeat file tells the CNI plugin that an agent is running on this node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from egress_cni import registry
from egress_cni.dataplane.plan import Dataplane, Plan

log = logging.getLogger(__name__)


class Lease(Protocol):
    def try_acquire_or_renew(self) -> bool: ...
    def release(self) -> None: ...


class NoLease:
    """For sources without an API server (YAML): the node always counts as live."""

    def try_acquire_or_renew(self) -> bool:
        return True

    def release(self) -> None:
        return None


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


def release_stale_eips(plan: Plan, actual: Dataplane, desired: Dataplane) -> Plan:
    """A node without its Lease gives up the EIPs it holds even while the plan may not prune
    (sources not synced): fencing does not wait for a complete view."""
    if plan.prune:
        return plan
    stale = tuple(a for a in sorted(actual.addresses) if a.eip and a not in desired.addresses)
    return replace(plan, del_addresses=plan.del_addresses + stale)
