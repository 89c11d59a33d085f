"""Compute's `ClusterState`, assembled from the typed stores (no parsing here: the stores did it).

Rebuilt only when a store's version moved, and then only from the stores' cached, sorted items:
a change to one pod costs a few tuple concatenations, not a parse of the cluster.
"""

from __future__ import annotations

import threading

from egress_cni.agent.sources import ClusterStores
from egress_cni.api.model import CLUSTER_INFO_NAME
from egress_cni.dataplane.inputs import ClusterState


class StateView:
    """The current `ClusterState` for `node` (pods are kept for this node only)."""

    def __init__(self, stores: ClusterStores, node: str = "") -> None:
        self.stores = stores
        self.node = node
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, ...], ClusterState] | None = None

    def state(self) -> ClusterState:
        versions = self.stores.versions()
        with self._lock:
            if self._cached is not None and self._cached[0] == versions:
                return self._cached[1]
            state = self._build()
            self._cached = (versions, state)
            return state

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
