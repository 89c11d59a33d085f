"""The sandbox itself and the user's walkthrough, on every CNI mode: a pod reaches the external server,
first with its node's address (no policy; on macvlan the host masquerades the hijacked server), then with the walkthrough's EIP."""
from __future__ import annotations

import pytest

from devtools.sandbox.plan import CNI_MODES
from devtools.sandbox.walkthrough import Walkthrough
from e2e.helpers import Cluster

pytestmark = pytest.mark.e2e
SANDBOX_CNIS = CNI_MODES  # e2e/conftest.py: these tests run on a sandbox of each CNI mode


def test_pod_reaches_external_server_with_its_node_address(cluster: Cluster, ns: str) -> None:
    cluster.pod(ns, "plain", {"app": "plain"}, node="node1")
    cluster.wait_running(ns, "plain")
    expected = cluster.unsteered_source(ns, "plain")
    assert expected == "10.6.168.11"  # macvlan too: hijackCIDR sends it via the host, which masquerades it
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
