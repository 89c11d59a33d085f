"""The agent's reconcile loop: events only mark dirty; one worker applies the full desired state.

- Sources and the registry watcher call `mark_dirty`; a resync timer repairs drift even without events.
- Until every source has synced nothing is removed (diff(prune=False)), so a restart never tears down
  live state from a partial view; add-before-remove comes from the apply order.
- A new CNI endpoint takes a fast path: its IPs go straight into the sets of the policies selecting
  it (one `ipset restore`), it is acked, and a full reconcile follows.
- The liveness lease is renewed every `lease_renew` seconds; when it has not been renewed for its
  whole duration the node stops claiming EIPs (fencing: the controller may already have moved them).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from egress_cni import registry
from egress_cni.agent import dirwatch
from egress_cni.agent.sources import Source, state_from_objects
from egress_cni.dataplane.compute import (
    Desired,
    cluster_set,
    desired_dataplane,
    members,
    selected_set,
    selects,
    set_name,
)
from egress_cni.dataplane.inputs import ClusterState, DataplaneConfig, LocalEndpoint, NodeFacts
from egress_cni.dataplane.plan import Dataplane, Plan, Sysctl, diff

log = logging.getLogger(__name__)


class Kernel(Protocol):
    def read_actual(self, sysctls: frozenset[Sysctl] = frozenset()) -> Dataplane: ...
    def apply(self, plan: Plan) -> None: ...
    def hint_tables(self, tables: set[int]) -> None: ...
    def counters(self) -> dict[str, tuple[int, int]]: ...
    def ipset_add(self, entries: list[tuple[str, str]]) -> None: ...
    def forget_unnatted_flows(self, sources: frozenset[str], cluster: frozenset[str]) -> int: ...


class Lease(Protocol):
    def try_acquire_or_renew(self) -> bool: ...
    def release(self) -> None: ...


class NoLease:
    """For sources without an API server (YAML): the node always counts as live."""

    def try_acquire_or_renew(self) -> bool:
        return True

    def release(self) -> None:
        return None


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


class Agent:
    def __init__(self, *, node: str, source: Source, kernel: Kernel, facts: Callable[[bool], NodeFacts],
                 config: DataplaneConfig, registry_dir: str, lease: Lease | None = None, resync_seconds: float = 10.0,
                 lease_seconds: float = 1.0, lease_renew: float = 0.2, heartbeat_seconds: float = 0.25,
                 min_interval: float = 0.1) -> None:
        self.node, self.source, self.kernel, self.facts, self.config = node, source, kernel, facts, config
        self.registry_dir = registry_dir
        self.lease = lease or NoLease()
        self.resync_seconds, self.lease_seconds, self.lease_renew = resync_seconds, lease_seconds, lease_renew
        self.heartbeat_seconds = heartbeat_seconds
        self.min_interval = min_interval  # coalesces event bursts: at most one full reconcile per interval
        self.status = Status()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # set members the fast path added: a reconcile that listed the registry before they existed
        # must not delete them (without making the fast path wait for a whole reconcile)
        self._fresh: set[tuple[str, str]] = set()
        self._threads: list[threading.Thread] = []
        self._source_gen = 0
        self._parsed: tuple[int, ClusterState] = (-1, ClusterState())
        self._lease_ok_at = time.monotonic()
        self._holds_lease = True
        self._known_endpoints: dict[str, registry.Endpoint] = {}
        self._reported_parent: tuple[dict[str, str], bool] | None = None
        self._facts: NodeFacts | None = None
        self.on_reconciled: Callable[[Status], None] | None = None

    # --- events -------------------------------------------------------------------------------

    def mark_dirty(self) -> None:
        self._dirty.set()

    def _source_changed(self) -> None:
        with self._lock:
            self._source_gen += 1
        self.mark_dirty()

    # --- threads ------------------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs(self.registry_dir, exist_ok=True)
        registry.write_heartbeat(self.registry_dir, self.node)
        self.source.start(self._source_changed)
        for target, name in ((self._worker, "reconcile"), (self._watch_registry, "registry"),
                             (self._heartbeat, "heartbeat"), (self._keep_lease, "lease")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self.source.stop()
        for t in self._threads:
            t.join(timeout=5)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) and not self._stop.is_set()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            self._check_lease()  # also here: a renewal stuck in a hung API call must not keep our EIPs
            try:
                registry.write_heartbeat(self.registry_dir, self.node)
            except OSError as exc:
                log.warning("cannot write heartbeat", extra={"error": str(exc)})

    def _keep_lease(self) -> None:
        while not self._stop.wait(self.lease_renew):
            started = time.monotonic()  # the renewTime the API records is taken before the call
            try:
                ok = self.lease.try_acquire_or_renew()
            except Exception as exc:  # any API failure counts as a missed renewal
                log.warning("lease renewal failed", extra={"error": str(exc)})
                ok = False
            if ok:
                self._lease_ok_at = max(self._lease_ok_at, started)
            self._check_lease()
        # not released on stop: a restarting agent keeps its EIPs and flows; the lease simply expires

    def _check_lease(self) -> None:
        held = time.monotonic() - self._lease_ok_at < self.lease_seconds
        if held != self._holds_lease:
            log.warning("lease state changed", extra={"held": held})
            self._holds_lease = held
            self.mark_dirty()

    def _watch_registry(self) -> None:
        def changed() -> None:
            try:
                self._fast_path()
            except Exception:
                log.exception("fast path failed; the full reconcile will program the endpoint")
            self.mark_dirty()

        dirwatch.watch(os.path.join(self.registry_dir, registry.ENDPOINTS), changed, self._stop.is_set)

    def _worker(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            self._dirty.wait(self.resync_seconds)
            if self._stop.wait(max(0.0, last + self.min_interval - time.monotonic())):
                break
            self._dirty.clear()
            last = time.monotonic()
            self.reconcile()
            # The cluster state is a large, long-lived object graph: freezing it keeps the cyclic GC
            # from walking it in the middle of a fast path (pauses of 10+ ms at 10k endpoints).
            # A full collection now and then bounds what freezing could keep alive.
            if self.status.reconciles % 100 == 0:
                gc.unfreeze()
                gc.collect()
            gc.freeze()

    # --- reconcile ----------------------------------------------------------------------------

    def _state(self) -> ClusterState:
        with self._lock:
            gen = self._source_gen
        if self._parsed[0] != gen:
            self._parsed = (gen, state_from_objects(self.source.objects(), self.node))
        return self._parsed[1]

    def _local_endpoints(self) -> tuple[LocalEndpoint, ...]:
        eps = registry.list_endpoints(self.registry_dir)
        self._known_endpoints = {e.key: e for e in eps}
        return tuple(LocalEndpoint(e.key, e.namespace, e.pod, e.ipv4, e.ipv6) for e in eps)

    def compute(self) -> Desired:
        facts = self._facts = self.facts(self._holds_lease)
        state = replace(self._state(), local_endpoints=self._local_endpoints())
        return desired_dataplane(state, facts, self.config)

    def reconcile(self) -> Plan | None:
        start = time.monotonic()
        try:
            with self._lock:
                listed_after = set(self._fresh)
            desired = self.compute()
            dp = desired.dataplane
            self.kernel.hint_tables({r.table for r in dp.routes})
            actual = self.kernel.read_actual(dp.sysctls)
            plan = diff(dp, actual, prune=self.source.synced)
            if not plan.prune and not self._holds_lease:  # fencing does not wait for the sources to sync
                stale_eips = tuple(a for a in sorted(actual.addresses) if a.eip and a not in dp.addresses)
                plan = replace(plan, del_addresses=plan.del_addresses + stale_eips)
            with self._lock:
                protect = self._fresh - listed_after
            if protect:
                plan = replace(plan, del_members=tuple(m for m in plan.del_members if m not in protect))
            self.kernel.apply(plan)
            with self._lock:
                self._fresh -= listed_after
            if self.status.desired is not None:
                self._forget_moved_flows(self.status.desired, desired)
            if self.source.synced:  # a partial view could ack a selected pod as unselected
                self._write_acks(desired)
            if self._facts is not None:
                self._report_parent(self._facts, ready=dp.link is not None)
            self.status.last_ok, self.status.last_error = True, ""
            self.status.last_plan, self.status.desired, self.status.eips = plan, desired, dp.eips
            return plan
        except Exception as exc:
            log.exception("reconcile failed")
            self.status.last_ok, self.status.last_error = False, str(exc)
            self.status.errors += 1
            self._dirty.set() if not self._stop.wait(0.5) else None  # retry soon, not in a hot loop
            return None
        finally:
            self.status.reconcile_seconds = time.monotonic() - start
            self.status.last_reconcile = time.time()
            self.status.reconciles += 1
            self.status.lease_held = self._holds_lease
            if self.on_reconciled:
                self.on_reconciled(self.status)

    def _forget_moved_flows(self, before: Desired, now: Desired) -> None:
        """Un-NATed conntrack entries (a flow that was tunnelled, or began before its pod was selected on
        a CNI without masquerade) of pods whose steering changed are deleted, so the next packet is a
        first packet under the new rules. Kept, such an entry would be blackholed by the `unnatted` rule
        (gateway moved onto this node, new policy) or leave with the pod IP (policy deleted, pod no
        longer selected: the rule went with the set)."""
        moved = {k for k, gw in now.gateway_of.items() if before.gateway_of.get(k) != gw}  # new policies too
        by_key = {p.ref.key: p for p in self._state().policies}
        names = {set_name(self.config, "s", f, by_key[k]) for k in moved if k in by_key for f in (4, 6)}
        src = tuple(f"{self.config.ipset_prefix}-s{f}-" for f in (4, 6))
        was = {s.name: s.members for s in before.dataplane.ipsets if s.name.startswith(src)}
        now_sets = {s.name: s.members for s in now.dataplane.ipsets if s.name.startswith(src)}
        found = {m for name, ms in now_sets.items() if name in names for m in ms}
        found.update(m for name, ms in was.items() for m in ms - now_sets.get(name, frozenset()))  # unselected
        sources = frozenset(m for m in found if "/" not in m)  # pods, not podSubnet
        if not sources:
            return
        cluster = frozenset(m for s in now.dataplane.ipsets if s.name in (cluster_set(self.config, 4), cluster_set(self.config, 6))
                            for m in s.members)
        try:
            n = self.kernel.forget_unnatted_flows(sources, cluster)
            log.info("forgot un-NATed flows", extra={"flows": n, "sources": len(sources), "policies": sorted(moved)})
        except Exception as exc:  # only recovery is delayed (the entries expire); never fail the reconcile
            log.warning("cannot forget un-NATed flows", extra={"error": str(exc)})

    def _report_parent(self, facts: NodeFacts, ready: bool) -> None:
        """EgressTunnel status.tunnel.parent, and phase Ready once our tunnel is programmed."""
        parent = {"name": facts.parent, "ipv4": facts.parent_ipv4, "ipv6": facts.parent_ipv6}
        if (parent, ready) != self._reported_parent:
            try:
                self.source.report_tunnel(self.node, parent, ready)
                self._reported_parent = (parent, ready)
            except Exception as exc:
                log.warning("cannot report tunnel parent", extra={"error": str(exc)})

    def _write_acks(self, desired: Desired) -> None:
        for key, ep in self._known_endpoints.items():
            policies = desired.selection.get(key)
            if policies is None:
                continue  # pod labels not known yet: the CNI keeps waiting
            ack = registry.read_ack(self.registry_dir, key)
            if ack is None or not ack.matches(ep) or tuple(ack.policies) != policies:
                registry.write_ack(self.registry_dir, registry.Ack(key, ep.ipv4, ep.ipv6, bool(policies), policies))
        for ack in registry.list_acks(self.registry_dir):
            if ack.key not in self._known_endpoints:
                registry.remove_ack(self.registry_dir, ack.key)
        hijack = registry.Hijack(desired.hijack.get(4, ()), desired.hijack.get(6, ()))
        if registry.read_hijack(self.registry_dir) != hijack:
            registry.write_hijack(self.registry_dir, hijack)

    def _fast_path(self) -> None:
        """Program new endpoints into their policies' sets at once and ack them; the full reconcile
        that follows handles everything else (a gateway not yet peered, removals)."""
        last = self.status.desired
        if last is None or not self.source.synced:
            return  # acks wait for the first reconcile from a complete view
        state = self._state()
        by_key = {p.ref.key: p for p in state.policies}
        have = {s.name for s in last.dataplane.ipsets}
        known = set(last.order)
        adds: list[tuple[str, str]] = []
        acks: list[registry.Ack] = []
        for ep in registry.list_endpoints(self.registry_dir):
            if ep.key in self._known_endpoints:
                continue
            labels = state.pod_labels.get(f"{ep.namespace}/{ep.pod}")
            if labels is None:
                continue
            ns_labels = state.namespace_labels.get(ep.namespace, {})
            chosen = [k for k in last.order
                      if (p := by_key.get(k)) is not None and selects(p, ep.namespace, labels, ns_labels)]
            # a policy newer than the last reconcile has no sets yet: acking now would start the pod unsteered
            ready = not any(k not in known and selects(p, ep.namespace, labels, ns_labels) for k, p in by_key.items())
            for k in chosen:
                gw = last.gateway_of.get(k, "")
                if gw and gw != self.node and gw not in last.peers:
                    ready = False  # needs a new tunnel peer: leave it to the full reconcile
                for fam in (4, 6):
                    name = set_name(self.config, "s", fam, by_key[k])
                    if name in have:
                        ips = members(ep.ipv4 + ep.ipv6, fam)
                        if ips and (k, fam) not in last.ruled:
                            ready = False  # the policy's first source here: its rules come with the full reconcile
                        # the guard set first: without it the policy's rules never see the pod
                        adds += [(selected_set(self.config, fam), m) for m in ips] + [(name, m) for m in ips]
            if ready:
                acks.append(registry.Ack(ep.key, ep.ipv4, ep.ipv6, bool(chosen), chosen))
        if adds:
            with self._lock:
                self._fresh.update(adds)
            self.kernel.ipset_add(adds)
        for ack in acks:
            registry.write_ack(self.registry_dir, ack)
