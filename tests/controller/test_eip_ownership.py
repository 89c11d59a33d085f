"""One owner per named EIP across namespaces (placement.eip_owner, place_gateway), pure."""

from __future__ import annotations

from typing import Any

import pytest

from egress_cni.api.model import ANNOTATION_ALLOW_EIP_SHARING, EgressIP, EipStatus, GatewayNodeStatus, GatewayStatus, PolicyRef
from egress_cni.controller.placement import ASSIGNED, EIP_CONFLICT, PolicyView, eip_owner, place_gateway
from tests.controller.test_placement import again, gateway, nodes

pytestmark = pytest.mark.unit

GW = gateway(["10.6.1.1-10.6.1.9"], default4="10.6.1.1")
SHARED = gateway(["10.6.1.1-10.6.1.9"], default4="10.6.1.1", annotations={ANNOTATION_ALLOW_EIP_SHARING: "true"})


def view(namespace: str, name: str, created: str, **eip: Any) -> PolicyView:
    return PolicyView(PolicyRef(name, namespace), EgressIP(**eip), created=created)


def test_eip_owner_keeps_a_second_namespace_out_of_a_named_eip() -> None:
    a = view("a", "p", "t1", ipv4="10.6.1.5")
    b = view("b", "p", "t2", ipv4="10.6.1.5")
    assert eip_owner([a], b) == a
    assert eip_owner([a], view("a", "q", "t3", ipv4="10.6.1.5")) is None  # same namespace: shared
    assert eip_owner([a], view("", "cluster", "t3", ipv4="10.6.1.5")) is None  # cluster policies are not kept out
    assert eip_owner([view("", "cluster", "t0", ipv4="10.6.1.5")], b) is None  # nor do they claim
    assert eip_owner([a], view("b", "default", "t3")) is None  # not named: the default EIP is shared


def test_two_namespaces_naming_one_eip_end_with_the_older_as_owner() -> None:
    a = view("a", "p", "2026-01-01T00:00:02Z", ipv4="10.6.1.5")
    b = view("b", "p", "2026-01-01T00:00:01Z", ipv4="10.6.1.5")  # older
    out = place_gateway(GW, [a, b], nodes("n1"), {})
    won, lost = out.assignments[b.ref], out.assignments[a.ref]
    assert (won.reason, won.ipv4, won.node) == (ASSIGNED, "10.6.1.5", "n1")
    assert (lost.reason, lost.ipv4, lost.node) == (EIP_CONFLICT, None, "")
    assert "EgressPolicy b/p of namespace b" in lost.message and ANNOTATION_ALLOW_EIP_SHARING in lost.message
    assert [r for n in out.node_list for e in n.eips for r in e.policies] == [b.ref]
    # Stable: the next pass (the nodeList written) decides the same.
    assert place_gateway(again(GW, out), [a, b], nodes("n1"), {}).assignments == out.assignments


def test_ties_in_creation_time_go_by_namespace_and_name() -> None:
    a, b = view("a", "p", "t", ipv4="10.6.1.5"), view("b", "p", "t", ipv4="10.6.1.5")
    out = place_gateway(GW, [b, a], nodes("n1"), {})
    assert out.assignments[a.ref].reason == ASSIGNED and out.assignments[b.ref].reason == EIP_CONFLICT


def test_the_policy_the_nodelist_lists_keeps_the_eip_against_an_older_newcomer() -> None:
    holder = view("a", "p", "2026-01-01T00:00:09Z", ipv4="10.6.1.5")
    older = view("b", "p", "2026-01-01T00:00:01Z", ipv4="10.6.1.5")
    status = GatewayStatus(node_list=(GatewayNodeStatus("n1", "Ready", (EipStatus("10.6.1.5", None, (holder.ref,)),)),))
    gw = gateway(["10.6.1.1-10.6.1.9"], default4="10.6.1.1", status=status)
    out = place_gateway(gw, [holder, older], nodes("n1"), {})
    assert out.assignments[holder.ref].reason == ASSIGNED and out.assignments[older.ref].reason == EIP_CONFLICT


def test_a_recorded_entry_with_two_namespaces_is_cut_down_to_its_owner() -> None:
    """A nodeList written before the rule (or by a racing writer) listing both namespaces."""
    a = view("a", "p", "t1", ipv4="10.6.1.5")
    b = view("b", "p", "t2", ipv4="10.6.1.5")
    status = GatewayStatus(node_list=(GatewayNodeStatus("n1", "Ready", (EipStatus("10.6.1.5", None, (a.ref, b.ref)),)),))
    gw = gateway(["10.6.1.1-10.6.1.9"], default4="10.6.1.1", status=status)
    out = place_gateway(gw, [a, b], nodes("n1"), {})
    assert out.assignments[a.ref].reason == ASSIGNED and out.assignments[b.ref].reason == EIP_CONFLICT
    assert [r for n in out.node_list for e in n.eips for r in e.policies] == [a.ref]


def test_a_named_eip_cannot_join_an_eip_another_namespace_got_by_default() -> None:
    """As the webhook's policy-eip-shared: 'used' includes what the other policy was allocated."""
    by_default = view("a", "d", "t1")
    named = view("b", "p", "t2", ipv4="10.6.1.1")  # the gateway's default EIP, named
    out = place_gateway(GW, [by_default, named], nodes("n1"), {})
    assert out.assignments[by_default.ref].ipv4 == "10.6.1.1" and out.assignments[named.ref].reason == EIP_CONFLICT


def test_default_eip_and_cluster_policies_still_share() -> None:
    policies = [view("a", "d", "t1"), view("b", "d", "t2"), view("", "c", "t3", ipv4="10.6.1.1")]
    out = place_gateway(GW, policies, nodes("n1"), {})
    assert all(out.assignments[p.ref].reason == ASSIGNED and out.assignments[p.ref].ipv4 == "10.6.1.1" for p in policies)


def test_the_gateway_can_consent_to_sharing() -> None:
    a, b = view("a", "p", "t1", ipv4="10.6.1.5"), view("b", "p", "t2", ipv4="10.6.1.5")
    out = place_gateway(SHARED, [a, b], nodes("n1"), {})
    assert {out.assignments[p.ref].reason for p in (a, b)} == {ASSIGNED}


def test_when_the_owner_goes_the_next_in_line_gets_the_eip() -> None:
    a, b = view("a", "p", "t1", ipv4="10.6.1.5"), view("b", "p", "t2", ipv4="10.6.1.5")
    first = place_gateway(GW, [a, b], nodes("n1"), {})
    out = place_gateway(again(GW, first), [b], nodes("n1"), {})
    assert (out.assignments[b.ref].reason, out.assignments[b.ref].ipv4) == (ASSIGNED, "10.6.1.5")


def test_a_status_holder_the_nodelist_lost_comes_before_an_older_newcomer() -> None:
    """After a total outage (nobody in the nodeList) the policy whose status shows the EIP keeps it."""
    holder = PolicyView(PolicyRef("p", "a"), EgressIP(ipv4="10.6.1.5"), created="t9", reserved_ipv4="10.6.1.5")
    older = view("b", "p", "t1", ipv4="10.6.1.5")
    out = place_gateway(GW, [older, holder], nodes("n1"), {})
    assert out.assignments[holder.ref].reason == ASSIGNED and out.assignments[older.ref].reason == EIP_CONFLICT
