"""The sandbox itself and the user's walkthrough, on every CNI mode: a pod reaches the external server,
first with its node's address (its own on macvlan: no policy), then with the walkthrough's EIP."""
from __future__ import annotations

import ipaddress

import pytest

from devtools.sandbox.plan import CNI_MODES
from devtools.sandbox.walkthrough import Walkthrough
from e2e.helpers import Cluster

pytestmark = pytest.mark.e2e
SANDBOX_CNIS = CNI_MODES  # e2e/conftest.py: these tests run on a sandbox of each CNI mode


def test_pod_reaches_external_server_with_its_node_or_own_address(cluster: Cluster, ns: str) -> None:
    cluster.skip_unsteered_hijacked()
    cluster.pod(ns, "plain", {"app": "plain"}, node="node1")
    cluster.wait_running(ns, "plain")
    expected = cluster.unsteered_source(ns, "plain")
    if cluster.sb.plan.underlay_pods:  # its own address, in node1's slice of the underlay
        assert ipaddress.ip_address(expected) in ipaddress.ip_network(cluster.sb.plan.node("node1").pod_cidr_v4)
    else:
        assert expected == "10.6.168.11"
    assert cluster.wait_source(ns, "plain", expected) == expected


def test_walkthrough_yaml_verbatim_gives_the_pod_the_eip(cluster: Cluster) -> None:
    walk = Walkthrough(cluster.sb)
    try:
        walk.apply("EgressGateway")
        walk.apply("Deployment")
        pod = walk.wait_pod()
        for name in [n for n in cluster.node_names if n != walk.pod_node][:2]:
            cluster.kubectl("label", "node", name, "egressgateway=true", "--overwrite")
        walk.apply("EgressPolicy")
        status = cluster.wait_policy("default", "test")
        assert status["eip"]["ipv4"] in {f"10.6.168.{i}" for i in range(201, 206)}
        assert cluster.wait_source("default", pod, status["eip"]["ipv4"]) == status["eip"]["ipv4"]
        assert cluster.get("egressendpointslices", "-n", "default")["items"]
    finally:
        cluster.delete("egresspolicy", "test", "-n", "default")
        cluster.delete("deployment", "test-app", "-n", "default")
        for name in cluster.node_names:
            cluster.kubectl("label", "node", name, "egressgateway-", check=False)
        cluster.delete("egressgateway", "default")
