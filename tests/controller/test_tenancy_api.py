"""Tenant isolation on a real kube-apiserver, with the webhook bypassed (none is registered here):
the controller alone keeps a namespace off a gateway that does not admit it, and one namespace on
an EIP its policies name, with a `Ready=False` condition for the one left out and no EIP."""

from __future__ import annotations

from typing import Any

import pytest

from egress_cni import k8s
from egress_cni.api.model import LABEL_NAMESPACE_DEFAULT_GATEWAY
from tests.controller.cluster import ensure_namespace, gateway, policy, ready_reason, status_of, wait_for
from tests.controller.conftest import Env

pytestmark = pytest.mark.apiserver

GW, EP = k8s.EGRESS_GATEWAYS, k8s.EGRESS_POLICIES


def tenant(env: Env, stem: str, labels: dict[str, str]) -> str:
    name = env.name(stem)
    ensure_namespace(env.client, name, labels)
    env.created.append((k8s.NAMESPACES, name, None))
    return name


def ready(env: Env, name: str, ns: str) -> dict[str, Any]:
    status = status_of(env.client, EP, name, ns)
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})


def wait_reason(env: Env, name: str, ns: str, reason: str) -> dict[str, Any]:
    cond: dict[str, Any] = wait_for(f"{ns}/{name} Ready=False/{reason}",
                                    lambda: (c := ready(env, name, ns)).get("reason") == reason and c)
    assert cond["status"] == "False"
    return cond


def wait_assigned(env: Env, name: str, ns: str) -> dict[str, Any]:
    status: dict[str, Any] = wait_for(f"{ns}/{name} Assigned", lambda: (
        s := status_of(env.client, EP, name, ns)).get("node") and ready_reason(s) == "Assigned" and s)
    return status


def listed(env: Env, gw: str) -> list[tuple[str, str]]:
    """(namespace, name) of every policy the gateway's nodeList serves."""
    nodes = status_of(env.client, GW, gw).get("nodeList") or []
    return sorted((p.get("namespace", ""), p["name"]) for n in nodes for e in n.get("eips") or [] for p in e.get("policies") or [])


def warning_events(env: Env, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    events, _ = env.client.list(k8s.EVENTS, ns)
    return [e for e in events if e.get("reason") == reason and e.get("type") == "Warning"
            and e["involvedObject"].get("name") == name]


def test_a_gateway_restricted_to_namespace_a_gives_b_a_condition_and_no_eip(env: Env) -> None:
    team = env.name("team")
    ns_a = tenant(env, "a", {"egw-team": f"{team}-a"})
    ns_b = tenant(env, "b", {"egw-team": f"{team}-b"})
    env.node("n1")
    gw = env.name("gw")
    env.create(GW, gateway(gw, ["10.6.171.1-10.6.171.9"], env.label, default4="10.6.171.1",
                           namespaceSelector={"matchLabels": {"egw-team": f"{team}-a"}}))
    env.create(EP, policy("web", ns_a, gw))
    env.create(EP, policy("web", ns_b, gw))
    env.create(EP, policy("by-label", ns_b, ""))  # no name: reaches the gateway by the namespace label below
    env.client.patch(k8s.NAMESPACES, ns_b, {"metadata": {"labels": {LABEL_NAMESPACE_DEFAULT_GATEWAY: gw}}})
    env.controller()

    assert wait_assigned(env, "web", ns_a)["eip"]["ipv4"] == "10.6.171.1"
    for name in ("web", "by-label"):
        cond = wait_reason(env, name, ns_b, "NamespaceNotAllowed")
        assert f"EgressGateway {gw} admits only the namespaces matching its spec.namespaceSelector" in cond["message"], cond
        assert f"namespace {ns_b}" in cond["message"]
        status = status_of(env.client, EP, name, ns_b)
        assert not status.get("eip") and not status.get("node"), status
        wait_for(f"Warning Event NamespaceNotAllowed on {name}",
                 lambda: warning_events(env, ns_b, name, "NamespaceNotAllowed"))  # noqa: B023 - called at once
    assert listed(env, gw) == [(ns_a, "web")]

    # The namespace's labels change: admitted now, served.
    env.client.patch(k8s.NAMESPACES, ns_b, {"metadata": {"labels": {"egw-team": f"{team}-a"}}})
    assert wait_assigned(env, "web", ns_b)["eip"]["ipv4"] == "10.6.171.1"
    wait_assigned(env, "by-label", ns_b)
    # The gateway's selector changes: the namespaces left out lose their EIPs.
    env.client.patch(GW, gw, {"spec": {"namespaceSelector": {"matchLabels": {"egw-team": f"{team}-none"}}}})
    for ns, name in ((ns_a, "web"), (ns_b, "web"), (ns_b, "by-label")):
        wait_reason(env, name, ns, "NamespaceNotAllowed")
        assert not status_of(env.client, EP, name, ns).get("eip")
    wait_for("the gateway serves nobody", lambda: listed(env, gw) == [])


def test_two_namespaces_naming_one_eip_end_with_one_owner(env: Env) -> None:
    ns_a, ns_b = tenant(env, "a", {}), tenant(env, "b", {})
    env.node("n1")
    gw = env.name("gw")
    env.create(GW, gateway(gw, ["10.6.172.1-10.6.172.9"], env.label, default4="10.6.172.1"))
    # Both got past admission (two webhook replicas, each with a cache that had not seen the other).
    env.create(EP, policy("claim", ns_a, gw, egress_ip={"ipv4": "10.6.172.5"}))
    env.create(EP, policy("claim", ns_b, gw, egress_ip={"ipv4": "10.6.172.5"}))
    created = {ns: env.client.get(EP, "claim", ns)["metadata"]["creationTimestamp"] for ns in (ns_a, ns_b)}
    owner, loser = sorted((ns_a, ns_b), key=lambda ns: (created[ns], f"{ns}/claim"))
    env.controller()

    assert wait_assigned(env, "claim", owner)["eip"]["ipv4"] == "10.6.172.5"
    cond = wait_reason(env, "claim", loser, "EIPConflict")
    assert f"held by EgressPolicy {owner}/claim of namespace {owner}" in cond["message"], cond
    assert not status_of(env.client, EP, "claim", loser).get("eip")
    wait_for("Warning Event EIPConflict", lambda: warning_events(env, loser, "claim", "EIPConflict"))
    assert listed(env, gw) == [(owner, "claim")]

    # The owner goes: the other one gets the address.
    env.client.delete(EP, "claim", owner)
    assert wait_assigned(env, "claim", loser)["eip"]["ipv4"] == "10.6.172.5"
    wait_for("the nodeList follows", lambda: listed(env, gw) == [(loser, "claim")])
