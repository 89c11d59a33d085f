"""iptables-restore commits table by table: the nat chain is first written as the union of its old and
new rules, so no first packet meets a mangle that sends it out of eth0 and a nat without its SNAT."""

from __future__ import annotations

import pytest

from egress_cni.dataplane.apply import KernelDataplane
from egress_cni.dataplane.plan import IPV4, Chain
from egress_cni.dataplane.xtables import SavedTable

pytestmark = pytest.mark.unit

TUNNEL = "-o egress.vxlan -m comment --comment egw:1111111111:tunnel -j ACCEPT"
SNAT = "-m set --match-set s src -m comment --comment egw:2222222222:snat:ns/p -j SNAT --to-source 10.0.0.9"
LOCAL = "-m set --match-set s src -m comment --comment egw:3333333333:local:ns/p -j MARK --set-xmark 0x26000000/0xffffffff"


def kernel_with_nat(rules: list[str]) -> KernelDataplane:
    k = KernelDataplane.__new__(KernelDataplane)  # no netlink or xtables: only the planning helper is used
    k.saved = {(IPV4, "nat"): SavedTable({"EGRESS-POSTROUTING": rules}, {}, {})}
    return k


def test_a_node_leaving_the_gateway_role_keeps_its_snat_until_mangle_has_changed() -> None:
    k = kernel_with_nat([TUNNEL, SNAT])
    nat = Chain(IPV4, "nat", "EGRESS-POSTROUTING", "POSTROUTING", (TUNNEL,))
    mangle = Chain(IPV4, "mangle", "EGRESS-PREROUTING", "PREROUTING", ())
    assert k._nat_union(IPV4, [mangle, nat]) == [Chain(IPV4, "nat", "EGRESS-POSTROUTING", "POSTROUTING", (TUNNEL, SNAT))]


def test_a_node_becoming_the_gateway_gets_its_snat_before_mangle_marks_local() -> None:
    k = kernel_with_nat([TUNNEL])
    nat = Chain(IPV4, "nat", "EGRESS-POSTROUTING", "POSTROUTING", (TUNNEL, SNAT))
    mangle = Chain(IPV4, "mangle", "EGRESS-PREROUTING", "PREROUTING", (LOCAL,))
    assert k._nat_union(IPV4, [mangle, nat]) == [nat]  # written on its own before the mangle commit


def test_nat_alone_needs_no_first_write() -> None:
    k = kernel_with_nat([TUNNEL, SNAT])
    assert k._nat_union(IPV4, [Chain(IPV4, "nat", "EGRESS-POSTROUTING", "POSTROUTING", (TUNNEL,))]) == []
