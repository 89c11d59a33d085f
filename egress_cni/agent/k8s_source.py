"""The production source: one `k8s.Informer` per kind this node reads, each behind a typed store;
and the tunnel reporter, the agent's one write (thin: no logic beyond wiring).

Pods are watched for this node only (field selector spec.nodeName) because their labels decide
whether a CNI-registered endpoint is selected; namespaces for EgressClusterPolicy namespaceSelectors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from egress_cni import k8s
from egress_cni.agent.sources import KINDS, ClusterStores, OnChange
from egress_cni.api.model import EgressGateway
from egress_cni.api.names import ANNOTATION_UNINSTALLED

# The controller reads these (controller/liveness.py): what this agent holds and whom it sees alive.
ANNOTATION_EIPS = "egressgateway.spidernet.io/eips"
ANNOTATION_PEERS = "egressgateway.spidernet.io/peers"
LEASE_PREFIX = "egress-agent-"

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


def gateway_eligible(gateways: Iterable[EgressGateway], node: str) -> bool:
    """Whether `node` is in some gateway's `status.nodeList` (it may carry EIPs)."""
    return any(n.name == node for gw in gateways for n in gw.status.node_list)


class GatewayLease:
    """The agent's Lease `egress-agent-<node>`, held only while the node is gateway-eligible.

    Only nodes that can carry EIPs need liveness in the API: the others renew nothing (0 writes).
    A gateway agent renews every `agentLeaseRenewSeconds` (2 s) with a 20 s duration and writes,
    with every renewal, the EIPs it holds (`ANNOTATION_EIPS`) and the gateway peers it sees alive
    (`ANNOTATION_PEERS`): the controller records takeovers from the first and moves nothing for a
    node a fresh peer vouches for. A node that stops being eligible releases its Lease once.
    Losing the Lease costs the agent nothing (no self-fencing: docs/ha.md).
    """

    def __init__(self, client: k8s.Client, node: str, namespace: str, duration_seconds: int, *,
                 gateways: Callable[[], Iterable[EgressGateway]], synced: Callable[[], bool] = lambda: True,
                 keeper: k8s.LeaseKeeper | None = None) -> None:
        self.node, self._gateways, self._synced = node, gateways, synced
        self.keeper = keeper or k8s.LeaseKeeper(client, f"{LEASE_PREFIX}{node}", namespace, node, duration_seconds,
                                                annotations=self.annotations)
        self._eips: Callable[[], Iterable[str]] = lambda: ()
        self._peers: Callable[[], Iterable[str]] = lambda: ()
        self._holding = False  # renewed by this process and not released since
        self.writes = 0  # Lease writes attempted (the bench and tests count them)

    def report(self, *, eips: Callable[[], Iterable[str]] | None = None,
               peers: Callable[[], Iterable[str]] | None = None) -> None:
        """Where the annotations come from: the EIPs held now, the peers seen alive now."""
        if eips is not None:
            self._eips = eips
        if peers is not None:
            self._peers = peers

    def annotations(self) -> dict[str, str | None]:
        return {ANNOTATION_EIPS: ",".join(sorted(set(self._eips()))),
                ANNOTATION_PEERS: ",".join(sorted(set(self._peers()) - {self.node})),
                ANNOTATION_UNINSTALLED: None}  # a running agent is installed (an earlier release's confirmation goes)

    @property
    def eligible(self) -> bool:
        return gateway_eligible(self._gateways(), self.node)

    def try_acquire_or_renew(self) -> bool:
        if not self.eligible:
            if self._holding and self._synced():
                self.release()  # no longer a gateway node: one write, then none
            return True  # nothing to hold; the agent's work never depended on it
        self.writes += 1
        ok = self.keeper.try_acquire_or_renew()
        self._holding = self._holding or ok
        return ok

    def release(self) -> None:
        if self._holding:
            self._holding = False
            self.writes += 1
            self.keeper.release()


def confirm_uninstalled(client: k8s.Client, node: str, namespace: str, token: str) -> None:
    """Tell the pre-delete hook this node is clean: `token` in the annotation ANNOTATION_UNINSTALLED of
    Lease `egress-agent-<node>` (created when the node held none). The Lease is released on the way
    (no holder, no EIPs, no peers), so nothing reads it as liveness."""
    name = f"{LEASE_PREFIX}{node}"
    confirmed = {ANNOTATION_EIPS: "", ANNOTATION_PEERS: "", ANNOTATION_UNINSTALLED: token}

    def write() -> None:
        try:
            lease = client.get(k8s.LEASES, name, namespace)
        except k8s.NotFound:
            client.create(k8s.LEASES, {"apiVersion": k8s.LEASES.api_version, "kind": k8s.LEASES.kind,
                                       "metadata": {"name": name, "namespace": namespace, "annotations": confirmed},
                                       "spec": {}}, namespace=namespace)
            return
        meta = lease.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}), **confirmed}
        lease["spec"] = {**(lease.get("spec") or {}), "holderIdentity": None}
        client.replace(k8s.LEASES, lease)

    k8s.retry_on_conflict(write)
