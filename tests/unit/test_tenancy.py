"""Which namespaces may use a gateway (spec.namespaceSelector), decided once in api/semantics."""

from __future__ import annotations

from typing import Any

import pytest

from egress_cni.api import API_VERSION
from egress_cni.api.errors import FieldError
from egress_cni.api.model import (
    LABEL_NAMESPACE_DEFAULT_GATEWAY,
    EgressClusterPolicy,
    EgressGateway,
    EgressPolicy,
    parse_as,
)
from egress_cni.api.selectors import LabelSelector
from egress_cni.api.semantics import gateway_admits, gateway_refusal, placement

pytestmark = pytest.mark.unit


def gw(name: str = "gw", selector: Any = None, cluster_default: bool = False, placed: str = "") -> EgressGateway:
    spec: dict[str, Any] = {"ippools": {"ipv4": ["10.6.1.1-10.6.1.9"]}, "nodeSelector": {"selector": {"matchLabels": {"e": "1"}}},
                            "clusterDefault": cluster_default}
    if selector is not None:
        spec["namespaceSelector"] = selector
    raw: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "EgressGateway", "metadata": {"name": name}, "spec": spec}
    if placed:
        raw["status"] = {"nodeList": [{"name": "n1", "eips": [{"ipv4": "10.6.1.1", "policies": [{"name": "p", "namespace": placed}]}]}]}
    return parse_as(EgressGateway, raw)


def pol(namespace: str = "b", gateway_name: str = "gw", status: dict[str, Any] | None = None) -> EgressPolicy:
    cls = EgressPolicy if namespace else EgressClusterPolicy
    meta = {"name": "p", **({"namespace": namespace} if namespace else {})}
    raw: dict[str, Any] = {"apiVersion": API_VERSION, "kind": cls.KIND, "metadata": meta,
                           "spec": {"egressGatewayName": gateway_name, "appliedTo": {"podSelector": {"matchLabels": {"a": "1"}}}}}
    if status:
        raw["status"] = status
    return parse_as(cls, raw)


TEAM_A = {"matchLabels": {"team": "a"}}


def test_absent_selector_admits_every_namespace() -> None:
    assert gw().spec.namespace_selector is None
    assert gateway_admits(gw(), pol("b"), {"team": "b"}) and gateway_refusal(gw(), pol("b"), None) == ""


def test_empty_selector_admits_every_namespace_and_round_trips() -> None:
    g = gw(selector={})
    assert g.spec.namespace_selector == LabelSelector() and gateway_admits(g, pol("b"), {})
    assert g.to_dict()["spec"]["namespaceSelector"] == {}


def test_selector_admits_matching_namespaces_only() -> None:
    g = gw(selector=TEAM_A)
    assert gateway_admits(g, pol("a"), {"team": "a"})
    refusal = gateway_refusal(g, pol("b"), {"team": "b"})
    assert refusal == ('EgressGateway gw admits only the namespaces matching its spec.namespaceSelector "team=a"; '
                       "namespace b (labels kubernetes.io/metadata.name=b, team=b) does not match")


def test_unknown_namespace_labels_are_only_its_name() -> None:
    by_name = gw(selector={"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a"]}]})
    assert gateway_admits(by_name, pol("a"), None) and not gateway_admits(by_name, pol("b"), None)
    assert not gateway_admits(gw(selector=TEAM_A), pol("a"), None)  # fail closed


def test_cluster_policies_are_always_admitted() -> None:
    assert gateway_admits(gw(selector=TEAM_A), pol(""), None)


def test_selector_is_validated_at_parse_naming_the_field() -> None:
    with pytest.raises(FieldError) as err:
        gw(selector={"matchExpressions": [{"key": "team", "operator": "In"}]})
    assert err.value.path == "spec.namespaceSelector.matchExpressions[0].values"
    with pytest.raises(FieldError) as err:
        gw(selector="team=a")
    assert err.value.path == "spec.namespaceSelector"


def test_describe_uses_kubectl_syntax() -> None:
    sel = LabelSelector.parse({"matchLabels": {"team": "a"}, "matchExpressions": [
        {"key": "env", "operator": "In", "values": ["x", "y"]}, {"key": "tier", "operator": "NotIn", "values": ["z"]},
        {"key": "ok", "operator": "Exists"}, {"key": "legacy", "operator": "DoesNotExist"}]}, "s")
    assert sel.describe() == '"team=a,env in (x,y),tier notin (z),ok,!legacy"'
    assert LabelSelector().describe() == "{}"


ON_N1 = {"eip": {"ipv4": "10.6.1.1"}, "node": "n1"}


def test_placement_places_a_refused_policy_nowhere_whatever_its_status() -> None:
    """A policy that got past webhook and controller (a forged or stale status) is served on no node."""
    labels = {"a": {"team": "a"}, "b": {"team": "b"}}
    g = gw(selector=TEAM_A, placed="b")
    assert placement(pol("a", status=ON_N1), [g], labels) == ("n1", {4: "10.6.1.1", 6: None})
    assert placement(pol("b", status=ON_N1), [g], labels) == ("", {4: None, 6: None})
    assert placement(pol("b"), [g], labels) == ("", {4: None, 6: None})  # nor through the nodeList
    assert placement(pol("b", status=ON_N1), [gw(placed="b")], labels)[0] == "n1"  # no selector: as before


@pytest.mark.parametrize("route", ["label", "cluster-default"])
def test_every_route_to_the_gateway_is_checked(route: str) -> None:
    """A bypassing policy without egressGatewayName reaches the gateway through a default."""
    labels: dict[str, dict[str, str]] = {"b": {"team": "b"}}
    if route == "label":
        labels["b"][LABEL_NAMESPACE_DEFAULT_GATEWAY] = "gw"
    g = gw(selector=TEAM_A, cluster_default=route == "cluster-default")
    assert placement(pol("b", gateway_name="", status=ON_N1), [g], labels) == ("", {4: None, 6: None})
