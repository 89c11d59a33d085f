"""EgressGateway validation: each rule allowed and denied, with the message the user sees."""

from __future__ import annotations

import pytest

from tests.webhook.builders import denial, gateway, policy, validate
from webhook.config import WebhookConfig

pytestmark = pytest.mark.unit

V4_ONLY = WebhookConfig(enable_ipv6=False)
V6_ONLY = WebhookConfig(enable_ipv4=False)


def test_seed_gateway_is_allowed() -> None:
    assert validate(gateway(ipv4=["10.6.168.201-10.6.168.205"]))["allowed"] is True


@pytest.mark.parametrize("selector", [{}, {"matchLabels": {}}])
def test_node_selector_required(selector: dict) -> None:
    msg = denial(validate(gateway(ipv4=["10.6.1.1"], selector=selector)))
    assert msg.startswith("spec.nodeSelector.selector: must select the gateway nodes with matchLabels or matchExpressions")
    gw = gateway(ipv4=["10.6.1.1"])
    del gw["spec"]["nodeSelector"]
    assert "spec.nodeSelector.selector" in denial(validate(gw))
    assert validate(gateway(ipv4=["10.6.1.1"], selector={"matchExpressions": [{"key": "egw", "operator": "Exists"}]}))["allowed"]


def test_family_not_enabled() -> None:
    msg = denial(validate(gateway(ipv4=["10.6.1.1"], ipv6=["fd00::1"]), config=V4_ONLY))
    assert "spec.ippools.ipv6: IPv6 is not enabled in this installation (EGRESS_ENABLE_IPV6=false)" in msg and '["fd00::1"]' in msg
    assert "spec.ippools.ipv4: IPv4 is not enabled" in denial(validate(gateway(ipv4=["10.6.1.1"], ipv6=["fd00::1"]), config=V6_ONLY))
    assert validate(gateway(ipv4=["10.6.1.1"]), config=V4_ONLY)["allowed"]


def test_one_cluster_default() -> None:
    other = gateway("first", ["10.0.0.1"], cluster_default=True)
    msg = denial(validate(gateway("second", ["10.0.0.2"], cluster_default=True), other))
    assert msg.startswith("spec.clusterDefault: EgressGateway first is already the cluster default")
    assert validate(gateway("first", ["10.0.0.1"], cluster_default=True), other)["allowed"]  # updating itself


@pytest.mark.parametrize("entry", ["10.6.1.x", "10.6.1.9-10.6.1.1", "fd00::1", "10.6.1.0/33"])
def test_pool_syntax(entry: str) -> None:
    msg = denial(validate(gateway(ipv4=["10.6.1.1", entry])))
    assert msg.startswith("spec.ippools.ipv4[1]:") and entry in msg


def test_pool_entry_forms_accepted() -> None:
    assert validate(gateway(ipv4=["10.6.1.1", "10.6.1.10-10.6.1.20", "10.6.2.0/28"]))["allowed"]


def test_dual_stack_counts_must_pair() -> None:
    msg = denial(validate(gateway(ipv4=["10.6.1.1-10.6.1.3"], ipv6=["fd00::1-fd00::2"])))
    assert "spec.ippools: the IPv4 pool holds 3 addresses and the IPv6 pool 2" in msg
    assert validate(gateway(ipv4=["10.6.1.1-10.6.1.2"], ipv6=["fd00::1-fd00::2"]))["allowed"]
    assert validate(gateway(ipv6=["fd00::1-fd00::2"]))["allowed"]  # single family in dual stack


def test_default_eip_must_be_in_pool() -> None:
    msg = denial(validate(gateway(ipv4=["10.6.1.1-10.6.1.3"], default4="10.6.1.9")))
    assert msg.startswith("spec.ippools.ipv4DefaultEIP: is not in spec.ippools.ipv4 (10.6.1.1-10.6.1.3)") and '"10.6.1.9"' in msg
    assert "is not an IPv6 address" in denial(validate(gateway(ipv6=["fd00::1"], default6="nope")))
    assert validate(gateway(ipv4=["10.6.1.1-10.6.1.3"], default4="10.6.1.2"))["allowed"]


def test_pools_cannot_overlap_other_gateways() -> None:
    other = gateway("other", ipv6=["fd00::/120"])
    msg = denial(validate(gateway("mine", ipv6=["fd00::f0-fd00::1ff"]), other))
    assert "spec.ippools.ipv6: fd00::f0-fd00::ff already belongs to EgressGateway other" in msg
    assert validate(gateway("mine", ipv6=["fd01::/64"]), other)["allowed"]


def test_huge_pools_are_compared_without_enumeration() -> None:
    other = gateway("other", ipv6=["fd00::/16"])
    assert denial(validate(gateway("mine", ipv6=["fd00:1::/32"]), other))
    assert validate(gateway("mine", ipv6=["fd01::/16"]), other)["allowed"]


def test_family_cannot_be_added_on_update() -> None:
    old = gateway(ipv4=["10.6.1.1"])
    msg = denial(validate(gateway(ipv4=["10.6.1.1"], ipv6=["fd00::1"]), operation="UPDATE", old=old))
    assert msg.startswith("spec.ippools.ipv6: IPv6 addresses cannot be added to a gateway created without them")


def test_allocated_eip_cannot_be_removed_using_old_object_status() -> None:
    old = gateway(ipv4=["10.6.1.1-10.6.1.5"], eips=[{"ipv4": "10.6.1.5", "policies": [{"name": "p", "namespace": "ns"}]}])
    msg = denial(validate(gateway(ipv4=["10.6.1.1-10.6.1.4"]), operation="UPDATE", old=old))
    assert msg.startswith("spec.ippools.ipv4: 10.6.1.5 is allocated to policies and cannot be removed from the pool")
    assert validate(gateway(ipv4=["10.6.1.2-10.6.1.9"]), operation="UPDATE", old=old)["allowed"]  # shrink/grow around it


def test_eip_named_by_a_policy_cannot_be_removed() -> None:
    old = gateway(ipv4=["10.6.1.1-10.6.1.5"])
    named = policy(egress_ip={"ipv4": "10.6.1.1"})
    assert "10.6.1.1 is allocated" in denial(validate(gateway(ipv4=["10.6.1.2-10.6.1.5"]), named, operation="UPDATE", old=old))


def test_delete_is_allowed() -> None:
    assert validate(None, operation="DELETE", old=gateway(ipv4=["10.6.1.1"]))["allowed"]


def test_schema_errors_name_the_field() -> None:
    gw = gateway(ipv4=["10.6.1.1"])
    gw["spec"]["clusterDefault"] = "yes"
    assert denial(validate(gw)).startswith("spec.clusterDefault: must be true or false")


def _cluster_info() -> dict:
    return {"apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressClusterInfo", "metadata": {"name": "default"},
            "status": {"nodeIP": {"node1": {"ipv4": ["10.6.168.11"]}}, "clusterIP": {"ipv4": ["10.96.0.0/12"]},
                       "podCIDR": {"k8s": {"ipv4": ["10.244.0.0/16"]}}}}


def test_a_pool_holding_a_node_address_is_refused() -> None:
    msg = denial(validate(gateway(ipv4=["10.6.168.10-10.6.168.12"]), _cluster_info()))
    assert msg.startswith("spec.ippools.ipv4: 10.6.168.11 is a node address (EgressClusterInfo default status.nodeIP)")


def test_a_pool_inside_service_or_pod_cidrs_is_admitted_with_a_warning() -> None:
    response = validate(gateway(ipv4=["10.244.9.1-10.244.9.2", "10.6.168.201"]), _cluster_info())
    assert response["allowed"]
    assert response["warnings"][0].startswith("spec.ippools.ipv4: 10.244.9.1-10.244.9.2 lies inside the cluster's service or pod CIDRs")
    assert "warnings" not in validate(gateway(ipv4=["10.6.168.201-10.6.168.205"]), _cluster_info())


def test_a_gateway_name_too_long_for_the_namespace_label_is_admitted_with_a_warning() -> None:
    name = "g" * 64
    response = validate(gateway(name=name, ipv4=["10.6.168.201"]))
    assert response["allowed"]
    assert response["warnings"] == ['metadata.name: is longer than 63 characters, so no namespace can choose it with the label '
                                    'spidernet.io/egressgateway-default=<gateway>; name it in spec.egressGatewayName or make it '
                                    'the cluster default (got "64 characters")']
    assert "warnings" not in validate(gateway(name="g" * 63, ipv4=["10.6.168.201"]))
