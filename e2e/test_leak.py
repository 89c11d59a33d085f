"""No packet leaks at pod start: 50 new pods of a selected Deployment send UDP (DNS queries: busybox's
nc has no UDP mode) from their very first moment while the external server records every source;
not one may arrive from anything but the EIP."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from devtools.sandbox.plan import CNI_MODES
from e2e.helpers import Cluster, wait_for

pytestmark = pytest.mark.e2e
SANDBOX_CNIS = CNI_MODES  # e2e/conftest.py: these tests run on a sandbox of each CNI mode

REPLICAS = int(os.environ.get("EGW_E2E_LEAK_PODS", "50"))
EIP = "10.6.168.230"
# From the container's first instruction, a query every 250 ms, each from a new socket (a new
# conntrack entry); the query name tags the pod.
SENDER = "while true; do nslookup $HOSTNAME.$POD_NS.leak. 10.6.168.63 >/dev/null 2>&1; usleep 250000; done"


def test_no_packet_leaves_a_new_pod_without_the_eip(cluster: Cluster, ns: str, gateways: list[str]) -> None:
    gateways.append("leak")
    cluster.gateway("leak", [EIP], ["node2", "node3"])
    cluster.policy(ns, "p", "leak", {"app": "sender"})
    cluster.wait_policy(ns, "p")
    container = {"name": "send", "image": "busybox", "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", SENDER],
                 "env": [{"name": "POD_NS", "value": ns}]}
    cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sender", "namespace": ns},
                   "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "sender"}},
                            "template": {"metadata": {"labels": {"app": "sender"}},
                                         "spec": {"containers": [container], "terminationGracePeriodSeconds": 0}}}})
    suffix = f".{ns}.leak"

    def ours() -> list[dict[str, str]]:
        return [r for r in cluster.records() if r.get("proto") == "dns" and r.get("tag", "").endswith(suffix)]

    def senders() -> set[str]:
        return {r["tag"] for r in ours()}

    try:
        wait_for(lambda: len(senders()) >= REPLICAS or None, f"all {REPLICAS} pods heard from", timeout=600, interval=2)
    finally:
        cluster.delete("deployment", "sender", "-n", ns)
        heard = ours()
    leaked = Counter(r["src"] for r in heard if r["src"] != EIP)
    nodes = Counter(_node_of(cluster, ip) for ip in leaked.elements())
    assert not leaked, (f"{sum(leaked.values())} of {len(heard)} queries arrived from {dict(leaked)} instead of {EIP} "
                        f"(senders on {dict(nodes)}; gateway {cluster.policy_status(ns, 'p').get('node')})")


def _node_of(cluster: Cluster, ip: str) -> str:
    import ipaddress

    for node in cluster.sb.plan.nodes:
        if ipaddress.ip_address(ip) in ipaddress.ip_network(node.pod_cidr_v4) or ip == node.endpoint.ipv4:
            return node.name
    return "?"
