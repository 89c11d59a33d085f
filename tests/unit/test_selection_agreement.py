"""Property: the agent and the controller select the same pods for every policy.

Hypothesis generates namespaces, pods (labels, IPv4/IPv6 addresses) and policies of both kinds
(podSelector with matchLabels and matchExpressions, namespaceSelector, podSubnet, and the
combinations the webhook refuses but the API may still hold). The controller's answer is its
endpoint slices (`controller.slices.selected_pods`); the agent's is the selection its full
reconcile computes for the pods registered on its node (`dataplane.compute.desired_dataplane`),
plus, for policies that match a whole subnet, what that subnet's set holds.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress_cni.api import semantics
from egress_cni.api.meta import ObjectMeta
from egress_cni.api.model import AppliedTo, EgressClusterPolicy, EgressPolicy, PolicySpec
from egress_cni.api.net import Cidr, CidrMode
from egress_cni.api.selectors import LabelSelector
from egress_cni.controller.slices import PodView, selected_pods
from egress_cni.dataplane.compute import desired_dataplane, policy_key
from egress_cni.dataplane.inputs import ClusterState, DataplaneConfig, LocalEndpoint, NodeFacts

pytestmark = pytest.mark.unit

NAMESPACES = ["a", "b", "c"]
KEYS = ["app", "tier", "team"]
VALUES = ["x", "y", "z"]
SUBNETS = ["10.244.0.0/16", "10.244.1.0/24", "10.244.2.0/25", "10.244.1.7/32", "fd40::/64", "fd40::/120", "0.0.0.0/0"]

labels = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
expression = st.one_of(
    st.fixed_dictionaries({"key": st.sampled_from(KEYS), "operator": st.sampled_from(["In", "NotIn"]),
                           "values": st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True)}),
    st.fixed_dictionaries({"key": st.sampled_from(KEYS), "operator": st.sampled_from(["Exists", "DoesNotExist"])}),
)
selector_raw = st.fixed_dictionaries({}, optional={"matchLabels": labels,
                                                   "matchExpressions": st.lists(expression, max_size=2)})


def selector(raw: dict[str, Any] | None) -> LabelSelector | None:
    return None if raw is None else LabelSelector.parse(raw, "s")


@st.composite
def policies(draw: st.DrawFn) -> EgressPolicy:
    cluster = draw(st.booleans())
    pod_selector = draw(st.none() | selector_raw)
    subnet = tuple(Cidr(s) for s in draw(st.lists(st.sampled_from(SUBNETS), max_size=2, unique=True)))
    ns_selector = draw(st.none() | selector_raw) if cluster else None
    applied = AppliedTo(pod_selector=selector(pod_selector), pod_subnet=subnet, namespace_selector=selector(ns_selector))
    name = f"p{draw(st.integers(0, 999))}"
    cls = EgressClusterPolicy if cluster else EgressPolicy
    return cls(ObjectMeta(name, "" if cluster else draw(st.sampled_from(NAMESPACES))), PolicySpec(applied_to=applied))


@st.composite
def pods(draw: st.DrawFn) -> list[PodView]:
    out = []
    for i in range(draw(st.integers(0, 8))):
        v4 = (f"10.244.{draw(st.integers(0, 3))}.{draw(st.integers(1, 254))}",) if draw(st.booleans()) else ()
        v6 = (f"fd40::{draw(st.integers(1, 300)):x}",) if draw(st.booleans()) or not v4 else ()
        out.append(PodView(draw(st.sampled_from(NAMESPACES)), f"pod{i}", draw(labels), "n1", v4, v6))
    return out


def unique_policies(ps: list[EgressPolicy]) -> list[EgressPolicy]:
    seen: dict[str, EgressPolicy] = {}
    for p in ps:
        seen.setdefault(f"{p.KIND}/{policy_key(p)}", p)
    return list(seen.values())


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_list=st.lists(policies(), min_size=1, max_size=4), pod_list=pods(),
       namespace_labels=st.fixed_dictionaries({ns: labels for ns in NAMESPACES}))
def test_agent_selection_equals_controller_slices(policy_list: list[EgressPolicy], pod_list: list[PodView],
                                                  namespace_labels: dict[str, dict[str, str]]) -> None:
    policy_list = [p for p in unique_policies(policy_list) if not isinstance(p, EgressClusterPolicy)] + \
        [p for p in unique_policies(policy_list) if isinstance(p, EgressClusterPolicy)]
    by_ns: dict[str, dict[str, PodView]] = {}
    for pod in pod_list:
        by_ns.setdefault(pod.namespace, {})[pod.name] = pod
    state = ClusterState(
        policies=tuple(policy_list),
        local_endpoints=tuple(LocalEndpoint(f"k-{p.namespace}-{p.name}", p.namespace, p.name, p.ipv4, p.ipv6) for p in pod_list),
        pod_labels={f"{p.namespace}/{p.name}": p.labels for p in pod_list},
        namespace_labels=namespace_labels,
    )
    desired = desired_dataplane(state, NodeFacts("n1", "eth0", "192.168.0.1", ipv6=True), DataplaneConfig())
    for policy in policy_list:
        key = policy_key(policy)
        controller = {(e.ns, e.pod) for e in selected_pods(policy, by_ns, namespace_labels)}
        agent = {(p.namespace, p.name) for p in pod_list if key in desired.selection[f"k-{p.namespace}-{p.name}"]}
        assert agent == controller, f"{policy.KIND} {key} {policy.spec.applied_to}"
        if semantics.whole_subnet_source(policy):
            # a whole-subnet policy also matches by address: every pod it selects is inside its subnets
            inside = {(p.namespace, p.name) for p in pod_list
                      if any(c.contains(ip) for ip in p.ipv4 + p.ipv6 for c in policy.spec.applied_to.pod_subnet)}
            assert controller == inside


def test_modes_of_the_parser() -> None:
    assert Cidr("10.6.1.7/24", CidrMode.HOST_BITS).given == "10.6.1.7/24"
    with pytest.raises(ValueError, match="host bits"):
        Cidr("10.6.1.7/24")
    with pytest.raises(ValueError, match=r"write 10\.6\.1\.7/32"):
        Cidr("10.6.1.7")
    assert Cidr("10.6.1.7", CidrMode.BARE_IP).member == "10.6.1.7"
