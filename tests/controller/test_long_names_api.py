"""Policies with the longest legal names (253 characters) on the real API server: the controller
writes their endpoint slices on the first try (a valid label value and generated name, no write
retried), and the agent's Kubernetes source maps the slices back to the policies by their owner."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from egress_cni import k8s
from egress_cni.agent.k8s_source import KubernetesSource
from egress_cni.agent.state import StateView
from egress_cni.api.names import is_label_value, is_subdomain, policy_label_value, slice_generate_name
from egress_cni.dataplane.compute import desired_dataplane, set_name
from egress_cni.dataplane.inputs import DataplaneConfig, NodeFacts
from tests.controller.cluster import gateway, make_pod, policy, wait_for
from tests.controller.conftest import Env

pytestmark = [pytest.mark.apiserver, pytest.mark.timeout(180)]

EP, ECP = k8s.EGRESS_POLICIES, k8s.EGRESS_CLUSTER_POLICIES
SLICES = {EP.kind: k8s.EGRESS_ENDPOINT_SLICES, ECP.kind: k8s.EGRESS_CLUSTER_ENDPOINT_SLICES}


def longest_name(stem: str) -> str:
    """A 253-character DNS subdomain starting with `stem`: dotted, so a cut can land on a dot."""
    name = stem
    while len(name) < 253:
        name += "." + "x" * min(40, 253 - len(name) - 1)
    return name


def owned_slices(env: Env, kind: str, name: str, namespace: str | None) -> list[dict[str, Any]]:
    items, _ = env.client.list(SLICES[kind], namespace)
    return [s for s in items if any(r.get("kind") == kind and r.get("name") == name
                                    for r in s["metadata"].get("ownerReferences") or [])]


def test_253_character_policy_names_get_slices_the_agent_finds(env: Env, namespace: str) -> None:
    n1 = env.node("n1")
    g = env.name("gw")
    env.create(k8s.EGRESS_GATEWAYS, gateway(g, ["10.6.71.1-10.6.71.9"], env.label))
    make_pod(env.client, namespace, "long-1", {"app": "long"}, "10.244.71.1", n1)
    ns_name, cluster_name = longest_name(env.name("ns")), longest_name(env.name("cl"))
    assert len(ns_name) == len(cluster_name) == 253
    env.create(EP, policy(ns_name, namespace, g, match={"app": "long"}))
    env.create(ECP, policy(cluster_name, None, g, match={"app": "long"}))
    ctl = env.controller()

    written = {}
    for kind, name, ns in ((EP.kind, ns_name, namespace), (ECP.kind, cluster_name, None)):
        (s,) = wait_for(f"the {kind}'s slice", partial(owned_slices, env, kind, name, ns))
        if ns is None:
            env.created.append((SLICES[kind], s["metadata"]["name"], None))  # no garbage collector runs here
        meta = s["metadata"]
        label = meta["labels"]["spidernet.io/policy-name"]
        assert label == policy_label_value(name) and is_label_value(label) and len(label) == 63
        assert meta["generateName"] == slice_generate_name(name)
        assert is_subdomain(meta["name"]) and len(meta["name"]) <= 63
        assert [e["pod"] for e in s["endpoints"]] == ["long-1"]
        written[kind] = meta["name"]

    # the agent of n1 reads the slices through its informers and finds both policies' endpoints
    source = KubernetesSource(env.client, n1, resync_seconds=60)
    source.start(lambda: None)
    try:
        wait_for("agent source synced with both slices", lambda: source.synced and len(
            source.stores.endpoint_slices.items() + source.stores.cluster_endpoint_slices.items()) >= 2)
        state = StateView(source.stores, n1).state()
        by_name = {p.metadata.name: p for p in state.policies}
        assert {s.policy_name for s in state.slices} >= {ns_name, cluster_name}
        config = DataplaneConfig()
        sets = {s.name: s for s in desired_dataplane(state, NodeFacts(n1, "eth0", "10.9.71.1"), config).dataplane.ipsets}
        for name in (ns_name, cluster_name):
            assert "10.244.71.1" in sets[set_name(config, "s", 4, by_name[name])].members, name
    finally:
        source.stop()

    # no write was refused and retried: one slice each, the same ones, and no failed write logged
    for kind, name, ns in ((EP.kind, ns_name, namespace), (ECP.kind, cluster_name, None)):
        assert [s["metadata"]["name"] for s in owned_slices(env, kind, name, ns)] == [written[kind]]
    assert "write failed" not in ctl.log_since(0)
