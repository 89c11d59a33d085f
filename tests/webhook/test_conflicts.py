"""Rules between policies: conflicting selections and EIP sharing across namespaces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress_cni.api.model import ANNOTATION_ALLOW_EIP_SHARING
from egress_cni.api.selectors import LabelSelector
from tests.webhook.builders import denial, gateway, namespace, policy, validate
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
    assert msg == ("spec.priority: EgressPolicy default/first may select the same pods for overlapping destinations "
                   "(every destination outside the cluster overlaps every destination outside the cluster) with a "
                   "different source address (EIP 10.6.168.202 here, EIP 10.6.168.201 there) at the same priority (unset) "
                   "with equally specific IPv4 destinations (all of IPv4), so neither would win; give one of them a different "
                   "spec.priority or a narrower spec.destSubnet, or make their spec.appliedTo or spec.destSubnet disjoint")


def warnings(response: dict) -> list[str]:
    assert response["allowed"] is True, response
    return list(response.get("warnings", []))


def test_different_priority_is_admitted_with_a_warning_naming_the_winner() -> None:
    found = warnings(validate(policy("second", egress_ip={**EIP, "ipv4": "10.6.168.202"}, priority=10), GW, first()))
    assert found == ["spec.priority: EgressPolicy default/first may select the same pods for overlapping destinations "
                     "(every destination outside the cluster overlaps every destination outside the cluster) with a different "
                     "source address (EIP 10.6.168.202 here, EIP 10.6.168.201 there); this policy wins by priority, "
                     "10 before (unset) (unset comes after every number)"]
    earlier = policy("first", egress_ip=EIP, priority=3)
    found = warnings(validate(policy("second", egress_ip={**EIP, "ipv4": "10.6.168.202"}, priority=10), GW, earlier))
    assert found[0].endswith("; EgressPolicy default/first wins by priority, 3 before 10")


def test_more_specific_destination_is_admitted_with_a_warning_and_equal_size_is_a_tie() -> None:
    a = policy("first", egress_ip=EIP, dest=["10.0.0.0/16"])
    other = {**EIP, "ipv4": "10.6.168.202"}
    narrow = warnings(validate(policy("second", egress_ip=other, dest=["10.0.3.1/24"]), GW, a))
    assert narrow[0] == "spec.destSubnet[0]: has host bits set; it is used as 10.0.3.0/24 (got \"10.0.3.1/24\")"
    assert narrow[1] == ("spec.destSubnet: EgressPolicy default/first may select the same pods for overlapping destinations "
                         "(10.0.3.0/24 overlaps 10.0.0.0/16) with a different source address (EIP 10.6.168.202 here, EIP "
                         "10.6.168.201 there); at equal priority (unset), IPv4: this policy wins "
                         "by the more specific destination, 256 addresses against 65536 addresses")  # fmt: skip
    wide = warnings(validate(policy("second", egress_ip=other, dest=["10.0.0.0/8"]), GW, a))
    assert wide[0].endswith("at equal priority (unset), IPv4: EgressPolicy default/first wins by the more specific "
                            "destination, 65536 addresses against 2^24 addresses")
    same_size = denial(validate(policy("second", egress_ip=other, dest=["10.0.128.0/17", "10.1.0.0/17"]), GW, a))
    assert "(10.0.128.0/17 overlaps 10.0.0.0/16)" in same_size
    assert "at the same priority (unset) with equally specific IPv4 destinations (65536 addresses)" in same_size


def test_each_family_is_decided_on_its_own() -> None:
    """IPv4: the first policy is narrower; IPv6: the second is. Both decided, so admitted; an IPv6
    tie is refused even though IPv4 is decided."""
    a = policy("first", egress_ip=EIP, dest=["10.0.0.0/24", "fd00::/48"])
    other = {**EIP, "ipv4": "10.6.168.202"}
    found = warnings(validate(policy("second", egress_ip=other, dest=["10.0.0.0/16", "fd00::/64"]), GW, a))
    assert found[0].endswith("at equal priority (unset), IPv4: EgressPolicy default/first wins by the more specific "
                             "destination, 256 addresses against 65536 addresses; IPv6: this policy wins by the more specific "
                             "destination, 2^64 addresses against 2^80 addresses")
    tie = denial(validate(policy("second", egress_ip=other, dest=["10.0.0.0/16", "fd00::/48"]), GW, a))
    assert "(fd00::/48 overlaps fd00::/48)" in tie and "equally specific IPv6 destinations (2^80 addresses)" in tie
    # a destSubnet of one family never meets the other family's
    assert warnings(validate(policy("second", egress_ip=other, dest=["fd01::/64"]), GW, a)) == []


def test_overlaps_beyond_a_few_are_counted_not_named() -> None:
    many = [policy(f"p{i}", egress_ip={**EIP, "ipv4": "10.6.168.202"}, dest=[f"10.0.{i}.0/24"]) for i in range(8)]
    found = warnings(validate(policy("wide", egress_ip=EIP, dest=["10.0.0.0/16"]), GW, *many))
    assert len(found) == 6
    assert [w.split(" may select")[0] for w in found[:5]] == [f"spec.destSubnet: EgressPolicy default/p{i}" for i in range(5)]
    assert found[5].startswith("spec: 3 more policies overlap this one with a different source address")


def test_same_eip_is_no_conflict() -> None:
    assert validate(policy("second", egress_ip=EIP), GW, first())["allowed"]
    assert validate(policy("second", egress_ip={**EIP, "ipv4": "10.6.168.201"}), GW, first())["allowed"]


def test_disjoint_destinations_are_no_conflict() -> None:
    a = policy("first", egress_ip=EIP, dest=["10.0.0.0/16"])
    assert warnings(validate(policy("second", egress_ip={**EIP, "ipv4": "10.6.168.202"}, dest=["10.1.0.0/16"]), GW, a)) == []


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
