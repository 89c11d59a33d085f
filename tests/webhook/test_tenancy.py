"""Which namespaces may use a gateway (spec.namespaceSelector) at admission."""

from __future__ import annotations

from typing import Any

import pytest

from egress_cni.api.model import LABEL_NAMESPACE_DEFAULT_GATEWAY
from tests.webhook.builders import denial, gateway, namespace, patch_of, policy, run, validate

pytestmark = pytest.mark.unit

EIP = {"allocatorPolicy": "default", "useNodeIP": False}
TEAM_A = {"matchLabels": {"team": "a"}}


def restricted(name: str = "default", selector: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    gw = gateway(name, ["10.6.168.201-10.6.168.205"], default4="10.6.168.201", **kw)
    gw["spec"]["namespaceSelector"] = TEAM_A if selector is None else selector
    return gw


NAMESPACES = (namespace("ns-a", {"team": "a"}), namespace("ns-b", {"team": "b"}))


def test_a_restricted_gateway_refuses_another_namespace_naming_the_selector() -> None:
    msg = denial(validate(policy(namespace="ns-b", egress_ip=EIP), restricted(), *NAMESPACES))
    assert msg.startswith('spec.egressGatewayName: EgressGateway default admits only the namespaces matching its '
                          'spec.namespaceSelector "team=a"; namespace ns-b (labels kubernetes.io/metadata.name=ns-b, team=b) '
                          "does not match"), msg
    assert msg.endswith('(got "default")')


def test_a_restricted_gateway_admits_its_namespaces_and_cluster_policies() -> None:
    assert validate(policy(namespace="ns-a", egress_ip=EIP), restricted(), *NAMESPACES)["allowed"] is True
    assert validate(policy(cluster=True, egress_ip=EIP), restricted(), *NAMESPACES)["allowed"] is True
    assert validate(policy(namespace="ns-b", egress_ip=EIP), restricted(selector={}), *NAMESPACES)["allowed"] is True


def test_without_a_selector_every_namespace_may_use_the_gateway() -> None:
    plain = gateway(ipv4=["10.6.168.201-10.6.168.205"], default4="10.6.168.201")
    assert validate(policy(namespace="ns-b", egress_ip=EIP), plain, *NAMESPACES)["allowed"] is True


@pytest.mark.parametrize("route", ["label", "cluster-default"])
def test_defaulted_gateways_are_checked_too(route: str) -> None:
    """/mutate fills egressGatewayName from the namespace label or the cluster default; /validate
    then refuses it like a named one."""
    labels = {"team": "b", **({LABEL_NAMESPACE_DEFAULT_GATEWAY: "default"} if route == "label" else {})}
    objects = (restricted(cluster_default=route == "cluster-default"), namespace("ns-b", labels))
    bare = policy(namespace="ns-b", gateway_name="", egress_ip=EIP)
    ops = patch_of(run("mutate", bare, *objects))
    assert {"op": "add", "path": "/spec/egressGatewayName", "value": "default"} in ops
    filled = policy(namespace="ns-b", egress_ip=EIP)
    assert "admits only the namespaces" in denial(validate(filled, *objects))


def test_narrowing_a_gateway_warns_about_the_policies_it_leaves_out() -> None:
    old = gateway(ipv4=["10.6.168.201-10.6.168.205"], default4="10.6.168.201")
    users = [policy(f"p{i}", namespace="ns-b", egress_ip=EIP) for i in range(7)]
    response = validate(restricted(), old, *NAMESPACES, policy(namespace="ns-a", egress_ip=EIP), *users,
                        operation="UPDATE", old=old)
    assert response["allowed"] is True
    [warning] = response["warnings"]
    assert warning.startswith("spec.namespaceSelector: leaves out the namespaces of 7 EgressPolicies that use EgressGateway "
                              "default (ns-b/p0, ns-b/p1, ns-b/p2, ns-b/p3, ns-b/p4 and 2 more)"), warning
    quiet = validate(restricted(), old, *NAMESPACES, policy(namespace="ns-a", egress_ip=EIP), operation="UPDATE", old=old)
    assert quiet["allowed"] is True and not quiet.get("warnings")


def test_a_malformed_selector_is_a_schema_denial_naming_the_field() -> None:
    bad = restricted(selector={"matchExpressions": [{"key": "team", "operator": "Within", "values": ["a"]}]})
    assert denial(validate(bad)).startswith("spec.namespaceSelector.matchExpressions[0].operator: must be one of")
