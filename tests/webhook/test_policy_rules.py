"""EgressPolicy / EgressClusterPolicy validation: each rule allowed and denied."""

from __future__ import annotations

import pytest

from tests.webhook.builders import denial, gateway, policy, validate
from webhook.config import WebhookConfig

pytestmark = pytest.mark.unit

GW = gateway(ipv4=["10.6.168.201-10.6.168.205"], default4="10.6.168.201")
DUAL = gateway("dual", ["10.6.1.1-10.6.1.3"], ["fd00::1-fd00::3"], default4="10.6.1.1", default6="fd00::1",
               eips=[{"ipv4": "10.6.1.2", "ipv6": "fd00::2", "policies": [{"name": "x", "namespace": "ns"}]}])
EIP = {"allocatorPolicy": "default", "useNodeIP": False}


@pytest.mark.parametrize("cluster", [False, True])
def test_seed_policy_is_allowed(cluster: bool) -> None:
    assert validate(policy(cluster=cluster, egress_ip=EIP), GW)["allowed"] is True


def test_gateway_name_required() -> None:
    msg = denial(validate(policy(gateway_name="", egress_ip=EIP), GW))
    assert msg.startswith("spec.egressGatewayName: is empty and no default applies")
    assert "spidernet.io/egressgateway-default" in msg


def test_gateway_must_exist_on_create() -> None:
    msg = denial(validate(policy(gateway_name="nope", egress_ip=EIP), GW))
    assert msg.startswith("spec.egressGatewayName: no EgressGateway of that name exists (existing: default)")


def test_gateway_must_have_addresses_unless_use_node_ip() -> None:
    empty = gateway("empty", ipv4=[])
    assert "has no addresses in spec.ippools" in denial(validate(policy(gateway_name="empty", egress_ip=EIP), empty))
    assert validate(policy(gateway_name="empty", egress_ip={"useNodeIP": True}), empty)["allowed"]


def test_use_node_ip_is_exclusive() -> None:
    msg = denial(validate(policy(egress_ip={"useNodeIP": True, "ipv4": "10.6.168.202"}), GW))
    assert msg.startswith("spec.egressIP.useNodeIP: cannot be combined with spec.egressIP.ipv4/ipv6 (10.6.168.202)")


@pytest.mark.parametrize(("field", "value"), [("ipv4", "fd00::1"), ("ipv4", "10.6.168"), ("ipv6", "10.6.168.202")])
def test_eip_syntax(field: str, value: str) -> None:
    msg = denial(validate(policy(egress_ip={field: value}), GW))
    assert msg.startswith(f"spec.egressIP.{field}: is not an IPv{field[-1]} address") and value in msg


def test_eip_family_not_enabled() -> None:
    msg = denial(validate(policy(gateway_name="dual", egress_ip={"ipv6": "fd00::3"}), DUAL, config=WebhookConfig(enable_ipv6=False)))
    assert msg.startswith("spec.egressIP.ipv6: IPv6 is not enabled in this installation")


def test_eip_must_be_in_gateway_pool() -> None:
    msg = denial(validate(policy(egress_ip={"ipv4": "10.6.168.9"}), GW))
    assert msg.startswith("spec.egressIP.ipv4: is not in the ippools of EgressGateway default (10.6.168.201-10.6.168.205)")
    assert validate(policy(egress_ip={"ipv4": "10.6.168.204"}), GW)["allowed"]


def test_default_eips_pair() -> None:
    msg = denial(validate(policy(gateway_name="dual", egress_ip={"ipv4": "10.6.1.1"}), DUAL))
    assert "default EIPs 10.6.1.1 and fd00::1 form a pair; name both or neither" in msg
    assert validate(policy(gateway_name="dual", egress_ip={"ipv4": "10.6.1.1", "ipv6": "fd00::1"}), DUAL)["allowed"]


def test_allocated_eips_pair() -> None:
    msg = denial(validate(policy(gateway_name="dual", egress_ip={"ipv4": "10.6.1.2", "ipv6": "fd00::3"}), DUAL))
    assert msg.startswith("spec.egressIP.ipv6: 10.6.1.2 is allocated paired with fd00::2")
    assert "spec.egressIP.ipv4: fd00::2 is allocated paired with 10.6.1.2" in denial(
        validate(policy(gateway_name="dual", egress_ip={"ipv4": "10.6.1.3", "ipv6": "fd00::2"}), DUAL))
    assert validate(policy(gateway_name="dual", egress_ip={"ipv4": "10.6.1.2", "ipv6": "fd00::2"}), DUAL)["allowed"]


def test_allocator_policy_value() -> None:
    assert denial(validate(policy(egress_ip={"allocatorPolicy": "random"}), GW)).startswith(
        "spec.egressIP.allocatorPolicy: must be one of default, rr")
    assert validate(policy(egress_ip={"allocatorPolicy": "rr"}), GW)["allowed"]


def test_applied_to_selector_and_subnet_are_exclusive() -> None:
    p = policy(pod_labels={"app": "a"}, egress_ip=EIP)
    p["spec"]["appliedTo"]["podSubnet"] = ["10.244.0.0/16"]
    assert denial(validate(p, GW)).startswith("spec.appliedTo.podSubnet: cannot be used together with spec.appliedTo.podSelector")
    p["spec"]["appliedTo"]["podSelector"] = {"matchExpressions": [{"key": "app", "operator": "Exists"}]}
    assert "cannot be used together" in denial(validate(p, GW))  # the reference let matchExpressions slip through


@pytest.mark.parametrize("cluster", [False, True])
def test_applied_to_must_select_something(cluster: bool) -> None:
    p = policy(cluster=cluster, pod_labels={}, egress_ip=EIP)
    msg = denial(validate(p, GW))
    assert msg.startswith("spec.appliedTo: must select pods: set podSelector.matchLabels, podSelector.matchExpressions or podSubnet")
    assert validate(policy(cluster=cluster, pod_subnet=["10.244.0.0/16"], egress_ip=EIP), GW)["allowed"]


@pytest.mark.parametrize(("entry", "expected"), [
    ("10.244.1.5", "is an address, not a CIDR; write 10.244.1.5/32 for a single host"),
    ("pods", "is not a CIDR"),
])
def test_pod_subnet_syntax(entry: str, expected: str) -> None:
    msg = denial(validate(policy(pod_subnet=["10.0.0.0/8", entry], egress_ip=EIP), GW))
    assert msg.startswith(f"spec.appliedTo.podSubnet[1]: {expected}") and entry in msg


@pytest.mark.parametrize(("field", "entry", "used"), [
    ("destSubnet", "10.6.1.7/24", "10.6.1.0/24"), ("destSubnet", "fd00::1/64", "fd00::/64"),
    ("destSubnet", "10.0.6.1/16", "10.0.0.0/16"), ("podSubnet", "10.244.1.0/16", "10.244.0.0/16"),
])
def test_host_bits_are_accepted_with_a_warning_naming_the_cidr_used(field: str, entry: str, used: str) -> None:
    """Upstream's own valid cases (192.168.1.1/24, 10.0.6.1/16, fd00::21/112) apply unchanged."""
    p = policy(dest=[entry], egress_ip=EIP) if field == "destSubnet" else policy(pod_subnet=[entry], egress_ip=EIP)
    response = validate(p, GW)
    path = "spec.destSubnet[0]" if field == "destSubnet" else "spec.appliedTo.podSubnet[0]"
    assert response["allowed"] and response["warnings"] == [f'{path}: has host bits set; it is used as {used} (got "{entry}")']


@pytest.mark.parametrize(("entry", "expected"), [
    ("10.6.1.7", "is an address, not a CIDR; write 10.6.1.7/32"),
    ("10.6.1.0/40", "is not a CIDR"),
])
def test_dest_subnet_syntax(entry: str, expected: str) -> None:
    msg = denial(validate(policy(dest=[entry], egress_ip=EIP), GW))
    assert msg.startswith(f"spec.destSubnet[0]: {expected}")


def test_dest_subnet_family_not_enabled() -> None:
    msg = denial(validate(policy(dest=["10.0.0.0/8", "fd00::/64"], egress_ip=EIP), GW, config=WebhookConfig(enable_ipv6=False)))
    assert msg.startswith("spec.destSubnet[1]: is IPv6, which this installation has not enabled")
    assert validate(policy(dest=["10.0.0.0/8", "fd00::/64", "0.0.0.0/0"], egress_ip=EIP), GW)["allowed"]


@pytest.mark.parametrize(("field", "value"), [
    ("egressGatewayName", "other"),
    ("egressIP.useNodeIP", True),
    ("egressIP.ipv4", "10.6.168.203"),
    ("egressIP.allocatorPolicy", "rr"),
])
def test_immutable_fields(field: str, value: object) -> None:
    old = policy(egress_ip={**EIP, "ipv4": "10.6.168.202"})
    new = policy(egress_ip={**EIP, "ipv4": "10.6.168.202"})
    if field == "egressGatewayName":
        new["spec"]["egressGatewayName"] = value
    else:
        new["spec"]["egressIP"][field.split(".")[1]] = value
        if field == "egressIP.useNodeIP":
            del new["spec"]["egressIP"]["ipv4"]
    msg = denial(validate(new, GW, operation="UPDATE", old=old))
    assert f"spec.{field}: is immutable" in msg


def test_mutable_fields_can_change() -> None:
    old = policy(egress_ip=EIP)
    new = policy(egress_ip=EIP, pod_labels={"app": "other"}, dest=["10.0.0.0/8"], priority=5)
    assert validate(new, GW, operation="UPDATE", old=old)["allowed"]


def test_immutable_comparison_applies_defaults() -> None:
    old = policy()  # egressIP absent = CRD default
    assert validate(policy(egress_ip=EIP), GW, operation="UPDATE", old=old)["allowed"]


def test_delete_is_allowed() -> None:
    assert validate(None, operation="DELETE", old=policy())["allowed"]


def test_namespaced_policy_rejects_namespace_selector() -> None:
    msg = denial(validate(policy(namespace_selector={"matchLabels": {"a": "b"}}, egress_ip=EIP), GW))
    assert msg.startswith("spec.appliedTo.namespaceSelector: an EgressPolicy applies to its own namespace only")
