"""The production source: one `k8s.Informer` per kind this node needs (thin: no logic beyond wiring).

Pods are watched for this node only (field selector spec.nodeName) because their labels decide
whether a CNI-registered endpoint is selected; namespaces for EgressClusterPolicy namespaceSelectors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from egress_cni import k8s
from egress_cni.agent.sources import OnChange

log = logging.getLogger(__name__)

KINDS = (k8s.EGRESS_POLICIES, k8s.EGRESS_CLUSTER_POLICIES, k8s.EGRESS_GATEWAYS, k8s.EGRESS_ENDPOINT_SLICES,
         k8s.EGRESS_CLUSTER_ENDPOINT_SLICES, k8s.EGRESS_TUNNELS, k8s.EGRESS_CLUSTER_INFOS, k8s.NAMESPACES)


class KubernetesSource:
    def __init__(self, client: k8s.Client, node: str, resync_seconds: float = 300.0) -> None:
        self.client = client
        self.node = node
        self.resync_seconds = resync_seconds
        self.informers: list[tuple[k8s.ResourceType, k8s.Informer]] = []

    def start(self, on_change: OnChange) -> None:
        def changed(_key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            if old is not new:  # the informer's periodic replay (old is new) changes nothing
                on_change()

        for rt in KINDS:
            self.informers.append((rt, k8s.Informer(self.client, rt, resync_seconds=self.resync_seconds, on_change=changed)))
        self.informers.append((k8s.PODS, k8s.Informer(self.client, k8s.PODS, field_selector=f"spec.nodeName={self.node}",
                                                      resync_seconds=self.resync_seconds, on_change=changed)))
        for _, informer in self.informers:
            informer.start()

    def stop(self) -> None:
        for _, informer in self.informers:
            informer.stop()

    @property
    def synced(self) -> bool:
        return bool(self.informers) and all(i.synced for _, i in self.informers)

    def objects(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for rt, informer in self.informers:
            for obj in informer.list():
                out.append({"apiVersion": rt.api_version, "kind": rt.kind, **obj})  # lists omit kind per item
        return out

    def report_tunnel(self, node: str, parent: Mapping[str, str], ready: bool) -> None:
        status: dict[str, Any] = {"tunnel": {"parent": {k: v for k, v in parent.items() if v}}}
        if ready:
            status["phase"] = "Ready"
        patch = {"status": status}
        try:
            self.client.patch_status(k8s.EGRESS_TUNNELS, node, patch)
        except k8s.NotFound:
            log.info("egresstunnel not created yet", extra={"node": node})
            raise
