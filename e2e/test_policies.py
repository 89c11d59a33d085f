"""Policy scenarios of the reference catalogue, asserted on the data path: the source address the
external server sees. Pods run on node1; gateways use node2/node3 (traffic crosses the tunnel)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devtools.sandbox.plan import CNI_MODES
from e2e.helpers import EXTERNAL, EXTERNAL_OTHER, Cluster, wait_for

pytestmark = pytest.mark.e2e
SANDBOX_CNIS = CNI_MODES  # e2e/conftest.py: these tests run on a sandbox of each CNI mode

POD_NODE = "node1"


def _selected_pod(cluster: Cluster, ns: str, name: str = "client", labels: dict[str, str] | None = None) -> str:
    cluster.pod(ns, name, labels or {"app": "client"}, node=POD_NODE)
    cluster.wait_running(ns, name)
    return name


def _in_slices(cluster: Cluster, ns: str, pod: str) -> bool:
    slices = cluster.get("egressendpointslices", "-n", ns) or {"items": []}
    return any(e.get("pod") == pod for s in slices["items"] for e in s.get("endpoints") or [])


def _gone_from_slices(cluster: Cluster, ns: str, pod: str) -> Callable[[], bool | None]:
    return lambda: (not _in_slices(cluster, ns, pod)) or None


def _node_list(cluster: Cluster, gateway: str) -> list[str]:
    obj = cluster.get("egressgateway", gateway) or {}
    return [n["name"] for n in (obj.get("status") or {}).get("nodeList") or []]


def test_p00011_no_dest_subnet_external_destination_uses_eip(cluster: Cluster, ns: str, gateways: list[str]) -> None:
    gateways.append("p11")
    cluster.gateway("p11", ["10.6.168.210"], ["node2"])
    pod = _selected_pod(cluster, ns)
    cluster.policy(ns, "p", "p11", {"app": "client"})
    status = cluster.wait_policy(ns, "p")
    assert status["eip"]["ipv4"] == "10.6.168.210" and status["node"] == "node2"
    assert cluster.wait_source(ns, pod, "10.6.168.210") == "10.6.168.210"


def test_p00012_destination_inside_cluster_info_is_not_eip(cluster: Cluster, ns: str, gateways: list[str]) -> None:
    gateways.append("p12")
    cluster.gateway("p12", ["10.6.168.211"], ["node2"])
    pod = _selected_pod(cluster, ns)
    cluster.policy(ns, "p", "p12", {"app": "client"})
    cluster.wait_policy(ns, "p")
    cluster.kubectl("patch", "egressclusterinfo", "default", "--type=merge", "-p",
                    f'{{"spec": {{"extraCidr": ["{EXTERNAL_OTHER}/32"]}}}}')
    try:
        assert cluster.wait_source(ns, pod, "10.6.168.211", dst=EXTERNAL) == "10.6.168.211"
        plain = cluster.unsteered_source(ns, pod, dst=EXTERNAL_OTHER)
        assert cluster.wait_source(ns, pod, plain, dst=EXTERNAL_OTHER) == plain  # "in-cluster": not via the gateway
    finally:
        cluster.kubectl("patch", "egressclusterinfo", "default", "--type=merge", "-p", '{"spec": {"extraCidr": []}}')


def test_p00013_dest_subnet_limits_the_eip_to_matching_destinations(cluster: Cluster, ns: str, gateways: list[str]) -> None:
    gateways.append("p13")
    cluster.gateway("p13", ["10.6.168.212"], ["node2"])
    pod = _selected_pod(cluster, ns)
    cluster.policy(ns, "p", "p13", {"app": "client"}, destSubnet=[f"{EXTERNAL}/32"])
    cluster.wait_policy(ns, "p")
    assert cluster.wait_source(ns, pod, "10.6.168.212", dst=EXTERNAL) == "10.6.168.212"
    plain = cluster.unsteered_source(ns, pod, dst=EXTERNAL_OTHER)
    assert cluster.wait_source(ns, pod, plain, dst=EXTERNAL_OTHER) == plain


def test_running_underlay_pod_gets_a_destination_added_later(cluster: Cluster, ns: str, gateways: list[str]) -> None:
    """On macvlan the pod started with routes for hijackCIDR only: the agent routes the policy's new
    destination via the host in the running pod (docs/cni.md, "Running pods follow hijack.json")."""
    gateways.append("p13r")
    cluster.gateway("p13r", ["10.6.168.219"], ["node2"])
    pod = _selected_pod(cluster, ns)
    plain = cluster.unsteered_source(ns, pod, dst=EXTERNAL_OTHER)
    assert cluster.wait_source(ns, pod, plain, dst=EXTERNAL_OTHER) == plain
    cluster.policy(ns, "p", "p13r", {"app": "client"}, destSubnet=[f"{EXTERNAL_OTHER}/32"])
    cluster.wait_policy(ns, "p")
    assert cluster.wait_source(ns, pod, "10.6.168.219", dst=EXTERNAL_OTHER) == "10.6.168.219"


def test_p00014_changing_the_pod_selector_moves_the_eip(cluster: Cluster, ns: str, gateways: list[str]) -> None:
    gateways.append("p14")
    cluster.gateway("p14", ["10.6.168.213"], ["node2"])
    a = _selected_pod(cluster, ns, "a", {"app": "a"})
    b = _selected_pod(cluster, ns, "b", {"app": "b"})
    cluster.policy(ns, "p", "p14", {"app": "a"})
    cluster.wait_policy(ns, "p")
    assert cluster.wait_source(ns, a, "10.6.168.213") == "10.6.168.213"
    assert cluster.wait_source(ns, b, cluster.unsteered_source(ns, b)) == cluster.unsteered_source(ns, b)
    cluster.policy(ns, "p", "p14", {"app": "b"})
    assert cluster.wait_source(ns, b, "10.6.168.213") == "10.6.168.213"
    assert cluster.wait_source(ns, a, cluster.unsteered_source(ns, a)) == cluster.unsteered_source(ns, a)


def test_p00015_use_node_ip_leaves_with_the_gateway_node_address(cluster: Cluster, ns: str, gateways: list[str]) -> None:
    gateways.append("p15")
    cluster.gateway("p15", ["10.6.168.214"], ["node2"])
    pod = _selected_pod(cluster, ns)
    cluster.policy(ns, "p", "p15", {"app": "client"}, egressIP={"useNodeIP": True})
    status = cluster.wait_policy(ns, "p")
    assert not (status.get("eip") or {}).get("ipv4")
    assert cluster.wait_source(ns, pod, cluster.node_ip("node2")) == cluster.node_ip("node2")


def test_p00016_use_node_ip_follows_the_gateway_node(cluster: Cluster, ns: str, gateways: list[str]) -> None:
    gateways.append("p16")
    cluster.gateway("p16", ["10.6.168.215"], ["node2"])
    pod = _selected_pod(cluster, ns)
    cluster.policy(ns, "p", "p16", {"app": "client"}, egressIP={"useNodeIP": True})
    cluster.wait_policy(ns, "p", node="node2")
    assert cluster.wait_source(ns, pod, cluster.node_ip("node2")) == cluster.node_ip("node2")
    cluster.move_gateway("p16", ["node3"])
    cluster.wait_policy(ns, "p", node="node3")
    assert cluster.wait_source(ns, pod, cluster.node_ip("node3")) == cluster.node_ip("node3")


def test_p00021_namespaced_policy_only_affects_its_namespace(cluster: Cluster, gateways: list[str]) -> None:
    from e2e.helpers import namespaces

    gateways.append("p21")
    cluster.gateway("p21", ["10.6.168.216"], ["node2"])
    mine, other = namespaces(cluster), namespaces(cluster)
    ns_mine, ns_other = next(mine), next(other)
    try:
        inside = _selected_pod(cluster, ns_mine)
        outside = _selected_pod(cluster, ns_other)
        cluster.policy(ns_mine, "p", "p21", {"app": "client"})
        cluster.wait_policy(ns_mine, "p")
        assert cluster.wait_source(ns_mine, inside, "10.6.168.216") == "10.6.168.216"
        assert cluster.source_ip(ns_other, outside) == cluster.unsteered_source(ns_other, outside)
    finally:
        mine.close()
        other.close()


def test_g00014_moving_the_gateway_node_keeps_the_eip(cluster: Cluster, ns: str, gateways: list[str]) -> None:
    gateways.append("g14")
    cluster.gateway("g14", ["10.6.168.217"], ["node2"])
    pod = _selected_pod(cluster, ns)
    cluster.policy(ns, "p", "g14", {"app": "client"})
    cluster.wait_policy(ns, "p", node="node2")
    assert cluster.wait_source(ns, pod, "10.6.168.217") == "10.6.168.217"
    cluster.move_gateway("g14", ["node3"])
    cluster.wait_policy(ns, "p", node="node3")
    assert cluster.wait_source(ns, pod, "10.6.168.217") == "10.6.168.217"
    wait_for(lambda: _node_list(cluster, "g14") == ["node3"] or None, "gateway g14 nodeList is [node3]")
    cluster.move_gateway("g14", [])  # no node: the policy loses its node, the pod its EIP
    wait_for(lambda: not cluster.policy_status(ns, "p").get("node"), "policy p without a node")
    # The agents follow the status change: the EIP stops answering for the pod (its traffic is dropped,
    # fail closed, rather than leaving with another address).
    wait_for(lambda: cluster.source_ip(ns, pod) != "10.6.168.217" or None, "the pod no longer leaves with 10.6.168.217")


def test_s00001_pods_created_and_deleted_repeatedly_keep_the_eip(cluster: Cluster, ns: str, gateways: list[str]) -> None:
    gateways.append("s01")
    cluster.gateway("s01", ["10.6.168.218"], ["node2"])
    cluster.policy(ns, "p", "s01", {"app": "client"})
    cluster.wait_policy(ns, "p")
    for round_ in range(3):
        name = f"client-{round_}"
        _selected_pod(cluster, ns, name)
        assert cluster.wait_source(ns, name, "10.6.168.218") == "10.6.168.218"
        cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=true", "--timeout=90s")
        wait_for(_gone_from_slices(cluster, ns, name), f"{name} gone from the endpoint slices")
