"""The controller's informers and what their events make dirty.

Every event only marks work; one worker does it (see reconciler.py). Pod events are reduced to
the namespaces whose policies must recompute their endpoint slices; agent Lease renewals (five a
second per node) mark nothing unless the Lease's liveness flips — expiry is found by the worker's
deadline timer, not by an event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from egress_cni import k8s
from egress_cni.api.names import slice_policy
from egress_cni.controller.config import Config
from egress_cni.controller.liveness import AgentLiveness
from egress_cni.controller.slices import PodView

log = logging.getLogger(__name__)

REQUIRED = (
    k8s.EGRESS_GATEWAYS, k8s.EGRESS_POLICIES, k8s.EGRESS_CLUSTER_POLICIES, k8s.EGRESS_TUNNELS,
    k8s.EGRESS_CLUSTER_INFOS, k8s.EGRESS_ENDPOINT_SLICES, k8s.EGRESS_CLUSTER_ENDPOINT_SLICES,
    k8s.NODES, k8s.NAMESPACES, k8s.PODS, k8s.LEASES,
)
OPTIONAL = (k8s.SERVICE_CIDRS, k8s.CALICO_IPPOOLS)  # APIs a cluster may not serve


_STATUS_KINDS = {rt.kind for rt in (k8s.EGRESS_GATEWAYS, k8s.EGRESS_TUNNELS, k8s.EGRESS_CLUSTER_INFOS)}
_VOLATILE_META = ("resourceVersion", "managedFields")


def _without_status(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _VOLATILE_META}
    return {k: v for k, v in obj.items() if k != "status"} | {"metadata": meta}


def status_only_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """An update that touched nothing but `status` (for these kinds: the controller's own write,
    or the agent's tunnel report). Such events need no pass; the periodic resync still replays
    every object, so a status edited by hand is corrected within --resync-seconds."""
    return old is not None and new is not None and old is not new and _without_status(old) == _without_status(new)


class Dirty:
    """What the next pass must look at; `wake` is notified on every change."""

    def __init__(self) -> None:
        self.wake = threading.Condition()
        self.everything = True
        self.all_slices = True
        self.policies: set[tuple[str, str]] = set()  # (plural, key) whose slices need recomputing
        self.namespaces: set[str] = set()  # namespaces whose pods changed

    def depth(self) -> int:
        return int(self.everything) + len(self.policies) + len(self.namespaces)

    def mark(self, *, everything: bool = False, all_slices: bool = False, policy: tuple[str, str] | None = None,
             namespace: str | None = None) -> None:
        with self.wake:
            self.everything |= everything
            self.all_slices |= all_slices
            if policy is not None:
                self.policies.add(policy)
            if namespace is not None:
                self.namespaces.add(namespace)
            self.wake.notify_all()

    def take(self) -> tuple[bool, bool, set[tuple[str, str]], set[str]]:
        with self.wake:
            out = (self.everything, self.all_slices, self.policies, self.namespaces)
            self.everything, self.all_slices, self.policies, self.namespaces = False, False, set(), set()
            return out


@dataclass(frozen=True)
class PodSnapshot:
    """The pod index at one moment, with change counters that tell a policy's slices are current."""

    pods: dict[str, dict[str, PodView]]
    ns_versions: dict[str, int]
    pods_version: int
    namespaces_version: int


class Watchers:
    def __init__(self, client: k8s.Client, config: Config, dirty: Dirty) -> None:
        self.client, self.config, self.dirty = client, config, dirty
        self.informers: dict[str, k8s.Informer] = {}
        self.pods: dict[str, dict[str, PodView]] = {}  # namespace -> pod name -> view
        self._ns_versions: dict[str, int] = {}  # namespace -> count of pod changes that matter
        self._pods_version = 0
        self._namespaces_version = 0  # count of namespace label changes
        self._pods_lock = threading.Lock()
        self.liveness = AgentLiveness(config.agent_lease_grace, config.agent_stale_fraction, config.agent_stale_hold,
                                      config.agent_lease_prefix)
        self._liveness_lock = threading.Lock()
        self._agent_alive: dict[str, bool] = {}
        self.held_agents: frozenset[str] = frozenset()
        self.vouched_agents: frozenset[str] = frozenset()  # node names: stale Lease, a fresh peer sees them alive
        self.agent_reports: dict[str, tuple[str, ...]] = {}  # node -> EIPs its fresh Lease says it holds
        self.agent_renewed: dict[str, str] = {}  # node -> renewTime of its agent Lease (EgressTunnel lastHeartbeatTime)
        handlers: dict[str, Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]] = {
            k8s.EGRESS_POLICIES.plural: self._on_policy, k8s.EGRESS_CLUSTER_POLICIES.plural: self._on_policy,
            k8s.EGRESS_ENDPOINT_SLICES.plural: self._on_slice, k8s.EGRESS_CLUSTER_ENDPOINT_SLICES.plural: self._on_slice,
            k8s.PODS.plural: self._on_pod, k8s.NAMESPACES.plural: self._on_namespace, k8s.LEASES.plural: self._on_lease,
        }
        for rt in REQUIRED:
            self.informers[rt.plural] = k8s.Informer(
                client, rt, namespace=config.namespace if rt is k8s.LEASES else None,
                resync_seconds=config.resync_seconds,
                on_change=handlers.get(rt.plural, self._on_other))
        self._optional_started: set[str] = set()

    def start(self) -> None:
        for informer in self.informers.values():
            informer.start()
        self.start_optional()

    def start_optional(self) -> None:
        """Start informers for optional APIs that are served now (called again on every resync)."""
        for rt in OPTIONAL:
            if rt.plural in self._optional_started:
                continue
            try:
                self.client.list(rt)
            except k8s.APIError:
                continue
            informer = k8s.Informer(self.client, rt, resync_seconds=self.config.resync_seconds, on_change=self._on_other)
            informer.start()
            self.informers[rt.plural] = informer
            self._optional_started.add(rt.plural)
            self.dirty.mark(everything=True)

    def synced(self) -> bool:
        return all(self.informers[rt.plural].synced for rt in REQUIRED)

    def get(self, rt: k8s.ResourceType) -> k8s.Informer | None:
        return self.informers.get(rt.plural)

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    # --- handlers ------------------------------------------------------------------------------

    def _on_other(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        obj = new or old or {}
        if str(obj.get("kind", "")) in _STATUS_KINDS and status_only_change(old, new):
            return
        self.dirty.mark(everything=True)

    def _on_policy(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if status_only_change(old, new):
            return
        obj = new or old or {}
        plural = k8s.EGRESS_CLUSTER_POLICIES.plural if obj.get("kind") == "EgressClusterPolicy" else k8s.EGRESS_POLICIES.plural
        self.dirty.mark(everything=True, policy=(plural, key))

    def _on_slice(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        obj = new or old or {}
        meta = obj.get("metadata") or {}
        cluster = obj.get("kind") == "EgressClusterEndpointSlice" or not meta.get("namespace")
        policy_rt = k8s.EGRESS_CLUSTER_POLICIES if cluster else k8s.EGRESS_POLICIES
        owner = slice_policy(meta.get("ownerReferences") or (), meta.get("labels") or {}, policy_rt.kind)
        if not owner:
            return
        plural = policy_rt.plural
        self.dirty.mark(policy=(plural, owner if cluster else f"{meta.get('namespace')}/{owner}"))

    def _on_pod(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if old is new:
            return  # the informer's replay: the pod index is level state and already holds it
        namespace, _, name = key.partition("/")
        view = PodView.from_raw(new) if new is not None else None
        with self._pods_lock:
            pods = self.pods.setdefault(namespace, {})
            before = pods.get(name)
            if view is None:
                pods.pop(name, None)
            else:
                pods[name] = view
            if before == view:
                return  # a change that does not matter to egress (status conditions, annotations, ...)
            self._ns_versions[namespace] = self._ns_versions.get(namespace, 0) + 1
            self._pods_version += 1
        self.dirty.mark(namespace=namespace)

    def _on_namespace(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        before = ((old or {}).get("metadata") or {}).get("labels")
        after = ((new or {}).get("metadata") or {}).get("labels")
        if old is new or (old is not None and new is not None and before == after):
            return
        with self._pods_lock:
            self._namespaces_version += 1
        self.dirty.mark(everything=True, namespace=key)

    def _on_lease(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        name = key.partition("/")[2]
        if not name.startswith(self.config.agent_lease_prefix):
            return
        with self._liveness_lock:
            now = time.monotonic()
            reports_changed = self.liveness.observe(name, new, now)
            alive = self.liveness.fresh(name, now) or name in self.held_agents
            flipped = self._agent_alive.get(name) != alive or reports_changed
            self._agent_alive[name] = alive
            node = name[len(self.config.agent_lease_prefix):]
            renewed = str(((new or {}).get("spec") or {}).get("renewTime") or "")
            if renewed:
                self.agent_renewed[node] = renewed
            else:
                self.agent_renewed.pop(node, None)
        if flipped:
            self.dirty.mark(everything=True)

    # --- reads for the worker ------------------------------------------------------------------

    def pods_snapshot(self) -> PodSnapshot:
        with self._pods_lock:
            return PodSnapshot({ns: dict(pods) for ns, pods in self.pods.items()}, dict(self._ns_versions),
                               self._pods_version, self._namespaces_version)

    def regained_sight(self) -> None:
        with self._liveness_lock:
            self.liveness.regained_sight(time.monotonic())

    def agent_liveness(self) -> tuple[dict[str, bool], float | None]:
        """Node name -> agent alive (controller/liveness.py), and the seconds until a verdict may
        change without an event (a Lease running out, or a hold ending)."""
        now = time.monotonic()
        with self._liveness_lock:  # every Lease change reached _on_lease (the informer reports relist deletions too)
            verdict = self.liveness.evaluate(now)
            self._agent_alive = dict(verdict.alive)
        if verdict.held != self.held_agents:
            if verdict.held:
                log.warning("most agent Leases went stale together: holding their EIPs in place",
                            extra={"agents": sorted(verdict.held), "hold_seconds": self.config.agent_stale_hold})
            self.held_agents = verdict.held
        prefix = len(self.config.agent_lease_prefix)
        vouched = frozenset(name[prefix:] for name in verdict.vouched)
        if vouched != self.vouched_agents:
            if vouched - self.vouched_agents:
                log.info("agent Leases expired but peers see the nodes alive: no move",
                         extra={"nodes": sorted(vouched - self.vouched_agents)})
            self.vouched_agents = vouched
        self.agent_reports = {name[prefix:]: eips for name, eips in (verdict.reports or {}).items()}
        alive = {name[prefix:]: up for name, up in verdict.alive.items()}
        return alive, None if verdict.next_change is None else max(0.0, verdict.next_change - now)
