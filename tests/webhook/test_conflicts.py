"""Rules between policies: conflicting selections and EIP sharing across namespaces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress_cni.api.selectors import LabelSelector
from tests.webhook.builders import denial, gateway, namespace, policy, validate
from webhook.config import ANNOTATION_ALLOW_EIP_SHARING
from webhook.conflicts import selectors_may_overlap
from webhook.subnets import Span, any_overlap

pytestmark = pytest.mark.unit

GW = gateway(ipv4=["10.6.168.201-10.6.168.205"], default4="10.6.168.201")
EIP = {"allocatorPolicy": "default", "useNodeIP": False}


def sel(raw: dict) -> LabelSelector:
    return LabelSelector.parse(raw, "s")


@pytest.mark.parametrize(("a", "b", "overlap"), [
    ({"matchLabels": {"app": "a"}}, {"matchLabels": {"app": "a"}}, True),
    ({"matchLabels": {"app": "a"}}, {"matchLabels": {"app": "b"}}, False),
    ({"matchLabels": {"app": "a"}}, {"matchLabels": {"tier": "web"}}, True),
    ({}, {"matchLabels": {"app": "b"}}, True),
    ({"matchLabels": {"app": "a"}}, {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}, False),
    ({"matchLabels": {"app": "a"}}, {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]},
     {"matchExpressions": [{"key": "app", "operator": "In", "values": ["b", "c"]}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]},
     {"matchExpressions": [{"key": "app", "operator": "In", "values": ["c"]}]}, False),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]},
     {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "Exists"}]},
     {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}, True),
])
def test_selector_overlap_is_exact(a: dict, b: dict, overlap: bool) -> None:
    assert selectors_may_overlap(sel(a), sel(b)) is overlap
    assert selectors_may_overlap(sel(b), sel(a)) is overlap


def first() -> dict:
    return policy("first", egress_ip=EIP)


def test_conflicting_policies_are_rejected_naming_the_other() -> None:
    msg = denial(validate(policy("second", egress_ip={**EIP, "ipv4": "10.6.168.202"}), GW, first()))
    assert msg.startswith("spec.priority: EgressPolicy default/first may select the same pods for overlapping destinations "
                          "(every destination outside the cluster overlaps every destination outside the cluster) with a "
                          "different source address (EIP 10.6.168.202 here, EIP 10.6.168.201 there) at the same priority 0")


def test_different_priority_resolves_the_conflict() -> None:
    assert validate(policy("second", egress_ip={**EIP, "ipv4": "10.6.168.202"}, priority=10), GW, first())["allowed"]


def test_same_eip_is_no_conflict() -> None:
    assert validate(policy("second", egress_ip=EIP), GW, first())["allowed"]
    assert validate(policy("second", egress_ip={**EIP, "ipv4": "10.6.168.201"}), GW, first())["allowed"]


def test_disjoint_destinations_are_no_conflict() -> None:
    a = policy("first", egress_ip=EIP, dest=["10.0.0.0/16"])
    assert validate(policy("second", egress_ip={**EIP, "ipv4": "10.6.168.202"}, dest=["10.1.0.0/16"]), GW, a)["allowed"]
    msg = denial(validate(policy("second", egress_ip={**EIP, "ipv4": "10.6.168.202"}, dest=["10.0.3.0/24"]), GW, a))
    assert "(10.0.3.0/24 overlaps 10.0.0.0/16)" in msg


def test_disjoint_selectors_and_namespaces_are_no_conflict() -> None:
    other = {**EIP, "ipv4": "10.6.168.202"}
    assert validate(policy("second", pod_labels={"app": "other"}, egress_ip=other), GW, first())["allowed"]
    assert validate(policy("second", namespace="prod", egress_ip=other), GW, first())["allowed"]


def test_pod_subnet_policies() -> None:
    a = policy("first", pod_subnet=["10.244.0.0/24"], egress_ip=EIP)
    other = {**EIP, "ipv4": "10.6.168.202"}
    assert validate(policy("second", pod_subnet=["10.244.1.0/24"], egress_ip=other), GW, a)["allowed"]
    assert denial(validate(policy("second", pod_subnet=["10.244.0.0/16"], egress_ip=other), GW, a))
    assert denial(validate(policy("second", egress_ip=other), GW, a))  # labels vs subnet could be the same pod


def test_cluster_policy_against_namespaced_policy_uses_namespace_labels() -> None:
    other = {**EIP, "ipv4": "10.6.168.202"}
    prod = namespace("default", {"env": "prod"})
    hits = policy("cp", cluster=True, namespace_selector={"matchLabels": {"env": "prod"}}, egress_ip=other)
    misses = policy("cp", cluster=True, namespace_selector={"matchLabels": {"env": "dev"}}, egress_ip=other)
    assert "EgressPolicy default/first" in denial(validate(hits, GW, prod, first()))
    assert validate(misses, GW, prod, first())["allowed"]
    everywhere = policy("cp", cluster=True, egress_ip=other)
    assert denial(validate(everywhere, GW, prod, first()))


def test_cluster_policies_compare_namespace_selectors() -> None:
    a = policy("a", cluster=True, namespace_selector={"matchLabels": {"env": "prod"}}, egress_ip=EIP)
    other = {**EIP, "ipv4": "10.6.168.202"}
    assert validate(policy("b", cluster=True, namespace_selector={"matchLabels": {"env": "dev"}}, egress_ip=other), GW, a)["allowed"]
    assert "EgressClusterPolicy a" in denial(
        validate(policy("b", cluster=True, namespace_selector={"matchLabels": {"team": "x"}}, egress_ip=other), GW, a))


def test_update_does_not_conflict_with_itself() -> None:
    p = policy("first", egress_ip={**EIP, "ipv4": "10.6.168.202"})
    assert validate(p, GW, p, operation="UPDATE", old=p)["allowed"]


def test_round_robin_and_node_ip_differ_from_default() -> None:
    assert denial(validate(policy("second", egress_ip={"allocatorPolicy": "rr", "useNodeIP": False}), GW, first()))
    assert denial(validate(policy("second", egress_ip={"allocatorPolicy": "default", "useNodeIP": True}), GW, first()))


def test_eip_named_in_another_namespace_needs_sharing() -> None:
    theirs = policy("theirs", namespace="team-a", egress_ip={**EIP, "ipv4": "10.6.168.203"})
    mine = policy("mine", namespace="team-b", egress_ip={**EIP, "ipv4": "10.6.168.203"})
    msg = denial(validate(mine, GW, theirs))
    assert msg.startswith("spec.egressIP.ipv4: is already used by EgressPolicy team-a/theirs of namespace team-a")
    assert ANNOTATION_ALLOW_EIP_SHARING in msg
    sharing = gateway(ipv4=["10.6.168.201-10.6.168.205"], default4="10.6.168.201", annotations={ANNOTATION_ALLOW_EIP_SHARING: "true"})
    assert validate(mine, sharing, theirs)["allowed"]
    assert validate(policy("mine", namespace="team-a", egress_ip={**EIP, "ipv4": "10.6.168.203"}, pod_labels={"x": "y"}),
                    GW, theirs)["allowed"]


def test_eip_allocated_in_status_counts_as_used() -> None:
    theirs = policy("theirs", namespace="team-a", egress_ip={"allocatorPolicy": "rr"}, status_eip={"ipv4": "10.6.168.204"})
    assert "team-a/theirs" in denial(validate(policy("mine", namespace="team-b", egress_ip={**EIP, "ipv4": "10.6.168.204"}), GW, theirs))


_spans = st.lists(st.builds(lambda v, f, w: Span(v, f, f + w, ""), st.sampled_from([4, 6]), st.integers(0, 60), st.integers(0, 12)),
                  max_size=16)  # past 64 pairs: the sweep, below: pair by pair


@settings(max_examples=500, deadline=None)
@given(a=_spans, b=_spans)
def test_overlap_agrees_with_comparing_every_pair(a: list[Span], b: list[Span]) -> None:
    brute = any(x.version == y.version and x.first <= y.last and y.first <= x.last for x in a for y in b)
    found = any_overlap(a, b)
    assert (found is not None) == brute
    if found is not None:
        x, y = found
        assert x in a and y in b and x.version == y.version and x.first <= y.last and y.first <= x.last


def test_overlap_of_thousands_of_cidrs_is_a_sweep_not_a_product() -> None:
    a = [Span(4, i * 4, i * 4 + 1, "") for i in range(20000)]
    b = [Span(4, i * 4 + 2, i * 4 + 3, "") for i in range(20000)]
    assert any_overlap(a, b) is None  # 4e8 pairs compared one by one would take minutes
