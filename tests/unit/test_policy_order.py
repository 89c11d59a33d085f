"""The policy order (`semantics.policy_order`): priority, then the more specific destination per
family, then kind, namespace and name; and the webhook's use of it: an overlap the order decides is
admitted with a warning, a true tie (same priority, equally specific destinations) is refused."""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress_cni.api import semantics
from egress_cni.api.model import EgressClusterPolicy, EgressPolicy, parse_as
from tests.webhook.builders import gateway, policy, validate

pytestmark = pytest.mark.unit


def parsed(name: str = "p", *, cluster: bool = False, namespace: str = "default", dest: list[str] | None = None,
           priority: int | None = None) -> EgressPolicy:
    cls = EgressClusterPolicy if cluster else EgressPolicy
    return parse_as(cls, policy(name, namespace, cluster=cluster, dest=dest, priority=priority))


@pytest.mark.parametrize(("dest", "v4", "v6"), [
    (None, 1 << 32, 1 << 128),  # no destSubnet: every destination outside the cluster, the whole family
    (["0.0.0.0/0"], 1 << 32, 0),  # the same size as none, for IPv4; it steers no IPv6
    (["10.0.0.0/24"], 256, 0),
    (["10.0.0.7/32"], 1, 0),
    (["10.0.0.0/24", "10.0.0.128/25", "10.0.1.0/24"], 512, 0),  # the union: a nested CIDR adds nothing
    (["10.0.0.1/24", "fd00::/64"], 256, 1 << 64),  # host bits dropped before counting
    (["fd00::/64", "fd00::/48"], 0, 1 << 80),
])
def test_destination_size_counts_the_union_per_family(dest: list[str] | None, v4: int, v6: int) -> None:
    p = parsed(dest=dest)
    assert (semantics.destination_size(p, 4), semantics.destination_size(p, 6)) == (v4, v6)


def test_order_is_priority_then_specificity_then_kind_then_name() -> None:
    ps = [
        parsed("z-first", priority=1),  # the lowest priority wins, however broad
        parsed("host", cluster=True, dest=["10.1.2.3/32"]),  # specificity before kind: a narrow cluster policy
        parsed("b", dest=["10.1.0.0/16"]),
        parsed("a", dest=["10.1.0.0/16", "fd00::/64"]),  # ties on size with b for IPv4: name decides
        parsed("wide", cluster=True, dest=["10.0.0.0/8"]),
        parsed("a", namespace="zz", dest=["10.0.0.0/8"]),  # namespaced before cluster at equal size
        parsed("none"),  # no destSubnet: after every explicit one of the same priority
    ]
    v4 = sorted(ps, key=lambda p: semantics.policy_order(p, 4))
    assert [f"{p.KIND}/{p.metadata.key}" for p in v4] == [
        "EgressPolicy/default/z-first", "EgressClusterPolicy/host", "EgressPolicy/default/a", "EgressPolicy/default/b",
        "EgressPolicy/zz/a", "EgressClusterPolicy/wide", "EgressPolicy/default/none"]
    v6 = [p.metadata.key for p in sorted(ps, key=lambda p: semantics.policy_order(p, 6)) if semantics.destination_size(p, 6)]
    assert v6 == ["default/z-first", "default/a", "default/none"]  # IPv6 destinations decide IPv6 alone


def test_absent_priority_comes_after_every_number() -> None:
    assert semantics.priority_rank(parsed(priority=2**62)) < semantics.priority_rank(parsed())


PREFIXES = [f"10.0.0.{a}/{p}" for p in (28, 29, 30, 31, 32) for a in range(0, 16, 1 << (32 - p))]
policies = st.builds(lambda name, cluster, ns, dest, prio: parsed(name, cluster=cluster, namespace=ns, dest=dest, priority=prio),
                     st.sampled_from(["a", "b", "c"]), st.booleans(), st.sampled_from(["x", "y"]),
                     st.one_of(st.none(), st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=3)),
                     st.one_of(st.none(), st.integers(0, 2)))


def _identity(p: EgressPolicy) -> tuple[str, str]:
    return p.KIND, p.metadata.key


@settings(max_examples=300, deadline=None)
@given(st.lists(policies, max_size=8, unique_by=lambda p: _identity(p)))
def test_order_is_total_and_antisymmetric(ps: list[EgressPolicy]) -> None:
    for family in (4, 6):
        for a, b in itertools.combinations(ps, 2):
            ka, kb = semantics.policy_order(a, family), semantics.policy_order(b, family)
            assert ka != kb and (ka < kb) != (kb < ka)  # distinct objects never tie
        once = sorted(ps, key=lambda p: semantics.policy_order(p, family))
        again = sorted(reversed(ps), key=lambda p: semantics.policy_order(p, family))
        assert [_identity(p) for p in once] == [_identity(p) for p in again]  # whatever the input order


def _addresses(dest: list[str] | None) -> set[int] | None:
    """The IPv4 addresses a destSubnet names, brute force; None for everywhere."""
    if dest is None:
        return None
    return {int(a) for c in dest for a in ipaddress.ip_network(c, strict=False)}


GW = gateway(ipv4=["10.6.168.201-10.6.168.205"], default4="10.6.168.201")
EIPS = ["10.6.168.201", "10.6.168.202"]
dests = st.one_of(st.none(), st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=3))


@settings(max_examples=300, deadline=None)
@given(a_dest=dests, b_dest=dests, a_prio=st.one_of(st.none(), st.integers(0, 2)), b_prio=st.one_of(st.none(), st.integers(0, 2)),
       same_eip=st.booleans())
def test_webhook_refuses_iff_true_tie(a_dest: list[str] | None, b_dest: list[str] | None, a_prio: int | None,
                                      b_prio: int | None, same_eip: bool) -> None:
    """Two policies selecting the same pods; oracle by enumerating addresses: refused iff their
    destinations overlap, their source addresses differ and they tie on priority and size."""
    eip: dict[str, Any] = {"allocatorPolicy": "default", "useNodeIP": False}
    first = policy("first", dest=a_dest, priority=a_prio, egress_ip={**eip, "ipv4": EIPS[0]})
    second = policy("second", dest=b_dest, priority=b_prio, egress_ip={**eip, "ipv4": EIPS[0 if same_eip else 1]})
    xs, ys = _addresses(a_dest), _addresses(b_dest)
    overlap = xs is None or ys is None or bool(xs & ys)
    size = [(1 << 32) if s is None else len(s) for s in (xs, ys)]
    tie = a_prio == b_prio and size[0] == size[1]
    response = validate(second, GW, first)
    assert response["allowed"] is not (overlap and not same_eip and tie), response
    overlap_warnings = [w for w in response.get("warnings", []) if "may select the same pods" in w]
    assert bool(overlap_warnings) == (response["allowed"] and overlap and not same_eip)
