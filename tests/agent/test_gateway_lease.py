"""The agent's Lease: held only while the node is gateway-eligible, carrying what it holds and sees."""

from __future__ import annotations

from typing import Any

import pytest

from egress_cni.agent.k8s_source import ANNOTATION_EIPS, ANNOTATION_PEERS, GatewayLease
from egress_cni.api.model import EgressGateway
from egress_cni.api.names import ANNOTATION_UNINSTALLED

pytestmark = pytest.mark.unit


class FakeKeeper:
    def __init__(self, lease: GatewayLease | None = None) -> None:
        self.renewals: list[dict[str, str]] = []
        self.released = 0
        self.owner = lease

    def try_acquire_or_renew(self) -> bool:
        assert self.owner is not None
        self.renewals.append(self.owner.annotations())
        return True

    def release(self) -> None:
        self.released += 1


def gateway(*nodes: str) -> EgressGateway:
    raw: dict[str, Any] = {"apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressGateway",
                           "metadata": {"name": "gw"}, "status": {"nodeList": [{"name": n} for n in nodes]}}
    return EgressGateway.parse(raw)


def test_only_gateway_nodes_write_a_lease_and_it_carries_eips_and_peers() -> None:
    gateways: list[EgressGateway] = [gateway("n2", "n3")]
    keeper = FakeKeeper()
    lease = GatewayLease(None, "n1", "ns", 20, gateways=lambda: gateways, keeper=keeper)  # type: ignore[arg-type]
    keeper.owner = lease
    for _ in range(5):
        assert lease.try_acquire_or_renew()
    assert keeper.renewals == [] and lease.writes == 0  # a worker: no Lease at all
    gateways.append(gateway("n1", "n2"))  # the controller listed n1 in a nodeList
    lease.report(eips=lambda: ["10.6.1.2", "10.6.1.1"], peers=lambda: {"n2", "n1"})
    assert lease.try_acquire_or_renew()
    # None removes an earlier release's uninstall confirmation from the Lease (k8s.LeaseKeeper)
    assert keeper.renewals == [{ANNOTATION_EIPS: "10.6.1.1,10.6.1.2", ANNOTATION_PEERS: "n2", ANNOTATION_UNINSTALLED: None}]
    gateways.pop()  # unlabelled: released once, then nothing
    lease.try_acquire_or_renew()
    lease.try_acquire_or_renew()
    assert keeper.released == 1 and len(keeper.renewals) == 1 and lease.writes == 2
