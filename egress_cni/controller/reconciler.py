"""One reconcile pass: read the caches, compute the desired state (pure modules), write the
differences. Runs on the leader's single worker thread only.

Order inside a pass: tunnels, placement of every gateway, policy statuses, gateway statuses
(finalizers, rr cursor), the cluster info, endpoint slices; Events go out from a background thread.
Policy status first because that is what users and agents wait for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from egress_cni import k8s
from egress_cni.api.errors import FieldError
from egress_cni.api.meta import ObjectMeta
from egress_cni.api.model import (
    CLUSTER_INFO_NAME,
    FINALIZER_GATEWAY,
    EgressClusterInfo,
    EgressClusterPolicy,
    EgressGateway,
    EgressPolicy,
    EgressTunnel,
    PolicyRef,
    PolicyStatus,
    Resource,
)
from egress_cni.controller.cache import Overlay
from egress_cni.controller.clusterinfo import cluster_info_status, service_cidrs
from egress_cni.controller.config import Config
from egress_cni.controller.events import EventSink
from egress_cni.controller.metrics import Metrics
from egress_cni.controller.placement import ANNOTATION_RR_LAST, Assignment, NodeView, Placement, PolicyView, place_gateway
from egress_cni.controller.slice_writer import SliceWriter
from egress_cni.controller.status import effective_gateway, gateway_not_found, gateway_status, merge_patch, policy_status
from egress_cni.controller.tunnels import plan_tunnels
from egress_cni.controller.watchers import Watchers

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0

POLICY_KINDS: tuple[tuple[k8s.ResourceType, type[EgressPolicy]], ...] = (
    (k8s.EGRESS_POLICIES, EgressPolicy), (k8s.EGRESS_CLUSTER_POLICIES, EgressClusterPolicy))


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_view(node: Mapping[str, Any], agent_alive: bool) -> NodeView:
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return NodeView(str(meta.get("name", "")), dict(meta.get("labels") or {}), ready, bool(spec.get("unschedulable")), agent_alive)


class Reconciler:
    def __init__(self, client: k8s.Client, config: Config, watchers: Watchers, metrics: Metrics, events: EventSink) -> None:
        self.client, self.config, self.watchers, self.metrics, self.events = client, config, watchers, metrics, events
        self.overlays = {plural: Overlay(inf) for plural, inf in watchers.informers.items()}
        self.slices = SliceWriter(client, config.max_endpoints_per_slice, self.overlays)
        self._parsed: dict[tuple[str, str], tuple[str, Resource | None]] = {}  # (plural, key) -> (rv, parsed)
        self._failed = False
        # gateway -> (resourceVersion, policy views, node views, load before it, ...) of its last written decision
        self._placements: dict[str, tuple[str, tuple[PolicyView, ...], tuple[NodeView, ...], dict[str, int], Placement,
                                          dict[str, int]]] = {}  # ..., placement, what it added to the load
        # (plural, key) -> (the object, the assignment) last found needing no status write
        self._status_checked: dict[tuple[str, str], tuple[dict[str, Any], Assignment]] = {}
        self.alive: dict[str, bool] = {}  # agent liveness the last pass placed EIPs by
        self._announced_waits: set[str] = set()  # gateway uids told they wait for their policies

    # --- reading -------------------------------------------------------------------------------

    def _objects(self, rt: k8s.ResourceType) -> list[dict[str, Any]]:
        overlay = self.overlays.get(rt.plural)
        return overlay.list() if overlay is not None else []

    def _parse(self, rt: k8s.ResourceType, cls: type[Resource], raw: dict[str, Any]) -> Resource | None:
        """Parse with a cache keyed by resourceVersion; a malformed object is logged and skipped."""
        key = (rt.plural, k8s.object_key(raw))
        rv = str((raw.get("metadata") or {}).get("resourceVersion", ""))
        hit = self._parsed.get(key)
        if hit is not None and hit[0] == rv and rv:
            return hit[1]
        try:
            parsed: Resource | None = cls.parse(raw)  # type: ignore[attr-defined]
        except FieldError as exc:
            log.warning("skipping malformed object", extra={"kind": rt.kind, "key": key[1], "error": str(exc)})
            parsed = None
        self._parsed[key] = (rv, parsed)
        return parsed

    # --- the pass ------------------------------------------------------------------------------

    def reconcile(self, everything: bool, all_slices: bool, policies: set[tuple[str, str]], namespaces: set[str]) -> float | None:
        """One pass; returns when to look again without an event: soon after a failed write, else
        None (agent Lease expiry is watched by the worker)."""
        self._failed = False
        synced = self.watchers.synced()
        now = now_rfc3339()
        alive, _ = self.watchers.agent_liveness()
        if everything:
            self.alive = alive
        raw_nodes = self._objects(k8s.NODES)
        nodes = [node_view(n, alive.get(str((n.get("metadata") or {}).get("name", "")), False)) for n in raw_nodes]
        gateways: dict[str, EgressGateway] = {}
        raw_gateways: dict[str, dict[str, Any]] = {}
        for raw in self._objects(k8s.EGRESS_GATEWAYS):
            gw = self._parse(k8s.EGRESS_GATEWAYS, EgressGateway, raw)
            if isinstance(gw, EgressGateway):
                gateways[gw.metadata.name], raw_gateways[gw.metadata.name] = gw, raw
        namespaces_labels = {str((n.get("metadata") or {}).get("name", "")): dict((n.get("metadata") or {}).get("labels") or {})
                             for n in self._objects(k8s.NAMESPACES)}
        all_policies: list[tuple[k8s.ResourceType, EgressPolicy, dict[str, Any]]] = []
        for rt, cls in POLICY_KINDS:
            for raw in self._objects(rt):
                p = self._parse(rt, cls, raw)
                if isinstance(p, EgressPolicy):
                    all_policies.append((rt, p, raw))

        if everything:
            if synced:
                self._guard("tunnels", self._tunnels, [n.name for n in nodes])
            by_gateway: dict[str, list[PolicyView]] = {}
            target: dict[PolicyRef, str] = {}
            for _, p, _ in all_policies:
                if p.metadata.deletion_timestamp:
                    continue
                ns_labels = namespaces_labels.get(p.metadata.namespace) if p.NAMESPACED else None
                name = effective_gateway(p.spec.egress_gateway_name, ns_labels, gateways)
                target[p.ref] = name
                by_gateway.setdefault(name, []).append(PolicyView(
                    p.ref, p.spec.eip, str(p.metadata.extra.get("creationTimestamp", "")), p.status.eip_ipv4, p.status.eip_ipv6))
            assignments: dict[PolicyRef, Assignment] = {}
            load: Mapping[str, int] = {}
            node_views = tuple(nodes)
            to_write: list[tuple[str, Placement, dict[str, int]]] = []
            for name in sorted(gateways):
                raw_gw, views = raw_gateways[name], tuple(by_gateway.get(name, ()))
                memo = self._placements.get(name)
                version = str((raw_gw.get("metadata") or {}).get("resourceVersion", ""))
                if memo is not None and memo[0] == version and memo[1] == views and memo[2] == node_views and \
                        (memo[3] == load or not memo[4].uses_load):
                    placed = memo[4]  # nothing this gateway depends on changed: same decision, already written
                    delta = memo[5]
                    load = {n: load.get(n, 0) + delta.get(n, 0) for n in set(load) | set(delta)}
                else:
                    placed = place_gateway(gateways[name], views, nodes, load)
                    to_write.append((name, placed, dict(load)))
                    load = placed.load
                assignments.update(placed.assignments)
            for vanished in set(self._placements) - set(gateways):
                del self._placements[vanished]
            # Policy statuses first: they are what users and the benchmark wait for. Should the
            # process die before the gateway status below, the policies' status.eip reserves
            # their addresses for the next leader (placement.PolicyView.reserved_*).
            ready = 0
            for rt, p, raw in all_policies:
                if p.metadata.deletion_timestamp:
                    continue
                assignment = assignments.get(p.ref) or gateway_not_found(target.get(p.ref, ""))
                ready += assignment.ready
                self._guard(f"policy {p.metadata.key}", self._write_policy, rt, p, raw, assignment, now)
            live_keys = {(rt.plural, p.metadata.key) for rt, p, _ in all_policies}
            for gone in set(self._status_checked) - live_keys:
                del self._status_checked[gone]
            for name, placed, load_in in to_write:
                failed_before, self._failed = self._failed, False
                raw_gw = raw_gateways[name]
                self._guard(f"gateway {name}", self._write_gateway, gateways[name], raw_gw, placed, now,
                            bool(by_gateway.get(name)))
                if not self._failed:
                    delta = {n: placed.load.get(n, 0) - load_in.get(n, 0) for n in set(placed.load) | set(load_in)}
                    written = self.overlays[k8s.EGRESS_GATEWAYS.plural].get(name) or raw_gw
                    version = str((written.get("metadata") or {}).get("resourceVersion", ""))
                    self._placements[name] = (version, tuple(by_gateway.get(name, ())), node_views, load_in, placed, delta)
                self._failed |= failed_before
            self.metrics.policies_ready.labels("true").set(ready)
            self.metrics.policies_ready.labels("false").set(len(all_policies) - ready)
            self._guard("cluster info", self._cluster_info, raw_nodes)

        pods = self.watchers.pods_snapshot()
        self.slices.begin_pass()
        for rt, p, _ in all_policies:
            key = (rt.plural, p.metadata.key)
            if all_slices or key in policies or (p.NAMESPACED and p.metadata.namespace in namespaces) or \
                    (not p.NAMESPACED and namespaces):
                self._guard(f"slices of {p.metadata.key}", self.slices.sync, rt, p, pods, namespaces_labels)
        if synced and (everything or all_slices):
            live = {(rt.plural, p.metadata.key) for rt, p, _ in all_policies}
            self._guard("slice pruning", self.slices.prune, live)
        self.slices.end_pass()
        return time.time() + RETRY_SECONDS if self._failed else None  # come back for what failed

    def _guard(self, what: str, write: Callable[..., None], *args: Any) -> None:
        """One object's failure (a webhook denial, a flaky connection) must not stop the others."""
        try:
            write(*args)
        except k8s.APIError as exc:
            self._failed = True
            log.warning("write failed; retrying soon", extra={"object": what, "error": str(exc)})

    # --- tunnels -------------------------------------------------------------------------------

    def _tunnels(self, node_names: list[str]) -> None:
        existing: dict[str, dict[str, Any]] = {str((t.get("metadata") or {}).get("name", "")): t for t in self._objects(k8s.EGRESS_TUNNELS)}
        parsed = {name: t.status for name, raw in existing.items()
                  if isinstance(t := self._parse(k8s.EGRESS_TUNNELS, EgressTunnel, raw), EgressTunnel)}
        plan = plan_tunnels(node_names, parsed, self.config.tunnel_ipv4_subnet, self.config.tunnel_ipv6_subnet)
        for name, addr in plan.items():
            raw = existing.get(name)
            if raw is None:
                try:
                    raw = self.client.create(k8s.EGRESS_TUNNELS, {
                        "apiVersion": k8s.EGRESS_TUNNELS.api_version, "kind": "EgressTunnel",
                        "metadata": {"name": name}, "spec": {}})
                except k8s.Conflict:
                    raw = self.client.get(k8s.EGRESS_TUNNELS, name)
            current = raw.get("status") or {}
            desired = {**current, "tunnel": {**(current.get("tunnel") or {}), **{k: v for k, v in (
                ("ipv4", addr.ipv4), ("ipv6", addr.ipv6), ("mac", addr.mac)) if v}}, "mark": addr.mark}
            desired["phase"] = current.get("phase") or "Init"
            patch = merge_patch(current, desired)
            if patch:
                self.overlays[k8s.EGRESS_TUNNELS.plural].wrote(
                    self.client.patch_status(k8s.EGRESS_TUNNELS, name, {"status": patch}))
        for name in set(existing) - set(plan):
            try:
                self.client.delete(k8s.EGRESS_TUNNELS, name)
            except k8s.NotFound:
                pass
            self.overlays[k8s.EGRESS_TUNNELS.plural].deleted(name)

    # --- gateways and policies -----------------------------------------------------------------

    def _write_gateway(self, gw: EgressGateway, raw: dict[str, Any], placed: Placement, now: str, referenced: bool) -> None:
        name = gw.metadata.name
        overlay = self.overlays[k8s.EGRESS_GATEWAYS.plural]
        meta_patch: dict[str, Any] = {}
        if placed.rr_last and gw.metadata.annotations.get(ANNOTATION_RR_LAST) != placed.rr_last:
            meta_patch["annotations"] = {ANNOTATION_RR_LAST: placed.rr_last}
        finalizers = list(gw.metadata.finalizers)
        if gw.metadata.deletion_timestamp:
            if not referenced and FINALIZER_GATEWAY in finalizers:
                finalizers.remove(FINALIZER_GATEWAY)
                meta_patch["finalizers"] = finalizers
            elif referenced and gw.metadata.uid not in self._announced_waits:
                self._announced_waits.add(gw.metadata.uid)
                self.events.emit(raw, "WaitingForPolicies", f"EgressGateway {name} is deleted once no policy uses it")
        elif FINALIZER_GATEWAY not in finalizers:
            meta_patch["finalizers"] = [*finalizers, FINALIZER_GATEWAY]
        if meta_patch:
            # A merge patch replaces the finalizers list wholesale; the resourceVersion precondition
            # turns a concurrent finalizer change by someone else into a 409 and a retry next pass.
            meta_patch["resourceVersion"] = gw.metadata.resource_version
            try:
                raw = self.client.patch(k8s.EGRESS_GATEWAYS, name, {"metadata": meta_patch})
                overlay.wrote(raw)
            except k8s.Conflict:
                return  # fresh state arrives through the informer; the next pass redoes this
            except k8s.NotFound:
                return
        desired = gateway_status(gw, placed, now).to_dict()
        patch = merge_patch(raw.get("status") or {}, desired)
        if patch:
            try:
                overlay.wrote(self.client.patch_status(k8s.EGRESS_GATEWAYS, name, {"status": patch}))
            except k8s.NotFound:
                return
        for move in placed.moves:
            self.metrics.moves.labels(move.why).inc()
            eip = " ".join(ip for ip in (move.ipv4, move.ipv6) if ip) or "node-IP policies"
            text = f"EIP {eip} moved from node {move.source} ({move.why}) to node {move.target}" if move.target else \
                f"EIP {eip} left node {move.source} ({move.why}); no eligible node is left"
            self.events.emit(raw, "EIPMoved" if move.target else "EIPUnassigned", text, "Normal" if move.target else "Warning")

    def _write_policy(self, rt: k8s.ResourceType, p: EgressPolicy, raw: dict[str, Any], assignment: Assignment, now: str) -> None:
        key = (rt.plural, p.metadata.key)
        seen = self._status_checked.get(key)
        if seen is not None and seen[0] is raw and seen[1] == assignment:
            return  # same object, same decision as when it was last found up to date
        desired = policy_status(assignment, p.status, p.metadata.generation, now)
        patch = merge_patch(raw.get("status") or {}, desired.to_dict())
        if not patch:
            self._status_checked[key] = (raw, assignment)
            return
        try:
            written = self.client.patch_status(rt, p.metadata.name, {"status": patch}, namespace=p.metadata.namespace or None)
        except k8s.NotFound:
            return
        self.overlays[rt.plural].wrote(written)
        self._policy_events(raw, p.status, desired)

    def _policy_events(self, raw: dict[str, Any], old: PolicyStatus, new: PolicyStatus) -> None:
        eip = " ".join(ip for ip in (new.eip_ipv4, new.eip_ipv6) if ip) or "node IP"
        new_ready = next((c for c in new.conditions if c.type == "Ready"), None)
        if new.node and not old.node:
            self.metrics.allocations.inc()
            self.events.emit(raw, "EIPAssigned", f"EIP {eip} on node {new.node}")
        elif new.node and old.node and new.node != old.node:
            self.events.emit(raw, "EIPMoved", f"EIP {eip} moved from node {old.node} to node {new.node}")
        elif not new.node and new_ready is not None and new_ready.status == "False":
            old_ready = next((c for c in old.conditions if c.type == "Ready"), None)
            if old_ready is None or old_ready.reason != new_ready.reason:
                self.events.emit(raw, new_ready.reason, new_ready.message, "Warning")

    # --- cluster info --------------------------------------------------------------------------

    def _cluster_info(self, raw_nodes: list[dict[str, Any]]) -> None:
        overlay = self.overlays[k8s.EGRESS_CLUSTER_INFOS.plural]
        raw = overlay.get(CLUSTER_INFO_NAME)
        if raw is None:
            if not self.watchers.synced():
                return
            try:
                raw = self.client.create(k8s.EGRESS_CLUSTER_INFOS, EgressClusterInfo(ObjectMeta(name=CLUSTER_INFO_NAME)).to_dict())
            except k8s.Conflict:
                raw = self.client.get(k8s.EGRESS_CLUSTER_INFOS, CLUSTER_INFO_NAME)
            overlay.wrote(raw)
        info = self._parse(k8s.EGRESS_CLUSTER_INFOS, EgressClusterInfo, raw)
        if not isinstance(info, EgressClusterInfo):
            return
        cidr_informer = self.watchers.get(k8s.SERVICE_CIDRS)
        calico = self.watchers.get(k8s.CALICO_IPPOOLS)
        kubernetes_svc: dict[str, Any] | None = None
        if cidr_informer is None and not self.config.service_cidrs:
            kubernetes_svc = self._kubernetes_service()
        cluster_ip = service_cidrs(cidr_informer.list() if cidr_informer else None, self.config.service_cidrs, kubernetes_svc)
        status = cluster_info_status(info.spec, raw_nodes, cluster_ip, calico.list() if calico else None)
        patch = merge_patch(raw.get("status") or {}, status.to_dict())
        if patch:
            overlay.wrote(self.client.patch_status(k8s.EGRESS_CLUSTER_INFOS, CLUSTER_INFO_NAME, {"status": patch}))

    def _kubernetes_service(self) -> dict[str, Any] | None:
        try:
            return self.client.get(k8s.SERVICES, "kubernetes", "default")
        except k8s.APIError:
            return None

