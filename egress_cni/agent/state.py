"""Compute's `ClusterState`, assembled from the typed stores (no parsing here: the stores did it).

Rebuilt only when a store's version moved, and then only from the stores' cached, sorted items:
a change to one pod costs a few tuple concatenations, not a parse of the cluster. The peer monitor's
takeovers (agent/peers.py) are merged in as `ClusterState.overrides`; `base` is the API's view alone.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from egress_cni.agent.sources import ClusterStores
from egress_cni.api.model import CLUSTER_INFO_NAME
from egress_cni.dataplane.inputs import ClusterState


class Overrides(Protocol):
    """Who serves a policy while the API says otherwise (agent/peers.py PeerMonitor)."""

    @property
    def version(self) -> int:
        """Moves whenever `overrides` may answer differently."""

    def overrides(self, state: ClusterState) -> Mapping[str, str]:
        """policy key -> serving node, given the API's view."""


class StateView:
    """The current `ClusterState` for `node` (pods are kept for this node only)."""

    def __init__(self, stores: ClusterStores, node: str = "", overrides: Overrides | None = None) -> None:
        self.stores = stores
        self.node = node
        self.overrides = overrides
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, ...], ClusterState] | None = None
        self._merged: tuple[tuple[tuple[int, ...], int], ClusterState] | None = None

    def base(self) -> ClusterState:
        """The API's view alone (no overrides): what the peer monitor decides from."""
        versions = self.stores.versions()
        with self._lock:
            return self._base(versions)

    def _base(self, versions: tuple[int, ...]) -> ClusterState:
        if self._cached is not None and self._cached[0] == versions:
            return self._cached[1]
        state = self._build()
        self._cached = (versions, state)
        return state

    def state(self) -> ClusterState:
        versions = self.stores.versions()
        if self.overrides is None:
            with self._lock:
                return self._base(versions)
        stamp = (versions, self.overrides.version)  # read before the overrides: a later move rebuilds
        with self._lock:
            if self._merged is not None and self._merged[0] == stamp:
                return self._merged[1]
            base = self._base(versions)
        merged = replace(base, overrides=dict(self.overrides.overrides(base)))  # outside our lock: no lock order
        with self._lock:
            self._merged = (stamp, merged)
        return merged

    def _build(self) -> ClusterState:
        s = self.stores
        infos = s.cluster_infos.items()
        info = s.cluster_infos.get(CLUSTER_INFO_NAME) or (infos[-1] if infos else None)
        pods = {p.key: p.labels for p in s.pods.items() if not self.node or p.node in (self.node, "")}
        return ClusterState(
            policies=s.policies.items() + s.cluster_policies.items(),
            gateways=s.gateways.items(),
            slices=s.endpoint_slices.items() + s.cluster_endpoint_slices.items(),
            tunnels=s.tunnels.items(),
            cluster_info=info,
            pod_labels=pods,
            namespace_labels={n.name: n.labels for n in s.namespaces.items()},
        )
