"""EIP choice and node placement (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from egress_cni.api.model import EgressGateway, EgressIP, EipStatus, GatewayNodeStatus, GatewayStatus, PolicyRef
from egress_cni.controller.placement import (
    ANNOTATION_RR_LAST,
    INVALID_EIP,
    NO_ELIGIBLE_NODE,
    POOL_EXHAUSTED,
    NodeView,
    Placement,
    PolicyView,
    place_gateway,
)

pytestmark = pytest.mark.unit


def gateway(v4: list[str] | None = None, v6: list[str] | None = None, default4: str = "", default6: str = "",
            annotations: dict[str, str] | None = None, status: GatewayStatus | None = None) -> EgressGateway:
    raw: dict[str, Any] = {
        "apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressGateway",
        "metadata": {"name": "gw", "annotations": annotations or {}},
        "spec": {"ippools": {"ipv4": v4 or [], "ipv6": v6 or [], "ipv4DefaultEIP": default4, "ipv6DefaultEIP": default6},
                 "nodeSelector": {"selector": {"matchLabels": {"egress": "true"}}}},
    }
    gw = EgressGateway.parse(raw)
    if status is not None:
        gw = EgressGateway(gw.metadata, gw.spec, status)
    return gw


def nodes(*names: str, **overrides: dict[str, Any]) -> list[NodeView]:
    return [NodeView(n, {"egress": "true"}, **overrides.get(n, {})) for n in names]


def policy(name: str, **eip: Any) -> PolicyView:
    return PolicyView(PolicyRef(name, "ns"), EgressIP(**eip), created=name)


def again(gw: EgressGateway, placed: Placement) -> EgressGateway:
    """The gateway as the API would hold it after the controller wrote `placed`."""
    annotations = {ANNOTATION_RR_LAST: placed.rr_last} if placed.rr_last else {}
    meta = type(gw.metadata)(name=gw.metadata.name, annotations=annotations)
    return EgressGateway(meta, gw.spec, GatewayStatus(node_list=placed.node_list))


def test_default_policies_share_the_default_eip_on_one_node() -> None:
    gw = gateway(["10.6.1.1-10.6.1.9"], default4="10.6.1.5")
    out = place_gateway(gw, [policy("a"), policy("b")], nodes("n1", "n2"), {})
    a, b = out.assignments[PolicyRef("a", "ns")], out.assignments[PolicyRef("b", "ns")]
    assert (a.ipv4, a.node) == ("10.6.1.5", "n1") and (b.ipv4, b.node) == ("10.6.1.5", "n1") and a.ready
    assert out.ip_usage.ipv4_total == 9 and out.ip_usage.ipv4_free == 8
    assert [len(n.eips) for n in out.node_list] == [1, 0]


def test_rr_walks_the_pool_and_spreads_over_nodes() -> None:
    gw = gateway(["10.6.1.1-10.6.1.4"])
    out = place_gateway(gw, [policy("a", allocator_policy="rr"), policy("b", allocator_policy="rr")], nodes("n1", "n2"), {})
    a, b = out.assignments[PolicyRef("a", "ns")], out.assignments[PolicyRef("b", "ns")]
    assert (a.ipv4, a.node, b.ipv4, b.node) == ("10.6.1.1", "n1", "10.6.1.2", "n2")
    # b is deleted; a new rr policy gets .3 (not the freed .2): round robin, not lowest free.
    gw2 = again(gw, out)
    out2 = place_gateway(gw2, [policy("a", allocator_policy="rr"), policy("c", allocator_policy="rr")], nodes("n1", "n2"), {})
    assert out2.assignments[PolicyRef("c", "ns")].ipv4 == "10.6.1.3"
    assert out2.assignments[PolicyRef("a", "ns")] == a


def test_rr_pool_exhausted() -> None:
    gw = gateway(["10.6.1.1"])
    out = place_gateway(gw, [policy("a", allocator_policy="rr"), policy("b", allocator_policy="rr")], nodes("n1"), {})
    assert out.assignments[PolicyRef("b", "ns")].reason == POOL_EXHAUSTED
    assert out.ip_usage.ipv4_free == 0


def test_explicit_eip_must_be_in_pool_and_wins_over_rr() -> None:
    gw = gateway(["10.6.1.1-10.6.1.4"], ["fd00::1-fd00::4"])
    out = place_gateway(gw, [policy("a", ipv4="10.6.1.3", ipv6="fd00::2", allocator_policy="rr"), policy("bad", ipv4="10.9.9.9")],
                        nodes("n1"), {})
    a = out.assignments[PolicyRef("a", "ns")]
    assert (a.ipv4, a.ipv6) == ("10.6.1.3", "fd00::2")
    assert out.assignments[PolicyRef("bad", "ns")].reason == INVALID_EIP


def test_use_node_ip_and_empty_pools() -> None:
    gw = gateway()
    out = place_gateway(gw, [policy("a", use_node_ip=True), policy("b")], nodes("n1"), {})
    a = out.assignments[PolicyRef("a", "ns")]
    assert (a.ipv4, a.ipv6, a.node) == (None, None, "n1") and a.ready
    assert out.assignments[PolicyRef("b", "ns")].reason == POOL_EXHAUSTED
    assert out.node_list[0].eips == (EipStatus("", "", (PolicyRef("a", "ns"),)),)


def test_failover_spreads_and_never_flaps_back() -> None:
    gw = gateway(["10.6.1.1-10.6.1.9"])
    pols = [policy(f"p{i}", allocator_policy="rr") for i in range(6)]
    out = place_gateway(gw, pols, nodes("n1", "n2", "n3"), {})
    assert sorted(a.node for a in out.assignments.values()) == ["n1", "n1", "n2", "n2", "n3", "n3"]
    # n1's agent stops: its two EIPs go one to n2 and one to n3, keeping their addresses.
    dead = nodes("n1", "n2", "n3", n1={"agent_alive": False})
    out2 = place_gateway(again(gw, out), pols, dead, {})
    assert sorted(a.node for a in out2.assignments.values()) == ["n2", "n2", "n2", "n3", "n3", "n3"]
    assert {r: a.ipv4 for r, a in out2.assignments.items()} == {r: a.ipv4 for r, a in out.assignments.items()}
    assert len(out2.moves) == 2 and {m.target for m in out2.moves} == {"n2", "n3"} and out2.moves[0].why == "HeartbeatTimeout"
    assert out2.node_list[0].status == "HeartbeatTimeout"
    # n1 recovers: nothing moves back.
    out3 = place_gateway(again(gw, out2), pols, nodes("n1", "n2", "n3"), {})
    assert out3.assignments == out2.assignments and not out3.moves


def test_cordon_and_unlabel_move_eips() -> None:
    gw = gateway(["10.6.1.1-10.6.1.9"], default4="10.6.1.1")
    out = place_gateway(gw, [policy("a")], nodes("n1", "n2"), {})
    assert out.assignments[PolicyRef("a", "ns")].node == "n1"
    out2 = place_gateway(again(gw, out), [policy("a")], nodes("n1", "n2", n1={"unschedulable": True}), {})
    assert out2.assignments[PolicyRef("a", "ns")].node == "n2" and out2.moves[0].why == "Cordoned"
    unlabelled = [NodeView("n1", {}), NodeView("n2", {})]
    out3 = place_gateway(again(gw, out2), [policy("a")], unlabelled, {})
    assert out3.assignments[PolicyRef("a", "ns")].reason == NO_ELIGIBLE_NODE
    assert out3.assignments[PolicyRef("a", "ns")].ipv4 == "10.6.1.1" and out3.node_list == ()


def test_reserved_eip_survives_total_outage() -> None:
    gw = gateway(["10.6.1.1-10.6.1.9"])
    p = PolicyView(PolicyRef("a", "ns"), EgressIP(allocator_policy="rr"), reserved_ipv4="10.6.1.7")
    out = place_gateway(gw, [p], nodes("n1"), {})
    assert out.assignments[p.ref].ipv4 == "10.6.1.7"


def test_load_is_shared_between_gateways_and_restart_is_stable() -> None:
    gw = gateway(["10.6.1.1-10.6.1.9"])
    out = place_gateway(gw, [policy("a", allocator_policy="rr")], nodes("n1", "n2"), {"n1": 3})
    assert out.assignments[PolicyRef("a", "ns")].node == "n2" and out.load == {"n1": 3, "n2": 1}
    status = GatewayStatus(node_list=(GatewayNodeStatus("n1", "Ready", (EipStatus("10.6.1.4", "", (PolicyRef("a", "ns"),)),)),))
    kept = place_gateway(gateway(["10.6.1.1-10.6.1.9"], status=status), [policy("a", allocator_policy="rr")], nodes("n1", "n2"), {})
    assert kept.assignments[PolicyRef("a", "ns")].ipv4 == "10.6.1.4" and not kept.moves


def test_dual_stack_rr_and_default_pair() -> None:
    gw = gateway(["10.6.1.1-10.6.1.3"], ["fd00::1-fd00::3"], default4="10.6.1.2", default6="fd00::3")
    out = place_gateway(gw, [policy("d"), policy("r", allocator_policy="rr"), policy("v6", ipv6="fd00::2")], nodes("n1", "n2"), {})
    d, r, v6 = (out.assignments[PolicyRef(n, "ns")] for n in ("d", "r", "v6"))
    assert (d.ipv4, d.ipv6) == ("10.6.1.2", "fd00::3")
    assert (r.ipv4, r.ipv6) == ("10.6.1.1", "fd00::1")  # the default pair is taken, rr walks past it
    assert (v6.ipv4, v6.ipv6) == (None, "fd00::2") and v6.ready
    assert (out.ip_usage.ipv4_free, out.ip_usage.ipv6_free) == (1, 0)
    assert out.rr_last == "10.6.1.1,fd00::1"


def test_default_eip_outside_the_pool_is_reported() -> None:
    gw = gateway(["10.6.1.1-10.6.1.3"], default4="10.9.9.9")
    out = place_gateway(gw, [policy("d")], nodes("n1"), {})
    assert out.assignments[PolicyRef("d", "ns")].reason == INVALID_EIP and "ipv4DefaultEIP" in out.assignments[PolicyRef("d", "ns")].message


def _entry(placed: Placement, ip: str) -> tuple[str, EipStatus]:
    return next((n.name, e) for n in placed.node_list for e in n.eips if e.ipv4 == ip)


def test_standbys_are_the_other_eligible_nodes_least_loaded_first_and_stay_put() -> None:
    gw = gateway(["10.6.1.1-10.6.1.9"])
    first = place_gateway(gw, [policy("a", allocator_policy="rr")], nodes("n1", "n2", "n3", "n4"), {"n3": 2, "n2": 1})
    node, eip = _entry(first, "10.6.1.1")
    assert node == "n1" and eip.standbys == ("n4", "n2", "n3")
    # more load on n4 later: the recorded order stays (agents follow it); an ineligible node drops out
    later = place_gateway(again(gw, first), [policy("a", allocator_policy="rr")],
                          nodes("n1", "n2", "n3", "n4", "n5", n2={"ready": False}), {"n4": 5})
    assert _entry(later, "10.6.1.1")[1].standbys == ("n4", "n3", "n5")
    assert not later.moves


def test_a_reported_takeover_becomes_the_record() -> None:
    gw = gateway(["10.6.1.1-10.6.1.9"])
    first = place_gateway(gw, [policy("a", allocator_policy="rr")], nodes("n1", "n2", "n3"), {})
    assert _entry(first, "10.6.1.1")[0] == "n1"
    took = place_gateway(again(gw, first), [policy("a", allocator_policy="rr")], nodes("n1", "n2", "n3"), {},
                         {"10.6.1.1": frozenset({"n2"})})
    node, eip = _entry(took, "10.6.1.1")
    assert node == "n2" and eip.standbys == ("n3", "n1")
    assert [(m.source, m.target, m.why) for m in took.moves] == [("n1", "n2", "TakenOver")]
    assert took.assignments[PolicyRef("a", "ns")].node == "n2"
    # the recorded node still reports it too, or two others do, or the reporter is not eligible: no move
    for reported, overrides in (({"10.6.1.1": frozenset({"n1", "n2"})}, {}), ({"10.6.1.1": frozenset({"n2", "n3"})}, {}),
                                ({"10.6.1.1": frozenset({"n2"})}, {"n2": {"unschedulable": True}})):
        same = place_gateway(again(gw, first), [policy("a", allocator_policy="rr")], nodes("n1", "n2", "n3", **overrides),
                             {}, reported)
        assert _entry(same, "10.6.1.1")[0] == "n1" and not same.moves
