"""Tunnels, endpoint slices, cluster info and status documents (pure)."""

from __future__ import annotations

import pytest

from egress_cni.api import semantics
from egress_cni.api.meta import Condition, ObjectMeta
from egress_cni.api.model import (
    AppliedTo,
    ClusterInfoSpec,
    EgressClusterPolicy,
    EgressPolicy,
    Endpoint,
    IPLists,
    PolicySpec,
    PolicyStatus,
    TunnelStatus,
)
from egress_cni.api.selectors import LabelSelector
from egress_cni.controller.clusterinfo import cluster_info_status, service_cidrs
from egress_cni.controller.placement import Assignment
from egress_cni.controller.reconciler import node_view
from egress_cni.controller.slices import PodView, plan_slices, selected_pods
from egress_cni.controller.status import merge_patch, policy_status
from egress_cni.controller.tunnels import plan_tunnels, tunnel_mac

pytestmark = pytest.mark.unit


def test_tunnel_plan_keeps_existing_and_fills_lowest_free() -> None:
    existing = {"b": TunnelStatus(ipv4="172.31.0.9", ipv6="fd11::9", mark="0x26000005"),
                "c": TunnelStatus(ipv4="172.31.0.9", mark="0x26000005"),  # duplicates b: reallocated
                "d": TunnelStatus(ipv4="10.0.0.1", mark="bogus")}       # outside the subnet: reallocated
    plan = plan_tunnels(["a", "b", "c", "d"], existing, "172.31.0.0/16", "fd11::/112")
    assert plan["b"].ipv4 == "172.31.0.9" and plan["b"].mark == "0x26000005" and plan["b"].ipv6 == "fd11::9"
    assert plan["a"].ipv4 == "172.31.0.1" and plan["c"].ipv4 == "172.31.0.2" and plan["d"].ipv4 == "172.31.0.3"
    assert plan["a"].ipv6 == "fd11::1"  # never fd11::0, the first address
    assert len({t.mark for t in plan.values()}) == 4 and plan["a"].mark == "0x26000001"
    assert plan["a"].mac == tunnel_mac("a") and plan["a"].mac.startswith("66:") and len(plan["a"].mac) == 17
    assert plan_tunnels(["a", "b", "c", "d"], {k: TunnelStatus(v.ipv4, v.ipv6, mark=v.mark) for k, v in plan.items()},
                        "172.31.0.0/16", "fd11::/112") == plan  # stable across restarts


def test_tunnel_subnet_never_hands_out_broadcast() -> None:
    plan = plan_tunnels(["a", "b", "c"], {}, "172.31.0.0/30", "")
    assert [plan[n].ipv4 for n in "abc"] == ["172.31.0.1", "172.31.0.2", ""]


def pods() -> dict[str, dict[str, PodView]]:
    return {
        "a": {"p1": PodView("a", "p1", {"app": "x"}, "n1", ("10.244.1.5",)), "p2": PodView("a", "p2", {"app": "y"}, "n1", ("10.244.1.6",))},
        "b": {"p3": PodView("b", "p3", {"app": "x"}, "n2", ("10.244.2.5",), ("fd40::5",))},
    }


def _policy(applied: AppliedTo, namespace: str | None) -> EgressPolicy:
    cls = EgressPolicy if namespace is not None else EgressClusterPolicy
    return cls(ObjectMeta("p", namespace or ""), PolicySpec(applied_to=applied))


def test_selection_by_selector_namespace_and_subnet() -> None:
    x = AppliedTo(pod_selector=LabelSelector.parse({"matchLabels": {"app": "x"}}, "s"))
    assert [e.pod for e in selected_pods(_policy(x, "a"), pods(), {})] == ["p1"]
    assert [e.pod for e in selected_pods(_policy(x, None), pods(), {"a": {}, "b": {}})] == ["p1", "p3"]
    only_b = AppliedTo(pod_selector=x.pod_selector, namespace_selector=LabelSelector.parse({"matchLabels": {"t": "b"}}, "n"))
    assert [e.pod for e in selected_pods(_policy(only_b, None), pods(), {"a": {}, "b": {"t": "b"}})] == ["p3"]
    subnet = AppliedTo(pod_subnet=("10.244.1.6/32", "fd40::/64"))
    assert [e.pod for e in selected_pods(_policy(subnet, None), pods(), {})] == ["p2", "p3"]
    # a namespaced policy's podSubnet selects pods of its own namespace only
    assert [e.pod for e in selected_pods(_policy(AppliedTo(pod_subnet=("10.244.0.0/16",)), "b"), pods(), {})] == ["p3"]
    # namespaceSelector + podSubnet: both must hold
    ns_subnet = AppliedTo(pod_subnet=("10.244.1.0/24",), namespace_selector=only_b.namespace_selector)
    assert selected_pods(_policy(ns_subnet, None), pods(), {"a": {}, "b": {"t": "b"}}) == []
    assert PodView.from_raw({"metadata": {"name": "x"}, "status": {"phase": "Running"}}) is None


def ep(i: int, ip: str = "") -> Endpoint:
    return Endpoint.of("a", f"p{i:03}", "n1", (ip or f"10.0.0.{i}",))


def test_slice_plan_minimal_churn() -> None:
    desired = [ep(i) for i in range(5)]
    writes = plan_slices(desired, {}, 2)
    assert [len(w.endpoints) for w in writes] == [2, 2, 1] and all(not w.name for w in writes)
    existing = {"s1": (ep(0), ep(1)), "s2": (ep(2), ep(3)), "s3": (ep(4),)}
    assert plan_slices(desired, existing, 2) == []
    # p2 changes IP, p4 goes away, p5 arrives: s2 updated in place, s3 reused for p5.
    changed = [ep(0), ep(1), ep(2, "10.9.9.9"), ep(3), ep(5)]
    writes = plan_slices(changed, existing, 2)
    assert [(w.name, [e.pod for e in w.endpoints], w.delete) for w in writes] == [
        ("s2", ["p002", "p003"], False), ("s3", ["p005"], False)]
    assert [(w.name, w.delete) for w in plan_slices([], existing, 2)] == [("s1", True), ("s2", True), ("s3", True)]


def test_cluster_info_status() -> None:
    nodes = [{"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24", "fd40:1::/64"]},
              "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}, {"type": "Hostname", "address": "n1"}]}}]
    cidrs = service_cidrs([{"spec": {"cidrs": ["10.96.0.0/16", "fd41::/108"]}}], (), None)
    out = cluster_info_status(ClusterInfoSpec(extra_cidr=("10.10.10.1", "10.20.0.0/16")), nodes, cidrs, None)
    assert out.node_ip == {"n1": IPLists(("192.168.0.1",))}
    assert out.cluster_ip == IPLists(("10.96.0.0/16",), ("fd41::/108",))
    assert out.pod_cidr == {"k8s": IPLists(("10.244.1.0/24",), ("fd40:1::/64",))} and out.pod_cidr_mode == "k8s"
    assert [c.given for c in out.extra_cidr] == ["10.10.10.1", "10.20.0.0/16"]
    calico = [{"metadata": {"name": "default-ipv4-ippool"}, "spec": {"cidr": "172.40.0.0/16"}}]
    out = cluster_info_status(ClusterInfoSpec("calico", cluster_ip=False, node_ip=False), nodes, cidrs, calico)
    assert out.pod_cidr == {"default-ipv4-ippool": IPLists(("172.40.0.0/16",))} and out.pod_cidr_mode == "calico"
    assert out.node_ip == {} and out.cluster_ip == IPLists()
    assert service_cidrs(None, (), {"spec": {"clusterIPs": ["10.96.0.1"]}}) == IPLists(("10.96.0.1/32",))


def test_policy_status_keeps_transition_time_and_merge_patch_nulls_removed_keys() -> None:
    first = policy_status(Assignment("10.6.1.1", "", "n1"), PolicyStatus(), 3, "T1")
    again = policy_status(Assignment("10.6.1.1", "", "n2"), first, 3, "T2")
    assert again.conditions[0].last_transition_time == "T1" and again.node == "n2"
    failed = policy_status(Assignment(reason="NoEligibleNode", message="m"), again, 3, "T3")
    assert failed.conditions[0] == Condition("Ready", "False", "NoEligibleNode", "m", "T3", 3)
    assert merge_patch(again.to_dict(), failed.to_dict())["eip"] is None
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": 1}, "l": [1]}) == {"a": {"c": None}}


def test_effective_gateway() -> None:
    from egress_cni.api.model import EgressGateway

    def gw(name: str, default: bool) -> EgressGateway:
        return EgressGateway.parse({"metadata": {"name": name}, "spec": {"clusterDefault": default}})

    def pol(name: str, ns: str = "ns") -> EgressPolicy:
        return EgressPolicy(ObjectMeta("p", ns), PolicySpec(egress_gateway_name=name))

    gws = [gw("a", False), gw("b", True)]
    label = {"spidernet.io/egressgateway-default": "a"}
    assert semantics.effective_gateway(pol("x"), None, gws) == ("x", "spec.egressGatewayName")
    assert semantics.effective_gateway(pol(""), label, gws)[0] == "a"
    assert semantics.effective_gateway(pol(""), {}, gws) == ("b", "cluster-default gateway")
    assert semantics.effective_gateway(pol(""), None, gws[:1]) == ("", "")
    # the label wins even when it names a missing gateway (the policy waits for it), as the webhook defaults it
    assert semantics.effective_gateway(pol(""), {"spidernet.io/egressgateway-default": "gone"}, gws)[0] == "gone"
    # an EgressClusterPolicy ignores namespace labels
    cluster = EgressClusterPolicy(ObjectMeta("c"), PolicySpec())
    assert semantics.effective_gateway(cluster, label, gws)[0] == "b"


def test_tunnel_phase_follows_node_health() -> None:
    from egress_cni.controller.tunnels import tunnel_phase

    assert tunnel_phase("Ready", True, node_ready=False, gateway_agent=True, agent_alive=True) == "NodeNotReady"
    assert tunnel_phase("Ready", True, node_ready=True, gateway_agent=True, agent_alive=False) == "HeartbeatTimeout"
    assert tunnel_phase("Ready", True, node_ready=True, gateway_agent=False, agent_alive=False) == "Ready"  # a worker: no Lease
    assert tunnel_phase("HeartbeatTimeout", True, node_ready=True, gateway_agent=True, agent_alive=True) == "Ready"
    assert tunnel_phase("", False, node_ready=True, gateway_agent=False, agent_alive=False) == "Init"


@pytest.mark.parametrize(("word", "agent_alive", "ready"), [
    ("True", True, True), ("True", False, True),
    ("Unknown", True, True),  # the kubelet stopped posting (every node after an API stall): the agent decides
    ("Unknown", False, False),
    ("False", True, False),  # the kubelet's own verdict
    (None, True, False),  # not reported yet
])
def test_node_readiness_takes_the_agent_lease_over_an_unknown_ready_condition(word: str | None, agent_alive: bool,
                                                                               ready: bool) -> None:
    conditions = [{"type": "Ready", "status": word}] if word else []
    view = node_view({"metadata": {"name": "n1"}, "status": {"conditions": conditions}}, agent_alive)
    assert view.ready is ready
