"""Gateway node failures (R00005, R00006): a node 'loses power' for the data path (underlay link
down, agent stopped, so its Lease expires); the EIP must move and keep working."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.sandbox import components
from e2e.helpers import Cluster, wait_for
from egress_cni.controller.config import Config

pytestmark = pytest.mark.e2e


@pytest.fixture
def powered(cluster: Cluster) -> Iterator[list[str]]:
    """Nodes a test powers off: powered on again afterwards, whatever happened."""
    off: list[str] = []
    yield off
    for name in off:
        cluster.power_on(name)


def _setup(cluster: Cluster, ns: str, gateways: list[str], name: str, eip: str,
           nodes: tuple[str, str, str] = ("node1", "node2", "node3")) -> str:
    """`nodes`: the client's node, then the two gateway nodes."""
    gateways.append(name)
    cluster.gateway(name, [eip], list(nodes[1:]))
    cluster.pod(ns, "client", {"app": "client"}, node=nodes[0])
    cluster.wait_running(ns, "client")
    cluster.policy(ns, "p", name, {"app": "client"})
    status = cluster.wait_policy(ns, "p")
    assert cluster.wait_source(ns, "client", eip) == eip
    return str(status["node"])


def _leader_node(cluster: Cluster) -> str:
    """The node of the controller replica holding the leader Lease."""
    lease = cluster.get("lease", "-n", components.NAMESPACE, Config.leader_lease) or {}
    holder = (lease.get("spec") or {}).get("holderIdentity") or ""
    pod = cluster.get("pod", "-n", components.NAMESPACE, holder) if holder else None
    node = ((pod or {}).get("spec") or {}).get("nodeName")
    assert node, f"no controller leader found (lease holder {holder!r})"
    return str(node)


def _node_states(cluster: Cluster, gateway: str) -> dict[str, str]:
    obj = cluster.get("egressgateway", gateway) or {}
    return {n["name"]: n.get("status", "") for n in (obj.get("status") or {}).get("nodeList") or []}


def test_r00005_power_off_the_eip_node_moves_the_eip(cluster: Cluster, ns: str, gateways: list[str],
                                                      powered: list[str]) -> None:
    eip = "10.6.168.220"
    first = _setup(cluster, ns, gateways, "r05", eip)
    other = "node3" if first == "node2" else "node2"
    powered.append(first)
    cluster.power_off(first)
    cluster.wait_policy(ns, "p", node=other, timeout=60)
    assert cluster.wait_source(ns, "client", eip, timeout=60) == eip
    wait_for(lambda: _node_states(cluster, "r05").get(first) not in (None, "Ready") or None,
             f"{first} not Ready in gateway r05's nodeList", timeout=60)


def test_r00006_all_gateway_nodes_off_then_back(cluster: Cluster, ns: str, gateways: list[str],
                                                 powered: list[str]) -> None:
    # The gateway nodes are the two without the controller leader: powering off every node that runs
    # a controller replica (the chart spreads two over three nodes) would leave no one to write status.
    eip = "10.6.168.221"
    client = _leader_node(cluster)
    first, second = [n for n in ("node1", "node2", "node3") if n != client]
    _setup(cluster, ns, gateways, "r06", eip, (client, first, second))
    powered.extend([first, second])
    cluster.power_off(first)
    cluster.power_off(second)
    wait_for(lambda: cluster.source_ip(ns, "client", timeout=2) != eip or None, "the pod loses the EIP", timeout=60)
    wait_for(lambda: all(s != "Ready" for s in _node_states(cluster, "r06").values()) or None,
             "no Ready node in gateway r06", timeout=60)
    cluster.power_on(second)
    powered.remove(second)
    cluster.wait_policy(ns, "p", node=second, timeout=60)
    assert cluster.wait_source(ns, "client", eip, timeout=60) == eip
    cluster.power_on(first)
    powered.remove(first)
    wait_for(lambda: _node_states(cluster, "r06").get(first) == "Ready" or None, f"{first} Ready again", timeout=60)
    assert cluster.policy_status(ns, "p")["node"] == second  # the EIP stays on the first recovered node
    assert cluster.wait_source(ns, "client", eip) == eip
