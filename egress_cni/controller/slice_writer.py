"""Writes a policy's EgressEndpointSlices / EgressClusterEndpointSlices (the I/O half of slices.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from egress_cni import k8s
from egress_cni.api import API_VERSION
from egress_cni.api.errors import FieldError
from egress_cni.api.model import LABEL_POLICY_NAME, EgressEndpointSlice, EgressPolicy, Endpoint
from egress_cni.api.names import policy_label_value, slice_generate_name, slice_policy
from egress_cni.controller.cache import Overlay
from egress_cni.controller.slices import plan_slices, selected_pods
from egress_cni.controller.watchers import PodSnapshot

log = logging.getLogger(__name__)

SLICE_OF = {k8s.EGRESS_POLICIES.plural: k8s.EGRESS_ENDPOINT_SLICES,
            k8s.EGRESS_CLUSTER_POLICIES.plural: k8s.EGRESS_CLUSTER_ENDPOINT_SLICES}
POLICY_KIND = {k8s.EGRESS_POLICIES.plural: k8s.EGRESS_POLICIES.kind,
               k8s.EGRESS_CLUSTER_POLICIES.plural: k8s.EGRESS_CLUSTER_POLICIES.kind}


def _endpoints(raw: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    try:
        return EgressEndpointSlice.parse(raw).endpoints
    except FieldError:
        return ()


class SliceWriter:
    def __init__(self, client: k8s.Client, max_per_slice: int, overlays: Mapping[str, Overlay]) -> None:
        self.client, self.max_per_slice, self.overlays = client, max_per_slice, overlays
        self._index: dict[tuple[str, str], dict[str, dict[str, Any]]] | None = None
        # (policy plural, key) -> the inputs of its last completed sync: unchanged inputs, no work
        self._done: dict[tuple[str, str], tuple[Any, ...]] = {}

    def begin_pass(self) -> None:
        """Index existing slices by owner once per pass (policy plural, policy key) -> name -> slice."""
        index: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for policy_plural, slice_rt in SLICE_OF.items():
            for raw in self.overlays[slice_rt.plural].list():
                meta = raw.get("metadata") or {}
                owner = slice_policy(meta.get("ownerReferences") or (), meta.get("labels") or {}, POLICY_KIND[policy_plural])
                key = f"{meta['namespace']}/{owner}" if meta.get("namespace") else owner
                index.setdefault((policy_plural, key), {})[str(meta.get("name", ""))] = raw
        self._index = index

    def sync(self, rt: k8s.ResourceType, policy: EgressPolicy, snapshot: PodSnapshot,
             namespaces: Mapping[str, Mapping[str, str]]) -> None:
        if self._index is None:
            self.begin_pass()
        assert self._index is not None
        slice_rt = SLICE_OF[rt.plural]
        own = policy.metadata.namespace if policy.NAMESPACED else None
        key = (rt.plural, policy.metadata.key)
        existing_raw = self._index.get(key, {})
        scope = (snapshot.ns_versions.get(own, 0),) if own is not None else (snapshot.pods_version, snapshot.namespaces_version)
        inputs = (policy.metadata.uid, policy.metadata.generation, policy.metadata.deletion_timestamp, scope,
                  tuple(sorted((n, str((r.get("metadata") or {}).get("resourceVersion"))) for n, r in existing_raw.items())))
        if self._done.get(key) == inputs:
            return
        pods = snapshot.pods
        desired = [] if policy.metadata.deletion_timestamp else selected_pods(policy, pods, namespaces)
        existing = {name: _endpoints(raw) for name, raw in existing_raw.items()}
        overlay = self.overlays[slice_rt.plural]
        for write in plan_slices(desired, existing, self.max_per_slice):
            body_endpoints = [e.to_dict() for e in write.endpoints]
            try:
                if write.delete:
                    self.client.delete(slice_rt, write.name, own)
                    overlay.deleted(f"{own}/{write.name}" if own else write.name)
                elif write.name:
                    raw = dict(existing_raw[write.name])
                    raw["endpoints"] = body_endpoints
                    overlay.wrote(self.client.replace(slice_rt, raw))
                else:
                    overlay.wrote(self.client.create(slice_rt, self._new_slice(slice_rt, policy, body_endpoints), namespace=own))
            except (k8s.NotFound, k8s.Conflict):
                return  # changed under us: the informer event brings this policy back with fresh state
        self._done[key] = inputs

    def _new_slice(self, slice_rt: k8s.ResourceType, policy: EgressPolicy, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "generateName": slice_generate_name(policy.metadata.name),
            "labels": {LABEL_POLICY_NAME: policy_label_value(policy.metadata.name)},
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": policy.KIND,
                "name": policy.metadata.name, "uid": policy.metadata.uid, "controller": True, "blockOwnerDeletion": True,
            }],
        }
        if policy.NAMESPACED:
            meta["namespace"] = policy.metadata.namespace
        return {"apiVersion": slice_rt.api_version, "kind": slice_rt.kind, "metadata": meta, "endpoints": endpoints}

    def prune(self, live_policies: set[tuple[str, str]]) -> None:
        """Delete slices whose policy is gone (garbage collection does it too, where it runs)."""
        assert self._index is not None
        for gone in set(self._done) - live_policies:
            del self._done[gone]
        for (plural, key), slices in self._index.items():
            if (plural, key) in live_policies:
                continue
            slice_rt = SLICE_OF[plural]
            for name, raw in slices.items():
                ns = (raw.get("metadata") or {}).get("namespace")
                try:
                    self.client.delete(slice_rt, name, ns)
                except k8s.NotFound:
                    pass
                self.overlays[slice_rt.plural].deleted(f"{ns}/{name}" if ns else name)

    def end_pass(self) -> None:
        self._index = None
