"""The API model: every seed object parses and round-trips; every kind round-trips; errors name paths."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from egress_cni.api import API_VERSION
from egress_cni.api.cluster import parse_mark
from egress_cni.api.errors import FieldError
from egress_cni.api.model import (
    KINDS,
    EgressClusterInfo,
    EgressClusterPolicy,
    EgressEndpointSlice,
    EgressGateway,
    EgressPolicy,
    EgressTunnel,
    parse_as,
    parse_object,
)
from tests.support.seeds import applied_objects, shown_objects

pytestmark = pytest.mark.unit


def ours(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["apiVersion"] == API_VERSION]


def test_walkthrough_objects_parse_and_round_trip() -> None:
    objs = ours(applied_objects()) + ours(shown_objects())
    assert [o["kind"] for o in objs] == ["EgressGateway", "EgressPolicy", "EgressPolicy", "EgressEndpointSlice"]
    for raw in objs:
        parsed = parse_object(raw)
        assert parsed.to_dict() == raw, raw["kind"]
        assert parse_object(parsed.to_dict()) == parsed


def test_walkthrough_gateway_fields() -> None:
    gw = parse_as(EgressGateway, ours(applied_objects())[0])
    assert gw.metadata.name == "default"
    assert gw.spec.ippools.ipv4 == ("10.6.168.201-10.6.168.205",)
    assert gw.spec.node_selector.selector is not None
    assert gw.spec.node_selector.selector.matches({"egressgateway": "true"})
    assert not gw.spec.node_selector.selector.matches({"egressgateway": "false"})


def test_walkthrough_policy_status_and_slice() -> None:
    policy, eps = ours(shown_objects())
    p = parse_as(EgressPolicy, policy)
    assert (p.status.eip_ipv4, p.status.node) == ("10.6.168.201", "worker-node-1")
    assert p.spec.eip.allocator_policy == "default" and not p.spec.eip.use_node_ip
    s = parse_as(EgressEndpointSlice, eps)
    assert s.endpoints[0].ipv4 == ("10.6.168.208",)
    assert s.endpoints[0].node == "worker-node-1"


FULL: dict[str, dict[str, Any]] = {
    "EgressGateway": {
        "metadata": {"name": "gw", "finalizers": ["egressgateway.spidernet.io/egressgateway", "user/keep"], "generation": 3},
        "spec": {
            "clusterDefault": True,
            "ippools": {"ipv4": ["10.0.0.1-10.0.0.9"], "ipv6": ["fd00::1-fd00::9"], "ipv4DefaultEIP": "10.0.0.1", "ipv6DefaultEIP": "fd00::1"},
            "nodeSelector": {"policy": "doNothing", "selector": {"matchExpressions": [{"key": "egress", "operator": "Exists"}]}},
            "namespaceSelector": {"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]},
        },
        "status": {
            "ipUsage": {"ipv4Total": 9, "ipv4Free": 8, "ipv6Total": 9, "ipv6Free": 8},
            "nodeList": [{"name": "n1", "status": "Ready", "eips": [
                {"ipv4": "10.0.0.1", "ipv6": "fd00::1", "policies": [{"name": "p", "namespace": "ns"}, {"name": "cp"}]},
            ]}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "Assigned", "message": "", "lastTransitionTime": "2026-11-22T10:00:00Z"}],
            "observedGeneration": 3,
        },
    },
    "EgressClusterPolicy": {
        "metadata": {"name": "cp"},
        "spec": {
            "appliedTo": {"podSelector": {"matchLabels": {"app": "a"}}, "namespaceSelector": {"matchLabels": {"team": "x"}}},
            "egressGatewayName": "gw",
            "egressIP": {"ipv4": "10.0.0.2", "allocatorPolicy": "rr", "useNodeIP": False},
            "destSubnet": ["1.2.3.0/24", "fd99::/64"],
            "priority": 10,
        },
        "status": {"eip": {"ipv4": "10.0.0.2"}, "node": "n1", "observedGeneration": 1},
    },
    "EgressClusterEndpointSlice": {
        "metadata": {"name": "cp-abcde", "labels": {"spidernet.io/policy-name": "cp"}},
        "endpoints": [{"ipv4": ["10.1.0.5"], "ipv6": ["fd40::5"], "node": "n2", "ns": "team", "pod": "a-1"}],
    },
    "EgressTunnel": {
        "metadata": {"name": "n1"},
        "spec": {},
        "status": {
            "tunnel": {"ipv4": "172.31.0.5", "ipv6": "fd11::5", "mac": "66:0e:1f:2a:3b:4c", "parent": {"name": "eth0", "ipv4": "192.168.1.5"}},
            "phase": "Ready", "mark": "0x26000005", "lastHeartbeatTime": "2026-11-22T10:00:00Z",
        },
    },
    "EgressClusterInfo": {
        "metadata": {"name": "default"},
        "spec": {"autoDetect": {"podCidrMode": "auto", "clusterIP": True, "nodeIP": True}, "extraCidr": ["10.10.10.1", "10.20.0.0/16"]},
        "status": {
            "podCidrMode": "k8s",
            "nodeIP": {"n1": {"ipv4": ["192.168.1.5"]}},
            "clusterIP": {"ipv4": ["10.96.0.0/12"]},
            "podCIDR": {"k8s": {"ipv4": ["10.244.0.0/16"], "ipv6": ["fd40::/48"]}},
            "extraCidr": ["10.10.10.1", "10.20.0.0/16"],
        },
    },
}


@pytest.mark.parametrize("kind", sorted(FULL))
def test_every_field_round_trips(kind: str) -> None:
    raw = {"apiVersion": API_VERSION, "kind": kind, **FULL[kind]}
    assert parse_object(raw).to_dict() == raw


def test_seven_kinds() -> None:
    assert sorted(KINDS) == sorted([
        "EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressEndpointSlice",
        "EgressClusterEndpointSlice", "EgressTunnel", "EgressClusterInfo",
    ])
    assert {k.SHORT_NAME for k in KINDS.values()} == {"egw", "egp", "egcp", "egep", "egcep", "egt", "egci"}


def test_defaults_when_fields_are_absent() -> None:
    p = parse_as(EgressPolicy, {"apiVersion": API_VERSION, "kind": "EgressPolicy", "metadata": {"name": "p", "namespace": "n"}, "spec": {}})
    assert p.spec.egress_ip is None
    assert p.spec.eip.allocator_policy == "default"
    assert p.ref.key == "n/p"
    cp = parse_as(EgressClusterPolicy, {"apiVersion": API_VERSION, "kind": "EgressClusterPolicy", "metadata": {"name": "c"}})
    assert cp.ref.key == "c"
    info = parse_as(EgressClusterInfo, {"apiVersion": API_VERSION, "kind": "EgressClusterInfo", "metadata": {"name": "default"}})
    assert (info.spec.pod_cidr_mode, info.spec.cluster_ip, info.spec.node_ip) == ("auto", True, True)
    tunnel = parse_as(EgressTunnel, {"apiVersion": API_VERSION, "kind": "EgressTunnel", "metadata": {"name": "n"}})
    assert tunnel.status.phase == ""


def policy(spec: dict[str, Any], kind: str = "EgressPolicy") -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": "p", "namespace": "n"}, "spec": spec}


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        ({"apiVersion": "v1", "kind": "EgressPolicy"}, "apiVersion", "must be egressgateway.spidernet.io/v1beta1"),
        ({"apiVersion": API_VERSION, "kind": "Egress"}, "kind", "must be one of"),
        (policy({"appliedTo": {"podSelector": {"matchLabels": {"app": 1}}}}), "spec.appliedTo.podSelector.matchLabels.app", "must be strings"),
        (policy({"appliedTo": {"namespaceSelector": {}}}), "spec.appliedTo.namespaceSelector", "use an EgressClusterPolicy"),
        (policy({"egressIP": {"useNodeIP": "yes"}}), "spec.egressIP.useNodeIP", "true or false"),
        (policy({"destSubnet": "1.2.3.0/24"}), "spec.destSubnet", "list of strings"),
        (policy({"destSubnet": ["1.2.3.0/24", 5]}), "spec.destSubnet[1]", "must be a string"),
        (policy({"priority": -1}), "spec.priority", "zero or positive"),
        (policy({"priority": "high"}), "spec.priority", "integer"),
        ({**FULL["EgressGateway"], "apiVersion": API_VERSION, "kind": "EgressGateway", "spec": {"ippools": {"ipv4": "10.0.0.1"}}},
         "spec.ippools.ipv4", "list of strings"),
        ({"apiVersion": API_VERSION, "kind": "EgressTunnel", "metadata": {"name": "n"}, "status": {"phase": "Up"}}, "status.phase", "must be one of"),
        ({"apiVersion": API_VERSION, "kind": "EgressClusterInfo", "metadata": {"name": "d"}, "spec": {"autoDetect": {"podCidrMode": "cilium"}}},
         "spec.autoDetect.podCidrMode", "auto, calico, k8s"),
        ({"apiVersion": API_VERSION, "kind": "EgressEndpointSlice", "metadata": {"name": "s"}, "endpoints": [{"ipv4": "10.0.0.1"}]},
         "endpoints[0].ipv4", "list of strings"),
    ],
)
def test_errors_name_the_field_path(raw: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(FieldError) as err:
        parse_object(raw)
    assert err.value.path == path
    assert fragment in str(err.value)


def test_parse_does_not_mutate_its_input() -> None:
    raw = {"apiVersion": API_VERSION, "kind": "EgressGateway", **FULL["EgressGateway"]}
    before = copy.deepcopy(raw)
    parse_object(raw).to_dict()
    assert raw == before


def test_parse_as_checks_the_kind() -> None:
    raw = {"apiVersion": API_VERSION, "kind": "EgressClusterPolicy", "metadata": {"name": "c"}}
    with pytest.raises(FieldError, match="expected EgressPolicy"):
        parse_as(EgressPolicy, raw)


@pytest.mark.parametrize(("mark", "value"), [("0x26000001", 0x26000001), ("26000001", 0x26000001), ("0xffffffff", 0xFFFFFFFF),
                                             ("0x100000000", None), ("-1", None), ("0x1 -j ACCEPT", None), ("1_0", None)])
def test_a_tunnel_mark_is_32_bit_hexadecimal_as_the_controller_writes_it(mark: str, value: int | None) -> None:
    assert parse_mark(mark) == value
    raw = {"apiVersion": API_VERSION, "kind": "EgressTunnel", "metadata": {"name": "n1"}, "status": {"mark": mark}}
    if value is None:
        with pytest.raises(FieldError) as err:
            parse_object(raw)
        assert err.value.path == "status.mark"
    else:
        assert parse_object(raw).status.fwmark == value  # type: ignore[attr-defined]


@pytest.mark.parametrize(("meta", "path"), [({"name": "Web"}, "metadata.name"), ({"name": "a b"}, "metadata.name"),
                                            ({"name": "p" * 254}, "metadata.name"),
                                            ({"name": "web", "namespace": "a.b"}, "metadata.namespace")])
def test_names_that_the_api_server_would_refuse_are_refused(meta: dict[str, str], path: str) -> None:
    raw = {"apiVersion": API_VERSION, "kind": "EgressPolicy", "metadata": meta, "spec": {"appliedTo": {}}}
    with pytest.raises(FieldError) as err:
        parse_object(raw)
    assert err.value.path == path
