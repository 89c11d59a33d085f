"""One full reconcile: compute the node's desired dataplane, diff it against the kernel, apply.

- Until every source has synced nothing is removed (diff(prune=False)), so a restart never tears
  down live state from a partial view; add-before-remove comes from the apply order. A node whose
  parent link lost its carrier still gives up its EIPs (fencing.release_stale_eips); losing the
  Lease does not withdraw them (an API outage must not take egress down).
- The kernel is reached through narrow ports: the dataplane (read and apply), conntrack (forget
  the un-NATed flows of pods whose steering changed). Counters are the metrics' port (health.py).
- After the apply: the CNI acks (only from a synced view: a partial one could ack a selected pod as
  unselected) and the tunnel report, retried with backoff when the API refuses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from egress_cni.agent.cni_bridge import CniBridge
from egress_cni.agent.fencing import release_stale_eips
from egress_cni.agent.sources import TunnelReporter
from egress_cni.backoff import Backoff
from egress_cni.dataplane.compute import Desired, desired_dataplane
from egress_cni.dataplane.inputs import NEVER, ClusterState, DataplaneConfig, NodeFacts
from egress_cni.dataplane.plan import Dataplane, Plan, Sysctl, diff

log = logging.getLogger(__name__)


class DataplanePort(Protocol):
    writes_decisions_together: bool  # plan.diff(together=...): the nftables engine's decision cache

    def hint_tables(self, tables: set[int]) -> None:
        """The routing tables the next read must include (ours are found by number)."""

    def read_actual(self, sysctls: frozenset[Sysctl] = frozenset()) -> Dataplane: ...

    def apply(self, plan: Plan) -> None:
        """Make the kernel match: adds before removals; applying an applied plan changes nothing."""


class Conntrack(Protocol):
    def forget_unnatted_flows(self, sources: frozenset[str], cluster: frozenset[str]) -> int:
        """Delete the conntrack entries of `sources` that left un-NATed to outside `cluster`; how many."""


class Counters(Protocol):
    def counters(self) -> dict[str, tuple[int, int]]:
        """(packets, bytes) by our rules' ownership comment."""


@dataclass
class Status:
    last_reconcile: float = 0.0
    last_ok: bool = False
    last_error: str = ""
    last_plan: Plan | None = None
    reconcile_seconds: float = 0.0
    reconciles: int = 0
    errors: int = 0
    eips: frozenset[str] = frozenset()
    lease_held: bool = True
    desired: Desired | None = None
    invalid: int = 0  # objects the stores could not parse (skipped)


def moved_sources(before: Desired, now: Desired) -> frozenset[str]:
    """Pod IPs whose steering changed: sources of policies whose gateway moved (new policies too),
    and members that left a policy's source set (policy deleted, pod no longer selected). Subnets
    (podSubnet members) are not pods and are left out."""
    sets_before = {s.name: s.members for s in before.dataplane.ipsets}
    sets_now = {s.name: s.members for s in now.dataplane.ipsets}
    found: set[str] = set()
    for key, ps in now.policies.items():
        if (old := before.policies.get(key)) is None or old.gateway != ps.gateway:
            found.update(m for name in ps.sources.values() for m in sets_now.get(name, ()))
    for ps in before.policies.values():
        for name in ps.sources.values():  # a policy's set keeps its name: what left it is unselected
            found.update(sets_before.get(name, frozenset()) - sets_now.get(name, frozenset()))
    return frozenset(m for m in found if "/" not in m)


class Reconciler:
    def __init__(self, *, node: str, config: DataplaneConfig, facts: Callable[[], NodeFacts],
                 state: Callable[[], ClusterState], synced: Callable[[], bool], holds_lease: Callable[[], bool],
                 dataplane: DataplanePort, conntrack: Conntrack, reporter: TunnelReporter, cni: CniBridge,
                 report_backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic,
                 on_reconciled: Callable[[Status], None] = lambda _status: None) -> None:
        self.node, self.config, self.facts = node, config, facts
        self._state, self._synced, self._holds_lease = state, synced, holds_lease
        self.dataplane, self.conntrack, self.reporter, self.cni = dataplane, conntrack, reporter, cni
        self.status = Status()
        self._reported: tuple[dict[str, str], bool] | None = None
        self._report_backoff = report_backoff or Backoff(base=0.5, cap=10.0)
        self._report_not_before = 0.0
        self._clock = clock
        self.on_reconciled = on_reconciled

    def compute(self) -> tuple[Desired, NodeFacts]:
        facts = self.facts()
        state = replace(self._state(), local_endpoints=self.cni.local_endpoints())
        return desired_dataplane(state, facts, self.config), facts

    def reconcile(self) -> Plan | None:
        """One pass, counted in `status`; None when it failed (logged; the caller retries)."""
        start = self._clock()
        try:
            plan = self._pass()
            self.status.last_ok, self.status.last_error = True, ""
            return plan
        except Exception as exc:
            log.exception("reconcile failed")
            self.status.last_ok, self.status.last_error = False, str(exc)
            self.status.errors += 1
            return None
        finally:
            self.status.reconcile_seconds = self._clock() - start
            self.status.last_reconcile = time.time()
            self.status.reconciles += 1
            self.status.lease_held = self._holds_lease()
            self.on_reconciled(self.status)

    def _pass(self) -> Plan:
        synced = self._synced()
        listed = self.cni.begin()
        desired, facts = self.compute()
        dp = desired.dataplane
        self.dataplane.hint_tables({r.table for r in dp.routes})
        actual = self.dataplane.read_actual(dp.sysctls)
        plan = diff(dp, actual, prune=synced, together=self.dataplane.writes_decisions_together)
        if not facts.carrier:
            plan = release_stale_eips(plan, actual, dp)
        plan = self.cni.protect(plan, listed)
        self.dataplane.apply(plan)
        self.cni.settle(listed)
        if self.status.desired is not None:
            self._forget_moved_flows(self.status.desired, desired)
        if synced:  # a partial view could ack a selected pod as unselected
            self.cni.write_acks(desired)
        self._report_parent(facts, ready=dp.link is not None or self.config.vxlan_mode == NEVER)
        self.status.last_plan, self.status.desired, self.status.eips = plan, desired, dp.eips
        return plan

    def _forget_moved_flows(self, before: Desired, now: Desired) -> None:
        """Un-NATed conntrack entries (a flow that was tunnelled, or began before its pod was selected on
        a CNI without masquerade) of pods whose steering changed are deleted, so the next packet is a
        first packet under the new rules. Kept, such an entry would be blackholed by the `unnatted` rule
        (gateway moved onto this node, new policy) or leave with the pod IP (policy deleted, pod no
        longer selected: the rule went with the set)."""
        sources = moved_sources(before, now)
        if not sources:
            return
        cluster_names = set(now.cluster.values())
        cluster = frozenset(m for s in now.dataplane.ipsets if s.name in cluster_names for m in s.members)
        try:
            n = self.conntrack.forget_unnatted_flows(sources, cluster)
            log.info("forgot un-NATed flows", extra={"flows": n, "sources": len(sources)})
        except Exception as exc:  # only recovery is delayed (the entries expire); never fail the reconcile
            log.warning("cannot forget un-NATed flows", extra={"error": str(exc)})

    def _report_parent(self, facts: NodeFacts, ready: bool) -> None:
        """EgressTunnel status.tunnel.parent, and phase Ready once our tunnel is programmed."""
        parent = {"name": facts.parent, "ipv4": facts.parent_ipv4, "ipv6": facts.parent_ipv6, "mac": facts.parent_mac}
        if (parent, ready) == self._reported or self._clock() < self._report_not_before:
            return
        try:
            self.reporter.report_tunnel(self.node, parent, ready)
        except Exception as exc:
            delay = self._report_backoff.next()
            self._report_not_before = self._clock() + delay
            log.warning("cannot report tunnel parent", extra={"error": str(exc), "retry_seconds": round(delay, 2)})
            return
        self._report_backoff.reset()
        self._reported = (parent, ready)
