"""The agent's side of the node-local registry: what the CNI plugin registered, the fast path for a
new endpoint, and the acks the plugin waits for.

- The fast path puts a new endpoint's IPs straight into the sets of the policies selecting it (one
  `ipset restore`) and acks it; the full reconcile that follows handles everything else. It reads
  the index the last reconcile's compute returned (`Desired.policies`, `Desired.guard`) and decides
  selection with the same function compute does, so both agree on every pod.
- It acks only what the last reconcile already made safe: a policy newer than that reconcile, a
  gateway without a tunnel peer yet, or a policy's first source on this node (its rules do not exist
  yet) leave the ack to the full reconcile. No ack at all before every source has synced.
- Members the fast path added are protected from a reconcile that listed the registry before they
  existed (`begin`/`protect`/`settle`), without making the fast path wait for a whole reconcile.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from egress_cni import registry
from egress_cni.agent import dirwatch
from egress_cni.api.model import EgressPolicy
from egress_cni.api.semantics import selects
from egress_cni.dataplane.compute import Desired, members
from egress_cni.dataplane.inputs import ClusterState, LocalEndpoint
from egress_cni.dataplane.plan import Plan

log = logging.getLogger(__name__)


class SetWriter(Protocol):
    def ipset_add(self, entries: list[tuple[str, str]]) -> None:
        """Add (set, member) pairs to existing sets at once; members already present are fine."""


class CniBridge:
    def __init__(self, *, node: str, registry_dir: str, sets: SetWriter, state: Callable[[], ClusterState],
                 synced: Callable[[], bool], last: Callable[[], Desired | None]) -> None:
        self.node, self.registry_dir, self.sets = node, registry_dir, sets
        self._state, self._synced, self._last = state, synced, last
        self._lock = threading.Lock()
        self._fresh: set[tuple[str, str]] = set()  # (set, member) the fast path added
        self._known: dict[str, registry.Endpoint] = {}  # endpoints the last reconcile listed

    # --- for the reconcile --------------------------------------------------------------------

    def local_endpoints(self) -> tuple[LocalEndpoint, ...]:
        """The registered endpoints, remembered as known (the fast path leaves them alone)."""
        eps = registry.list_endpoints(self.registry_dir)
        self._known = {e.key: e for e in eps}
        return tuple(local_endpoint(e) for e in eps)

    def begin(self) -> frozenset[tuple[str, str]]:
        """Before the reconcile lists the registry: the fast-path members it will see."""
        with self._lock:
            return frozenset(self._fresh)

    def protect(self, plan: Plan, listed: frozenset[tuple[str, str]]) -> Plan:
        """Keep the plan from deleting members the fast path added after `begin`."""
        with self._lock:
            newer = self._fresh - listed
        if not newer:
            return plan
        return replace(plan, del_members=tuple(m for m in plan.del_members if m not in newer))

    def settle(self, listed: frozenset[tuple[str, str]]) -> None:
        """After the apply: the members the reconcile listed are its own now."""
        with self._lock:
            self._fresh -= listed

    @property
    def pending(self) -> frozenset[tuple[str, str]]:
        """Fast-path members no reconcile has listed yet."""
        with self._lock:
            return frozenset(self._fresh)

    def write_acks(self, desired: Desired) -> None:
        for key, ep in self._known.items():
            policies = desired.selection.get(key)
            if policies is None:
                continue  # pod labels not known yet: the CNI keeps waiting
            ack = registry.read_ack(self.registry_dir, key)
            if ack is None or not ack.matches(ep) or tuple(ack.policies) != policies:
                registry.write_ack(self.registry_dir, registry.Ack(key, ep.ipv4, ep.ipv6, bool(policies), policies))
        for ack in registry.list_acks(self.registry_dir):
            if ack.key not in self._known:
                registry.remove_ack(self.registry_dir, ack.key)
        hijack = registry.Hijack(desired.hijack.get(4, ()), desired.hijack.get(6, ()))
        if registry.read_hijack(self.registry_dir) != hijack:
            registry.write_hijack(self.registry_dir, hijack)

    # --- the fast path ------------------------------------------------------------------------

    def watch(self, stop: threading.Event, on_change: Callable[[], None]) -> None:
        """Thread body: every registry change takes the fast path, then asks for a full reconcile."""
        def changed() -> None:
            try:
                self.fast_path()
            except Exception:
                log.exception("fast path failed; the full reconcile will program the endpoint")
            on_change()

        dirwatch.watch(os.path.join(self.registry_dir, registry.ENDPOINTS), changed, stop.is_set)

    def fast_path(self) -> None:
        """Program endpoints no reconcile has listed yet into their policies' sets, and ack them."""
        last = self._last()
        if last is None or not self._synced():
            return  # acks wait for the first reconcile from a complete view
        state = self._state()
        by_key = {p.ref.key: p for p in state.policies}
        adds: list[tuple[str, str]] = []
        acks: list[registry.Ack] = []
        for ep in registry.list_endpoints(self.registry_dir):
            if ep.key in self._known:
                continue
            labels = state.pod_labels.get(f"{ep.namespace}/{ep.pod}")
            if labels is None:
                continue
            ns_labels = state.namespace_labels.get(ep.namespace, {})
            local = local_endpoint(ep)
            ips = local.ipv4 + local.ipv6

            def selected(p: EgressPolicy) -> bool:
                return selects(p, ep.namespace, labels, ns_labels, ips)  # noqa: B023  (called at once)

            chosen = [k for k in last.order if (p := by_key.get(k)) is not None and selected(p)]
            # a policy newer than the last reconcile has no sets yet: acking now would start the pod unsteered;
            # the node's first underlay pod waits for the masquerade of its unsteered traffic
            ready = not any(k not in last.policies and selected(p) for k, p in by_key.items()) \
                and (last.underlay_masq or not local.underlay)
            for k in chosen:
                sets = last.policies[k]
                if sets.gateway and sets.gateway != self.node and sets.gateway not in last.peers:
                    ready = False  # needs a new tunnel peer: leave it to the full reconcile
                for fam, name in sorted(sets.sources.items()):
                    fam_ips = members(ips, fam)
                    if fam_ips and fam not in sets.ruled:
                        ready = False  # the policy's first source here: its rules come with the full reconcile
                    # the guard set first: without it the policy's rules never see the pod
                    adds += [(last.guard[fam], m) for m in fam_ips] + [(name, m) for m in fam_ips]
            if ready:
                acks.append(registry.Ack(ep.key, ep.ipv4, ep.ipv6, bool(chosen), chosen))
        if adds:
            with self._lock:
                self._fresh.update(adds)
            self.sets.ipset_add(adds)
        for ack in acks:
            registry.write_ack(self.registry_dir, ack)


def local_endpoint(e: registry.Endpoint) -> LocalEndpoint:
    """The registry's record as the dataplane reads it (addresses parsed once, here)."""
    return LocalEndpoint.of(e.key, e.namespace, e.pod, e.ipv4, e.ipv6, e.mode == "underlay")
