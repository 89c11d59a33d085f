"""Tenant isolation on the sandbox (issue 14, "Done when"): asserted on the data path, by the source
address the external server sees for traffic from a pod's own netns.

- A hostile namespace's EgressPolicy with `podSubnet` covering all of node1's pods and `priority: 0`
  steers only its own pods; a pod of another namespace, selected by nothing, keeps its node IP.
- A gateway restricted to namespace A (`spec.namespaceSelector`) refuses B's policy at admission;
  with the validating webhook out of the way (an object that bypassed it), the controller gives B's
  policy `Ready=False` and no EIP; B's selected pod is dropped (fail closed, as for any policy
  without a usable gateway), never sent out with A's EIP, while A's policy works.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from e2e.helpers import Cluster, namespaces, wait_for

pytestmark = pytest.mark.e2e

GROUP = "egressgateway.spidernet.io/v1beta1"
POD_NODE = "node1"
NODE1 = "10.6.168.11"
EVIL_EIP = "10.6.168.222"
TENANT_EIP = "10.6.168.223"
VALIDATING = "egressgateway-validating"


@pytest.fixture
def other_ns(cluster: Cluster) -> Iterator[str]:
    yield from namespaces(cluster)


def _running_pod(cluster: Cluster, ns: str, name: str, labels: dict[str, str]) -> str:
    cluster.pod(ns, name, labels, node=POD_NODE)
    cluster.wait_running(ns, name)
    return name


def _condition(cluster: Cluster, ns: str, name: str, kind: str = "Ready") -> dict[str, Any] | None:
    conditions = cluster.policy_status(ns, name).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), None)


@contextmanager
def validating_webhook_bypassed(cluster: Cluster) -> Iterator[None]:
    """The validating webhook configuration removed for the block and restored after it: what gets in
    meanwhile is an object that bypassed admission (a race, an outage with failurePolicy Ignore, an
    admin's direct etcd write)."""
    saved = json.loads(cluster.kubectl("get", "validatingwebhookconfiguration", VALIDATING, "-o", "json"))
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        saved["metadata"].pop(key, None)
    cluster.kubectl("delete", "validatingwebhookconfiguration", VALIDATING)
    try:
        yield
    finally:
        cluster.kubectl("create", "-f", "-", input=json.dumps(saved))


def test_a_hostile_pod_subnet_policy_steers_only_its_own_namespace(cluster: Cluster, ns: str, other_ns: str,
                                                                  gateways: list[str]) -> None:
    evil, victim_ns = ns, other_ns
    gateways.append("t01")
    cluster.gateway("t01", [EVIL_EIP], ["node2"])
    own = _running_pod(cluster, evil, "own", {"app": "evil"})
    victim = _running_pod(cluster, victim_ns, "victim", {"app": "victim"})
    node = cluster.get("node", POD_NODE) or {}
    pod_cidr = node["spec"]["podCIDR"]
    cluster.apply({"apiVersion": GROUP, "kind": "EgressPolicy", "metadata": {"name": "grab", "namespace": evil},
                   "spec": {"egressGatewayName": "t01", "priority": 0, "egressIP": {"ipv4": EVIL_EIP},
                            "appliedTo": {"podSubnet": [pod_cidr]}}})
    cluster.wait_policy(evil, "grab")
    assert cluster.wait_source(evil, own, EVIL_EIP) == EVIL_EIP  # the policy works for its own namespace
    sources = [cluster.source_ip(victim_ns, victim) for _ in range(5)]
    assert sources == [NODE1] * 5, f"the victim in {victim_ns} left with {sources} (podSubnet {pod_cidr} of {evil})"


def test_a_gateway_restricted_to_one_namespace(cluster: Cluster, ns: str, other_ns: str, gateways: list[str]) -> None:
    tenant_a, tenant_b = ns, other_ns
    cluster.kubectl("label", "namespace", tenant_a, "e2e-tenant=a", "--overwrite")
    gateways.append("t02")
    cluster.gateway("t02", [TENANT_EIP], ["node2"])
    cluster.kubectl("patch", "egressgateway", "t02", "--type=merge", "-p",
                    json.dumps({"spec": {"namespaceSelector": {"matchLabels": {"e2e-tenant": "a"}}}}))
    a = _running_pod(cluster, tenant_a, "a", {"app": "a"})
    b = _running_pod(cluster, tenant_b, "b", {"app": "b"})
    cluster.policy(tenant_a, "p", "t02", {"app": "a"})
    assert cluster.wait_policy(tenant_a, "p")["eip"]["ipv4"] == TENANT_EIP
    assert cluster.wait_source(tenant_a, a, TENANT_EIP) == TENANT_EIP

    body = {"apiVersion": GROUP, "kind": "EgressPolicy", "metadata": {"name": "p", "namespace": tenant_b},
            "spec": {"egressGatewayName": "t02", "appliedTo": {"podSelector": {"matchLabels": {"app": "b"}}}}}
    refused = cluster.sb.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert refused.returncode != 0 and "spec.egressGatewayName" in refused.stderr, refused.stderr
    assert cluster.get("egresspolicy", "p", "-n", tenant_b) is None  # denied: nothing was stored

    with validating_webhook_bypassed(cluster):
        cluster.apply(body)
    ready = wait_for(lambda: (c := _condition(cluster, tenant_b, "p")) and c.get("status") == "False" and c,
                     f"policy {tenant_b}/p Ready=False")
    status = cluster.policy_status(tenant_b, "p")
    assert not (status.get("eip") or {}).get("ipv4") and not status.get("node"), status
    assert "namespace" in ready.get("message", "").lower(), ready
    # a selected pod whose policy has no usable gateway is dropped, never leaked (docs/dataplane.md)
    sources = [cluster.source_ip(tenant_b, b) for _ in range(5)]
    assert sources == [""] * 5, f"B's pod left with {sources} through a gateway that refuses its namespace"
    assert cluster.source_ip(tenant_a, a) == TENANT_EIP  # A is unaffected
