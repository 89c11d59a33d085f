"""Property: whatever AdmissionReview body arrives, the answer is never a 5xx and is always a
well-formed AdmissionReview (uid echoed when there is one, allowed a bool, status with a code,
a decodable JSON Patch when present). Run against the pure review and the real HTTPS server."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress_cni.api import API_VERSION
from tests.webhook.builders import gateway, policy
from tests.webhook.server import Webhook, running_webhook
from webhook.config import WebhookConfig
from webhook.review import review
from webhook.view import MemoryView

KINDS = ["EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo", "EgressTunnel", "Pod"]
SPEC_KEYS = ["ippools", "ipv4", "ipv6", "ipv4DefaultEIP", "nodeSelector", "selector", "matchLabels", "matchExpressions",
             "clusterDefault", "egressGatewayName", "egressIP", "useNodeIP", "allocatorPolicy", "appliedTo", "podSelector",
             "podSubnet", "namespaceSelector", "destSubnet", "priority", "extraCidr", "autoDetect", "finalizers", "key",
             "operator", "values"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.sampled_from(["10.6.168.201", "10.6.168.201-10.6.168.205", "10.0.0.0/8", "10.6.1.7/24", "fd00::/64",
                                     "fd00::1", "default", "rr", "In", "Exists", "", "::", "0.0.0.0/0", "a/b~c"]),
                    st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(SPEC_KEYS) | st.text(max_size=6), inner, max_size=4)),
                    max_leaves=25)


@st.composite
def objects(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(JSON)
    meta = draw(st.fixed_dictionaries({"name": st.sampled_from(["default", "p", "g"]) | SCALARS},
                                      optional={"namespace": st.sampled_from(["default", "team"]) | SCALARS,
                                                "finalizers": JSON, "labels": JSON, "annotations": JSON}))
    return {"apiVersion": draw(st.sampled_from([API_VERSION, "v1"]) | SCALARS), "kind": draw(st.sampled_from(KINDS) | SCALARS),
            "metadata": meta, "spec": draw(JSON), **({"status": draw(JSON)} if draw(st.booleans()) else {})}


VALID = [gateway("g", ["10.6.1.1-10.6.1.3"], ["fd00::1-fd00::3"], default4="10.6.1.1"),
         policy("p", egress_ip={"ipv4": "10.6.168.202"}, dest=["10.0.0.0/8"]),
         policy("c", cluster=True, namespace_selector={"matchLabels": {"a": "b"}}, pod_subnet=["10.244.0.0/16"]),
         {"apiVersion": API_VERSION, "kind": "EgressClusterInfo", "metadata": {"name": "default"},
          "spec": {"autoDetect": {"podCidrMode": "auto"}, "extraCidr": ["10.0.0.0/8"]}}]
EDIT_PATHS = [("spec",), ("spec", "ippools"), ("spec", "ippools", "ipv4"), ("spec", "ippools", "ipv6"),
              ("spec", "ippools", "ipv4DefaultEIP"), ("spec", "nodeSelector", "selector"), ("spec", "clusterDefault"),
              ("spec", "egressIP"), ("spec", "egressIP", "ipv4"), ("spec", "egressIP", "useNodeIP"), ("spec", "appliedTo"),
              ("spec", "appliedTo", "podSelector"), ("spec", "appliedTo", "podSubnet"), ("spec", "destSubnet"),
              ("spec", "priority"), ("spec", "extraCidr"), ("metadata", "finalizers"), ("metadata", "namespace"), ("status",)]


@st.composite
def near_valid(draw: st.DrawFn) -> Any:
    """A valid object with a few fields replaced by arbitrary values: reaches deep into the rules."""
    obj = copy.deepcopy(draw(st.sampled_from(VALID)))
    for path in draw(st.lists(st.sampled_from(EDIT_PATHS), max_size=3)):
        node = obj
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[path[-1]] = draw(JSON)
    return obj


@st.composite
def well_formed(draw: st.DrawFn) -> Any:
    """A structurally valid request around a near-valid object: exercises the rules themselves."""
    obj = draw(near_valid())
    operation = draw(st.sampled_from(["CREATE", "UPDATE", "DELETE"]))
    old = draw(near_valid()) if operation != "CREATE" else None
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name, namespace = meta.get("name"), meta.get("namespace")
    return {"uid": str(draw(st.uuids())), "kind": {"group": "egressgateway.spidernet.io", "version": "v1beta1", "kind": obj["kind"]},
            "operation": operation, "name": name if isinstance(name, str) else "",
            "namespace": namespace if isinstance(namespace, str) else "",
            "object": None if operation == "DELETE" else obj, "oldObject": old}


@st.composite
def arbitrary(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    request = draw(st.fixed_dictionaries(
        {"uid": st.uuids().map(str) | SCALARS},
        optional={"kind": st.fixed_dictionaries({"kind": st.sampled_from(KINDS) | SCALARS}) | JSON,
                  "operation": st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]) | SCALARS,
                  "name": st.sampled_from(["default", "p"]) | SCALARS, "namespace": st.sampled_from(["default", "team"]) | SCALARS,
                  "object": near_valid() | objects(), "oldObject": near_valid() | objects(), "dryRun": SCALARS},
    ))
    return request


def requests_() -> st.SearchStrategy[Any]:
    return st.one_of(well_formed(), well_formed(), well_formed(), arbitrary())


BODIES = st.one_of(requests_().map(lambda r: {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": r}), JSON)
STATE = [gateway(ipv4=["10.6.168.201-10.6.168.205"], default4="10.6.168.201", cluster_default=True),
         gateway("v6", ipv6=["fd00::/64"]), policy("p", egress_ip={"ipv4": "10.6.168.202"})]


def check_response(response: Any, request: Any) -> None:
    assert isinstance(response, dict)
    assert isinstance(response["allowed"], bool)
    assert isinstance(response["uid"], str)
    uid = request.get("uid") if isinstance(request, dict) else None
    if isinstance(uid, str):
        assert response["uid"] == uid
    status = response["status"]
    assert isinstance(status["code"], int) and isinstance(status["message"], str) and isinstance(status["reason"], str)
    assert status["code"] < 500, status
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(response["patch"]))
        assert isinstance(ops, list) and all(op["op"] == "add" and op["path"].startswith("/") for op in ops)


@pytest.mark.unit
@settings(max_examples=400, deadline=None)
@given(request=requests_(), action=st.sampled_from(["mutate", "validate"]))
def test_pure_review_always_answers(request: Any, action: Any) -> None:
    outcome = review(request, MemoryView.of(STATE), WebhookConfig(), action)
    check_response(outcome.response, request)


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    with running_webhook(tmp_path_factory.mktemp("webhook-property"), state=STATE) as running:
        yield running


@pytest.fixture(scope="module")
def session(hook: Webhook) -> Iterator[requests.Session]:
    with hook.session() as s:
        yield s


@pytest.mark.process
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, action=st.sampled_from(["mutate", "validate"]))
def test_server_never_answers_5xx(hook: Webhook, session: requests.Session, body: Any, action: str) -> None:
    resp = session.post(f"{hook.url}/{action}", data=json.dumps(body), timeout=30)
    assert resp.status_code == 200, resp.text
    review_ = resp.json()
    assert review_["apiVersion"] == "admission.k8s.io/v1" and review_["kind"] == "AdmissionReview"
    check_response(review_["response"], body.get("request") if isinstance(body, dict) else None)
