"""One reconcile pass: read the caches, compute the desired state (pure modules), write the
differences. Runs on the leader's single worker thread only.

Order inside a pass: tunnels, placement of every gateway, the finalizer on gateways that lack it,
policy statuses, gateway statuses (finalizer removal, rr cursor), the cluster info, endpoint
slices; Events go out from a background thread. Policy status before the gateway status because
that is what users and agents wait for; the finalizer before both, as no policy may read Assigned
while its gateway can still vanish at once.

Objects are read through typed stores (egress_cni/store.py) over the read-your-writes overlays.
An object that reached the API without the webhook and does not parse never stops a pass: it is
skipped and reported, a gateway or policy with a `Ready=False` condition of reason `Invalid` that
names the field, every kind with a Warning Event (once per object and problem) and a log line.
A policy whose gateway is invalid gets that condition too, not an EIP from a broken pool. A
malformed *status* is ours to repair: the object is served as if its status were empty, and the
next status write replaces the bad value (EgressTunnels alike). Any other failure of one object is
contained to that object and retried with exponential backoff.

Every status write carries the resourceVersion it was computed from (a precondition): a write that
raced another writer gets 409 and is redone from fresh state. With `may_write` (the leader's own
verdict that its leadership is current) checked before each write, a leader that was paused past
its lease and wakes up mid-pass writes nothing: its successor's writes changed the versions, and
its own check fails first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from egress_cni import k8s
from egress_cni.api import semantics
from egress_cni.api.errors import FieldError
from egress_cni.api.meta import Condition, ObjectMeta
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
from egress_cni.api.net import IP, AddressError, parse_ip
from egress_cni.backoff import Backoff
from egress_cni.controller.cache import Overlay
from egress_cni.controller.clusterinfo import cluster_info_status, service_cidrs
from egress_cni.controller.config import Config
from egress_cni.controller.events import EventSink
from egress_cni.controller.metrics import Metrics
from egress_cni.controller.placement import (
    ANNOTATION_RR_LAST,
    NAMESPACE_NOT_ALLOWED,
    Assignment,
    NodeView,
    Placement,
    PolicyView,
    place_gateway,
)
from egress_cni.controller.slice_writer import SliceWriter
from egress_cni.controller.status import (
    condition,
    gateway_not_found,
    gateway_status,
    merge_patch,
    policy_status,
)
from egress_cni.controller.tunnels import HEARTBEAT_REFRESH_SECONDS, plan_tunnels, tunnel_phase
from egress_cni.controller.watchers import Watchers
from egress_cni.store import Invalid, Store, invalid_of

log = logging.getLogger(__name__)

INVALID = "Invalid"  # Ready=False reason (and Event reason) of an object that does not parse
FAILED = "ReconcileFailed"  # Ready=False reason of an object whose reconcile raised unexpectedly
RETRY_BASE_SECONDS, RETRY_CAP_SECONDS = 0.25, 10.0  # failed writes: exponential backoff with jitter

M = TypeVar("M", bound=Resource)


@dataclass(frozen=True)
class Parsed(Generic[M]):
    """A store item: the model, the exact object it was parsed from (for patches and Events), and
    the error of a malformed status that was left out of `model` (the next write replaces it)."""

    model: M
    raw: dict[str, Any]
    status_error: FieldError | None = None


def parser(cls: type[M]) -> Callable[[Mapping[str, Any]], Parsed[M]]:
    def parse(raw: Mapping[str, Any]) -> Parsed[M]:
        obj = raw if isinstance(raw, dict) else dict(raw)
        try:
            return Parsed(cls.parse(obj), obj)  # type: ignore[attr-defined]
        except FieldError as exc:
            if not (exc.path == "status" or exc.path.startswith(("status.", "status["))):
                raise
            try:
                return Parsed(cls.parse({k: v for k, v in obj.items() if k != "status"}), obj, exc)  # type: ignore[attr-defined]
            except FieldError:
                raise exc from None  # the spec is malformed too: report the first problem found
    return parse


class _OverlayListing:
    """What a Store reads: the overlay's objects (our own writes included), the informer's `synced`."""

    def __init__(self, overlay: Overlay, informer: k8s.Informer) -> None:
        self._overlay, self._informer = overlay, informer

    @property
    def synced(self) -> bool:
        return self._informer.synced

    def list(self) -> list[dict[str, Any]]:
        return self._overlay.list()

    def get(self, key: str) -> dict[str, Any] | None:
        return self._overlay.get(key)


@dataclass(frozen=True)
class Problem:
    """Why an object is not served: INVALID (with the field) or FAILED."""

    reason: str
    message: str
    key: str
    raw: dict[str, Any]

POLICY_KINDS: tuple[tuple[k8s.ResourceType, type[EgressPolicy]], ...] = (
    (k8s.EGRESS_POLICIES, EgressPolicy), (k8s.EGRESS_CLUSTER_POLICIES, EgressClusterPolicy))


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_view(node: Mapping[str, Any], agent_alive: bool) -> NodeView:
    """Ready=Unknown is the node lifecycle controller's word that the kubelet stopped posting, which
    every node gets at once when the API server comes back from a stall longer than its grace; a
    fresh agent Lease is direct evidence that the node works, so it decides. Ready=False is the
    kubelet's own verdict and always counts."""
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    word = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    ready = word == "True" or (word == "Unknown" and agent_alive)
    return NodeView(str(meta.get("name", "")), dict(meta.get("labels") or {}), ready, bool(spec.get("unschedulable")), agent_alive)


class Reconciler:
    def __init__(self, client: k8s.Client, config: Config, watchers: Watchers, metrics: Metrics, events: EventSink,
                 may_write: Callable[[], bool] = lambda: True) -> None:
        self.client, self.config, self.watchers, self.metrics, self.events = client, config, watchers, metrics, events
        self.may_write = may_write
        self.refused_writes = 0  # writes skipped because leadership was no longer current
        self.overlays = {plural: Overlay(inf) for plural, inf in watchers.informers.items()}
        self.slices = SliceWriter(client, config.max_endpoints_per_slice, self.overlays)
        self.stores: dict[str, Store[Parsed[Any]]] = {
            rt.plural: Store(_OverlayListing(self.overlays[rt.plural], watchers.informers[rt.plural]), parser(cls))
            for rt, cls in ((k8s.EGRESS_GATEWAYS, EgressGateway), *POLICY_KINDS, (k8s.EGRESS_TUNNELS, EgressTunnel),
                            (k8s.EGRESS_CLUSTER_INFOS, EgressClusterInfo))
            if rt.plural in self.overlays}
        self.backoff = Backoff(RETRY_BASE_SECONDS, RETRY_CAP_SECONDS)
        self._failed = False
        # gateway -> (resourceVersion, policy views, node views, load before it, ...) of its last written decision
        self._placements: dict[str, tuple[str, tuple[PolicyView, ...], tuple[Any, ...], dict[str, int], Placement,
                                          dict[str, int]]] = {}  # ..., placement, what it added to the load
        # (plural, key) -> (the object, the assignment) last found needing no status write
        self._status_checked: dict[tuple[str, str], tuple[dict[str, Any], Assignment]] = {}
        self.alive: dict[str, bool] = {}  # agent liveness the last pass placed EIPs by
        self._announced_waits: set[str] = set()  # gateway uids told they wait for their policies
        # (plural, key) -> (uid, problem) last reported by an Event; a steady problem is reported once
        self._reported: dict[tuple[str, str], tuple[str, str]] = {}
        self._reporting: set[tuple[str, str]] = set()  # what this pass found wrong

    # --- reading -------------------------------------------------------------------------------

    def _objects(self, rt: k8s.ResourceType) -> list[dict[str, Any]]:
        overlay = self.overlays.get(rt.plural)
        return overlay.list() if overlay is not None else []

    def _items(self, rt: k8s.ResourceType) -> tuple[Parsed[Any], ...]:
        """Valid objects of a kind; the malformed ones are in `_invalid`. A malformed status is
        reported here (and repaired by the write that follows)."""
        store = self.stores.get(rt.plural)
        if store is None:
            return ()
        items = store.items()
        for item in items:
            if item.status_error is not None:
                self._report(rt, k8s.object_key(item.raw), item.raw, item.status_error,
                             "the controller rewrites the status")
        return items

    def _invalid(self, rt: k8s.ResourceType) -> list[tuple[Invalid, dict[str, Any]]]:
        """Objects of a kind that do not parse, with their raw object (for the Event), reported."""
        store = self.stores.get(rt.plural)
        out: list[tuple[Invalid, dict[str, Any]]] = []
        for bad in store.invalid() if store is not None else ():
            raw = self.overlays[rt.plural].get(bad.key)
            if raw is not None:
                self._report(rt, bad.key, raw, bad.error, "skipped until it is fixed")
                out.append((bad, raw))
        return out

    def _report(self, rt: k8s.ResourceType, key: str, raw: dict[str, Any], error: FieldError | str, what_now: str) -> None:
        """A Warning Event (reason Invalid) and a log line, once per object and problem."""
        ident = (rt.plural, key)
        self._reporting.add(ident)
        uid = str((raw.get("metadata") or {}).get("uid", ""))
        text = str(error)
        if self._reported.get(ident) == (uid, text):
            return
        self._reported[ident] = (uid, text)
        log.warning("invalid object", extra={"kind": rt.kind, "key": key, "error": text,
                                             **({"field": error.path} if isinstance(error, FieldError) else {})})
        self.events.emit(raw, INVALID, f"{rt.kind} {key} is invalid: {text}; {what_now}", "Warning")

    def _forget_reports(self, plurals: set[str]) -> None:
        """Drop reports of objects of these kinds that are fine (or gone) now: a new problem is new."""
        for ident in [i for i in self._reported if i[0] in plurals and i not in self._reporting]:
            del self._reported[ident]

    # --- the pass ------------------------------------------------------------------------------

    def reconcile(self, everything: bool, all_slices: bool, policies: set[tuple[str, str]], namespaces: set[str]) -> float | None:
        """One pass; returns when to look again without an event: after a failed write, with
        exponential backoff and jitter, else None (agent Lease expiry is watched by the worker)."""
        self._failed = False
        self._reporting = set()
        synced = self.watchers.synced()
        now = now_rfc3339()
        alive, _ = self.watchers.agent_liveness()
        if everything:
            self.alive = alive
        raw_nodes = self._objects(k8s.NODES)
        nodes = [node_view(n, alive.get(str((n.get("metadata") or {}).get("name", "")), False)) for n in raw_nodes]
        gateways: dict[str, EgressGateway] = {}
        raw_gateways: dict[str, dict[str, Any]] = {}
        for item in self._items(k8s.EGRESS_GATEWAYS):
            gateways[item.model.metadata.name], raw_gateways[item.model.metadata.name] = item.model, item.raw
        namespaces_labels = {str((n.get("metadata") or {}).get("name", "")): dict((n.get("metadata") or {}).get("labels") or {})
                             for n in self._objects(k8s.NAMESPACES)}
        all_policies: list[tuple[k8s.ResourceType, EgressPolicy, dict[str, Any]]] = []
        invalid_policies: list[tuple[k8s.ResourceType, Invalid, dict[str, Any]]] = []
        for rt, _ in POLICY_KINDS:
            all_policies.extend((rt, item.model, item.raw) for item in self._items(rt))
            invalid_policies.extend((rt, bad, raw) for bad, raw in self._invalid(rt))

        if everything:
            if synced:
                self._guard("tunnels", self._tunnels, nodes, alive)
            # gateway name -> why it cannot be placed (malformed, or placement failed on it)
            broken: dict[str, Problem] = {
                bad.name: Problem(INVALID, str(bad.error), bad.key, raw) for bad, raw in self._invalid(k8s.EGRESS_GATEWAYS)}
            by_gateway: dict[str, list[PolicyView]] = {}
            target: dict[PolicyRef, str] = {}
            refused: dict[PolicyRef, Assignment] = {}  # policies whose gateway does not admit their namespace
            for _, p, _ in all_policies:
                if p.metadata.deletion_timestamp:
                    continue
                ns_labels = namespaces_labels.get(p.metadata.namespace) if p.NAMESPACED else None
                name = semantics.effective_gateway(p, ns_labels, gateways.values())[0]
                target[p.ref] = name
                refusal = semantics.gateway_refusal(gateways[name], p, ns_labels) if name in gateways else ""
                if refusal:
                    refused[p.ref] = Assignment(reason=NAMESPACE_NOT_ALLOWED, message=f"{refusal}; no EIP is allocated")
                    continue
                by_gateway.setdefault(name, []).append(PolicyView(
                    p.ref, p.spec.eip, str(p.metadata.extra.get("creationTimestamp", "")), p.status.eip_ipv4, p.status.eip_ipv6))
            assignments: dict[PolicyRef, Assignment] = {}
            load: Mapping[str, int] = {}
            reports = dict(self.watchers.agent_reports)
            reported = _reported_eips(reports)
            node_views = (*nodes, tuple(sorted(reports.items())))  # the memo: nodes and what agents report
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
                    try:
                        placed = place_gateway(gateways[name], views, nodes, load, reported)
                    except FieldError as exc:  # a pool the model let through (e.g. a reversed range)
                        bad = invalid_of(k8s.object_key(raw_gw), raw_gw, exc)
                        self._report(k8s.EGRESS_GATEWAYS, bad.key, raw_gw, exc, "skipped until it is fixed")
                        broken[name] = Problem(INVALID, str(exc), bad.key, raw_gw)
                        continue
                    except Exception as exc:  # a bug must cost this gateway, not every other one
                        log.exception("placement failed", extra={"gateway": name})
                        self._failed = True
                        broken[name] = Problem(FAILED, f"placement failed: {exc!r}", name, raw_gw)
                        continue
                    to_write.append((name, placed, dict(load)))
                    load = placed.load
                assignments.update(placed.assignments)
            for name in broken:
                gateways.pop(name, None)
            for vanished in set(self._placements) - set(gateways):
                del self._placements[vanished]
            # The finalizer before any policy is told it is served: a gateway deleted the moment
            # its policy reads Assigned must wait for that policy, not vanish at once.
            for name in sorted(n for n, gw in gateways.items() if not _protected(gw)):
                self._guard(f"gateway {name} finalizer", self._protect_gateway, name, gateways, raw_gateways)
            unprotected = {name for name, gw in gateways.items() if not _protected(gw)}
            # Policy statuses next: they are what users and the benchmark wait for. Should the
            # process die before the gateway status below, the policies' status.eip reserves
            # their addresses for the next leader (placement.PolicyView.reserved_*).
            ready = 0
            for rt, p, raw in all_policies:
                if p.metadata.deletion_timestamp:
                    continue
                gw_name = target.get(p.ref, "")
                problem = broken.get(gw_name)
                if gw_name in unprotected:
                    self._failed = True  # retried once the gateway carries its finalizer
                    continue
                if problem is not None:
                    assignment = Assignment(reason=problem.reason, message=(
                        f"EgressGateway {gw_name} is invalid: {problem.message}; fix the gateway"
                        if problem.reason == INVALID else f"EgressGateway {gw_name}: {problem.message}"))
                else:
                    assignment = refused.get(p.ref) or assignments.get(p.ref) or gateway_not_found(gw_name)
                ready += assignment.ready
                if self._guard(f"policy {p.metadata.key}", self._write_policy, rt, p, raw, assignment, now) is not None:
                    self._guard(f"policy {p.metadata.key} condition", self._write_problem, rt, Problem(
                        FAILED, "the controller failed on this policy; see its log", p.metadata.key, raw), now)
            for rt, bad, raw in invalid_policies:
                self._guard(f"policy {bad.key}", self._write_problem, rt,
                            Problem(INVALID, f"{bad.error}; the policy is skipped until it is fixed", bad.key, raw), now)
            live_keys = {(rt.plural, p.metadata.key) for rt, p, _ in all_policies}
            for gone in set(self._status_checked) - live_keys:
                del self._status_checked[gone]
            for name, placed, load_in in to_write:
                failed_before, self._failed = self._failed, False
                raw_gw = raw_gateways[name]
                if self._guard(f"gateway {name}", self._write_gateway, gateways[name], raw_gw, placed, now,
                               bool(by_gateway.get(name))) is not None:
                    self._guard(f"gateway {name} condition", self._write_problem, k8s.EGRESS_GATEWAYS, Problem(
                        FAILED, "the controller failed on this gateway; see its log", name, raw_gw), now)
                if not self._failed:
                    delta = {n: placed.load.get(n, 0) - load_in.get(n, 0) for n in set(placed.load) | set(load_in)}
                    written = self.overlays[k8s.EGRESS_GATEWAYS.plural].get(name) or raw_gw
                    version = str((written.get("metadata") or {}).get("resourceVersion", ""))
                    self._placements[name] = (version, tuple(by_gateway.get(name, ())), node_views, load_in, placed, delta)
                self._failed |= failed_before
            for name, problem in sorted(broken.items()):
                text = f"{problem.message}; the gateway is skipped until it is fixed" if problem.reason == INVALID else problem.message
                self._guard(f"gateway {name}", self._write_problem, k8s.EGRESS_GATEWAYS,
                            Problem(problem.reason, text, problem.key, problem.raw), now, bool(by_gateway.get(name)))
            self.metrics.policies_ready.labels("true").set(ready)
            self.metrics.policies_ready.labels("false").set(len(all_policies) + len(invalid_policies) - ready)
            self._guard("cluster info", self._cluster_info, raw_nodes)
            self._forget_reports({k8s.EGRESS_GATEWAYS.plural, k8s.EGRESS_CLUSTER_INFOS.plural,
                                  *(rt.plural for rt, _ in POLICY_KINDS), *([k8s.EGRESS_TUNNELS.plural] if synced else [])})

        pods = self.watchers.pods_snapshot()
        self.slices.begin_pass()
        for rt, p, _ in all_policies:
            key = (rt.plural, p.metadata.key)
            if all_slices or key in policies or (p.NAMESPACED and p.metadata.namespace in namespaces) or \
                    (not p.NAMESPACED and namespaces):
                self._guard(f"slices of {p.metadata.key}", self.slices.sync, rt, p, pods, namespaces_labels)
        if synced and (everything or all_slices):
            # An invalid policy keeps the slices it has (its pods are not re-listed until it is fixed).
            live = {(rt.plural, p.metadata.key) for rt, p, _ in all_policies} | \
                {(rt.plural, bad.key) for rt, bad, _ in invalid_policies}
            self._guard("slice pruning", self.slices.prune, live)
        self.slices.end_pass()
        if self._failed:
            return time.time() + self.backoff.next()  # come back for what failed, later each time
        if everything or all_slices:
            self.backoff.reset()
        return None

    def _guard(self, what: str, write: Callable[..., None], *args: Any) -> Exception | None:
        """One object's failure (a webhook denial, a flaky connection, a bug) must not stop the
        others: logged, retried with backoff; returns an unexpected exception for the caller to
        report on the object. Nothing is written once leadership is no longer current."""
        if not self.may_write():
            self.refused_writes += 1
            self._failed = True
            log.warning("not the current leader: write refused", extra={"object": what})
            return None
        try:
            write(*args)
        except k8s.Conflict as exc:
            self._failed = True
            log.info("write raced another writer (resourceVersion precondition); redone from fresh state",
                     extra={"object": what, "error": str(exc)})
        except k8s.APIError as exc:
            self._failed = True
            log.warning("write failed; retrying soon", extra={"object": what, "error": str(exc)})
        except Exception as exc:
            self._failed = True
            self.metrics.reconcile_errors.inc()
            log.exception("reconcile of one object failed; the others go on", extra={"object": what})
            return exc
        return None

    # --- objects that are not served -----------------------------------------------------------

    def _write_problem(self, rt: k8s.ResourceType, problem: Problem, now: str, referenced: bool = False) -> None:
        """Ready=False with the problem on a gateway or policy we cannot serve. A policy loses its
        EIP and node (nothing serves it); a gateway keeps the rest of its status, so its EIPs
        return to the same nodes once it is fixed. A deleted gateway nobody uses loses its finalizer."""
        raw = problem.raw
        meta = raw.get("metadata") or {}
        name, namespace = str(meta.get("name", "")), str(meta.get("namespace", "")) or None
        status, gen = raw.get("status"), meta.get("generation")
        current: dict[str, Any] = status if isinstance(status, dict) else {}
        generation = gen if isinstance(gen, int) else 0
        listed = current.get("conditions")
        previous = []
        for i, c in enumerate(listed if isinstance(listed, list) else []):
            try:
                previous.append(Condition.parse(c, f"status.conditions[{i}]"))
            except FieldError:
                continue
        ready = condition(previous, "Ready", False, problem.reason, problem.message, generation, now)
        if rt is k8s.EGRESS_GATEWAYS:
            finalizers = meta.get("finalizers") or []
            if meta.get("deletionTimestamp") and not referenced and FINALIZER_GATEWAY in finalizers:
                try:
                    self.overlays[rt.plural].wrote(self.client.patch(rt, name, {"metadata": {
                        "finalizers": [f for f in finalizers if f != FINALIZER_GATEWAY],
                        "resourceVersion": meta.get("resourceVersion")}}))
                except (k8s.Conflict, k8s.NotFound):
                    pass
                return
            desired = {**current, "conditions": [ready.to_dict()], "observedGeneration": generation or None}
            desired = {k: v for k, v in desired.items() if v is not None}
        else:
            desired = PolicyStatus(conditions=(ready,), observed_generation=generation).to_dict()
        patch = merge_patch(current, desired)
        if not patch:
            return
        try:
            written = self.client.patch_status(rt, name, _versioned(patch, raw), namespace=namespace)
        except k8s.NotFound:
            return
        self.overlays[rt.plural].wrote(written)

    # --- tunnels -------------------------------------------------------------------------------

    def _tunnels(self, nodes: list[NodeView], alive: Mapping[str, bool]) -> None:
        node_names = [n.name for n in nodes]
        by_name = {n.name: n for n in nodes}
        # An invalid EgressTunnel (reported by _invalid) counts as one without values: the plan
        # gives its node fresh ones and the patch below overwrites what was malformed.
        existing: dict[str, dict[str, Any]] = {str((t.get("metadata") or {}).get("name", "")): t for t in self._objects(k8s.EGRESS_TUNNELS)}
        parsed = {item.model.metadata.name: item.model.status for item in self._items(k8s.EGRESS_TUNNELS)}
        self._invalid(k8s.EGRESS_TUNNELS)
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
            view = by_name[name]
            reported = bool((current.get("tunnel") or {}).get("parent")) if isinstance(current.get("tunnel"), dict) else False
            # alive has an entry for every agent Lease seen: only gateway agents hold one
            desired["phase"] = tunnel_phase(str(current.get("phase") or ""), reported, view.ready, name in alive,
                                            alive.get(name, False))
            renewed = self.watchers.agent_renewed.get(name, "")
            if renewed and (desired["phase"] != current.get("phase") or _older(current.get("lastHeartbeatTime"), renewed)):
                desired["lastHeartbeatTime"] = renewed
            patch = merge_patch(current, desired)
            if patch:
                self.overlays[k8s.EGRESS_TUNNELS.plural].wrote(
                    self.client.patch_status(k8s.EGRESS_TUNNELS, name, _versioned(patch, raw)))
        for name in set(existing) - set(plan):
            try:
                self.client.delete(k8s.EGRESS_TUNNELS, name)
            except k8s.NotFound:
                pass
            self.overlays[k8s.EGRESS_TUNNELS.plural].deleted(name)

    # --- gateways and policies -----------------------------------------------------------------

    def _protect_gateway(self, name: str, gateways: dict[str, EgressGateway], raw_gateways: dict[str, dict[str, Any]]) -> None:
        """Add FINALIZER_GATEWAY to a live gateway that lacks it. The written object replaces the
        pass's copy, so the writes that follow carry its resourceVersion."""
        gw = gateways[name]
        try:
            written = self.client.patch(k8s.EGRESS_GATEWAYS, name, {"metadata": {
                "finalizers": [*gw.metadata.finalizers, FINALIZER_GATEWAY], "resourceVersion": gw.metadata.resource_version}})
        except k8s.NotFound:
            self._failed = True  # fresh state arrives through the informer; the next pass redoes this
            return
        self.overlays[k8s.EGRESS_GATEWAYS.plural].wrote(written)
        item = self.stores[k8s.EGRESS_GATEWAYS.plural].get(name)
        if item is not None:
            gateways[name], raw_gateways[name] = item.model, item.raw

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
                overlay.wrote(self.client.patch_status(k8s.EGRESS_GATEWAYS, name, _versioned(patch, raw)))
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
            written = self.client.patch_status(rt, p.metadata.name, _versioned(patch, raw), namespace=p.metadata.namespace or None)
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
        item = self.stores[k8s.EGRESS_CLUSTER_INFOS.plural].get(CLUSTER_INFO_NAME)
        if item is None:  # a malformed spec: reported, left alone (its status follows from the spec)
            self._invalid(k8s.EGRESS_CLUSTER_INFOS)
            return
        if item.status_error is not None:
            self._report(k8s.EGRESS_CLUSTER_INFOS, CLUSTER_INFO_NAME, item.raw, item.status_error,
                         "the controller rewrites the status")
        info, raw = item.model, item.raw
        cidr_informer = self.watchers.get(k8s.SERVICE_CIDRS)
        calico = self.watchers.get(k8s.CALICO_IPPOOLS)
        kubernetes_svc: dict[str, Any] | None = None
        if cidr_informer is None and not self.config.service_cidrs:
            kubernetes_svc = self._kubernetes_service()
        cluster_ip = service_cidrs(cidr_informer.list() if cidr_informer else None, self.config.service_cidrs, kubernetes_svc)
        status = cluster_info_status(info.spec, raw_nodes, cluster_ip, calico.list() if calico else None)
        patch = merge_patch(raw.get("status") or {}, status.to_dict())
        if patch:
            overlay.wrote(self.client.patch_status(k8s.EGRESS_CLUSTER_INFOS, CLUSTER_INFO_NAME, _versioned(patch, raw)))

    def _kubernetes_service(self) -> dict[str, Any] | None:
        try:
            return self.client.get(k8s.SERVICES, "kubernetes", "default")
        except k8s.APIError:
            return None



def _protected(gw: EgressGateway) -> bool:
    """Whether a gateway's policies may be told they are served: it carries FINALIZER_GATEWAY (or
    is being deleted already, when that finalizer is what keeps it for them)."""
    return bool(gw.metadata.deletion_timestamp) or FINALIZER_GATEWAY in gw.metadata.finalizers


def _versioned(status_patch: dict[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    """A status merge patch that applies only to the version it was computed from (409 otherwise)."""
    version = (raw.get("metadata") or {}).get("resourceVersion")
    return {"status": status_patch, **({"metadata": {"resourceVersion": version}} if version else {})}


def _older(recorded: Any, renewed: str) -> bool:
    """Whether the recorded lastHeartbeatTime lags the Lease's renewTime by more than the refresh period."""
    was, now = k8s.parse_time(str(recorded or "")), k8s.parse_time(renewed)
    return was is None or (now is not None and now - was >= HEARTBEAT_REFRESH_SECONDS)


def _reported_eips(reports: Mapping[str, tuple[str, ...]]) -> dict[IP, frozenset[str]]:
    """EIP -> the nodes whose fresh agent Lease reports holding it (unparsable entries are left out)."""
    out: dict[IP, set[str]] = {}
    for node, eips in reports.items():
        for text in eips:
            try:
                out.setdefault(parse_ip(text), set()).add(node)
            except (AddressError, ValueError):
                continue
    return {ip: frozenset(nodes) for ip, nodes in out.items()}
