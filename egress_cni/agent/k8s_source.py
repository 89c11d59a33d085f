"""The production source: one `k8s.Informer` per kind this node reads, each behind a typed store;
and the tunnel reporter, the agent's one write (thin: no logic beyond wiring).

Pods are watched for this node only (field selector spec.nodeName) because their labels decide
whether a CNI-registered endpoint is selected; namespaces for EgressClusterPolicy namespaceSelectors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from egress_cni import k8s
from egress_cni.agent.sources import KINDS, ClusterStores, OnChange

log = logging.getLogger(__name__)

RESOURCES = {rt.kind: rt for rt in (
    k8s.EGRESS_POLICIES, k8s.EGRESS_CLUSTER_POLICIES, k8s.EGRESS_GATEWAYS, k8s.EGRESS_ENDPOINT_SLICES,
    k8s.EGRESS_CLUSTER_ENDPOINT_SLICES, k8s.EGRESS_TUNNELS, k8s.EGRESS_CLUSTER_INFOS, k8s.NAMESPACES, k8s.PODS)}
assert set(RESOURCES) == set(KINDS), "a kind the agent reads has no resource type"


class KubernetesSource:
    def __init__(self, client: k8s.Client, node: str, resync_seconds: float = 300.0) -> None:
        self.client = client
        self.node = node
        self.resync_seconds = resync_seconds
        self._on_change: OnChange = lambda: None
        self.informers = {kind: k8s.Informer(client, rt, resync_seconds=resync_seconds, on_change=self._changed,
                                             field_selector=f"spec.nodeName={node}" if rt == k8s.PODS else None)
                          for kind, rt in RESOURCES.items()}
        self._stores = ClusterStores.over(self.informers)

    def _changed(self, _key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if old is not new:  # the informer's periodic replay (old is new) changes nothing
            self._on_change()

    def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        for informer in self.informers.values():
            informer.start()

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    @property
    def stores(self) -> ClusterStores:
        return self._stores

    @property
    def synced(self) -> bool:
        return self._stores.synced


class KubernetesTunnelReporter:
    """Patches this node's EgressTunnel status; the controller's fields in it are kept (merge patch)."""

    def __init__(self, client: k8s.Client) -> None:
        self.client = client

    def report_tunnel(self, node: str, parent: Mapping[str, str], ready: bool) -> None:
        status: dict[str, Any] = {"tunnel": {"parent": {k: v for k, v in parent.items() if v}}}
        if ready:
            status["phase"] = "Ready"
        try:
            self.client.patch_status(k8s.EGRESS_TUNNELS, node, {"status": status})
        except k8s.NotFound:
            log.info("egresstunnel not created yet", extra={"node": node})
            raise
