"""The sandbox plan: the walkthrough's addresses on-link, unique names, v6 mirroring v4."""

from __future__ import annotations

import ipaddress

import pytest

from devtools.sandbox.plan import UNDERLAY_V4, build_plan

pytestmark = pytest.mark.unit


def test_walkthrough_addresses_are_on_link() -> None:
    plan = build_plan()
    assert plan.external.ipv4 == "10.6.168.63"
    for eip in ("10.6.168.201", "10.6.168.205"):
        assert ipaddress.ip_address(eip) in UNDERLAY_V4
    assert [n.endpoint.ipv4 for n in plan.nodes] == ["10.6.168.11", "10.6.168.12", "10.6.168.13"]
    assert [n.endpoint.ipv6 for n in plan.nodes] == ["fd10:6:168::11", "fd10:6:168::12", "fd10:6:168::13"]


def test_names_and_subnets_are_unique() -> None:
    plan = build_plan()
    assert len(set(plan.netns_names)) == len(plan.netns_names) == 6
    assert plan.netns_names[-1] == plan.underlay_netns
    assert len({n.pod_cidr_v4 for n in plan.nodes}) == 3
    assert all(len(e.host_veth) <= 15 for e in plan.endpoints)


def test_rejects_names_that_do_not_fit_an_interface() -> None:
    with pytest.raises(ValueError, match="15 characters"):
        build_plan(prefix="a-very-long-prefix")
