"""Defaulting rules (/mutate), each with the case that patches and the case that leaves alone."""

from __future__ import annotations

import pytest

from egress_cni.api.model import FINALIZER_GATEWAY
from tests.webhook.builders import gateway, mutate, namespace, patch_of, policy, run
from webhook.admission import pointer
from webhook.config import WebhookConfig

pytestmark = pytest.mark.unit


def ops_by_path(ops: list[dict]) -> dict[str, object]:
    return {op["path"]: op["value"] for op in ops}


def test_gateway_default_eip_is_first_free_address_and_finalizer_added() -> None:
    ops = ops_by_path(mutate(gateway(ipv4=["10.6.168.201-10.6.168.205"])))
    assert ops == {"/spec/ippools/ipv4DefaultEIP": "10.6.168.201", "/metadata/finalizers": [FINALIZER_GATEWAY]}


def test_gateway_default_eip_skips_allocated_addresses() -> None:
    gw = gateway(ipv4=["10.6.1.1-10.6.1.3"], eips=[{"ipv4": "10.6.1.1", "policies": [{"name": "p", "namespace": "ns"}]}])
    ops = ops_by_path(mutate(gw, operation="UPDATE", old=gw))
    assert ops == {"/spec/ippools/ipv4DefaultEIP": "10.6.1.2"}


def test_gateway_with_default_eip_set_is_not_patched_on_update() -> None:
    gw = gateway(ipv4=["10.6.1.1-10.6.1.3"], default4="10.6.1.3")
    assert mutate(gw, operation="UPDATE", old=gw) == []


def test_gateway_replace_without_default_keeps_the_old_default() -> None:
    old = gateway(ipv4=["10.6.1.1-10.6.1.3"], default4="10.6.1.3")
    ops = ops_by_path(mutate(gateway(ipv4=["10.6.1.1-10.6.1.3"]), operation="UPDATE", old=old))
    assert ops == {"/spec/ippools/ipv4DefaultEIP": "10.6.1.3"}


def test_dual_stack_defaults_are_paired_by_position() -> None:
    gw = gateway(ipv4=["10.6.1.1-10.6.1.3"], ipv6=["fd00::1-fd00::3"], default4="10.6.1.2")
    ops = ops_by_path(mutate(gw))
    assert ops["/spec/ippools/ipv6DefaultEIP"] == "fd00::2"


def test_disabled_family_gets_no_default() -> None:
    gw = gateway(ipv4=["10.6.1.1"], ipv6=["fd00::1"])
    ops = ops_by_path(mutate(gw, config=WebhookConfig(enable_ipv6=False)))
    assert "/spec/ippools/ipv6DefaultEIP" not in ops and ops["/spec/ippools/ipv4DefaultEIP"] == "10.6.1.1"


def test_unparsable_pool_gets_no_patch() -> None:
    # the model refuses the object, so there is nothing to default; validation names the entry
    assert ops_by_path(mutate(gateway(ipv4=["10.6.1.x"]))) == {}


def test_finalizer_is_appended_keeping_user_finalizers() -> None:
    gw = gateway(ipv4=["10.6.1.1"], default4="10.6.1.1")
    gw["metadata"]["finalizers"] = ["example.com/keep-me"]
    assert mutate(gw) == [{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER_GATEWAY}]


def test_finalizer_not_duplicated_and_not_added_on_update() -> None:
    gw = gateway(ipv4=["10.6.1.1"], default4="10.6.1.1")
    gw["metadata"]["finalizers"] = [FINALIZER_GATEWAY]
    assert mutate(gw) == []
    assert mutate(gateway(ipv4=["10.6.1.1"], default4="10.6.1.1"), operation="UPDATE", old=gw) == []


def test_policy_gateway_from_namespace_label_wins_over_cluster_default() -> None:
    ops = ops_by_path(mutate(policy(gateway_name=""), namespace("default", {"spidernet.io/egressgateway-default": "ns-gw"}),
                             gateway("cluster-gw", ["10.0.0.1"], cluster_default=True)))
    assert ops["/spec/egressGatewayName"] == "ns-gw"


def test_policy_gateway_from_cluster_default() -> None:
    ops = ops_by_path(mutate(policy(gateway_name=""), namespace("default"), gateway("cluster-gw", ["10.0.0.1"], cluster_default=True),
                             gateway("other", ["10.0.0.2"])))
    assert ops["/spec/egressGatewayName"] == "cluster-gw"


def test_cluster_policy_ignores_namespace_label() -> None:
    ops = ops_by_path(mutate(policy(gateway_name="", cluster=True), gateway("cluster-gw", ["10.0.0.1"], cluster_default=True)))
    assert ops["/spec/egressGatewayName"] == "cluster-gw"


def test_policy_without_any_default_gateway_is_not_named() -> None:
    assert "/spec/egressGatewayName" not in ops_by_path(mutate(policy(gateway_name="")))


def test_policy_egress_ip_defaults() -> None:
    ops = ops_by_path(mutate(policy()))
    assert ops == {"/spec/egressIP": {"allocatorPolicy": "default", "useNodeIP": False}}
    ops = ops_by_path(mutate(policy(egress_ip={"ipv4": "10.6.168.202"})))
    assert ops == {"/spec/egressIP/allocatorPolicy": "default", "/spec/egressIP/useNodeIP": False}
    assert mutate(policy(egress_ip={"allocatorPolicy": "rr", "useNodeIP": False})) == []


def test_policy_update_with_empty_gateway_name_keeps_the_old_one() -> None:
    old = policy(gateway_name="mine", egress_ip={"allocatorPolicy": "default", "useNodeIP": False})
    new = policy(gateway_name="", egress_ip={"allocatorPolicy": "default", "useNodeIP": False})
    assert mutate(new, gateway("cluster-gw", ["10.0.0.1"], cluster_default=True), operation="UPDATE", old=old) == [
        {"op": "add", "path": "/spec/egressGatewayName", "value": "mine"}]


def test_other_kinds_and_delete_are_not_patched() -> None:
    info = {"apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressClusterInfo", "metadata": {"name": "default"}}
    assert patch_of(run("mutate", info)) == []
    assert patch_of(run("mutate", None, operation="DELETE", old=policy())) == []


def test_json_pointer_escapes_tilde_and_slash() -> None:
    assert pointer("metadata", "annotations", "a/b~c") == "/metadata/annotations/a~1b~0c"
