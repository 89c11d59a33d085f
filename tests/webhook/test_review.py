"""The review envelope: EgressClusterInfo rules, malformed requests, internal errors."""

from __future__ import annotations

from typing import Any

import pytest

from tests.webhook.builders import denial, request, validate
from webhook.config import WebhookConfig
from webhook.review import review
from webhook.view import MemoryView

pytestmark = pytest.mark.unit


def info(extra: list[str] | None = None, name: str = "default") -> dict[str, Any]:
    return {"apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressClusterInfo", "metadata": {"name": name},
            "spec": {"autoDetect": {"podCidrMode": "auto", "clusterIP": True, "nodeIP": True}, "extraCidr": extra or []}}


def test_default_cluster_info_cannot_be_deleted() -> None:
    msg = denial(validate(None, operation="DELETE", old=info(), name="default"))
    assert msg.startswith("metadata.name: EgressClusterInfo 'default' is not allowed to be deleted")
    assert validate(None, operation="DELETE", old=info(name="scratch"), name="scratch")["allowed"]


def test_extra_cidr_accepts_bare_ips_and_warns_about_host_bits() -> None:
    assert validate(info(["10.10.0.0/16", "192.168.1.7", "fd00::9"]))["allowed"]
    response = validate(info(["10.10.1.0/16"]))
    assert response["allowed"] and response["warnings"][0].startswith("spec.extraCidr[0]: has host bits set; it is used as 10.10.0.0/16")
    assert "spec.extraCidr[0]: is not a CIDR" in denial(validate(info(["ten"])))


@pytest.mark.parametrize("body", [None, [], "x", {}, {"uid": ""}, {"uid": "u", "kind": {}}, {"uid": "u", "kind": {"kind": "X"}},
                                  {"uid": "u", "kind": {"kind": "X"}, "operation": "CREATE"},
                                  {"uid": "u", "kind": {"kind": "X"}, "operation": "CREATE", "object": 5}])
def test_malformed_requests_get_a_400_response(body: object) -> None:
    out = review(body, MemoryView(), WebhookConfig(), "validate")
    assert out.response["allowed"] is False and out.response["status"]["code"] == 400
    assert out.response["uid"] == (body.get("uid", "") if isinstance(body, dict) else "")


def test_internal_errors_deny_with_500() -> None:
    class Broken(MemoryView):
        def gateways(self) -> Any:
            raise RuntimeError("boom")

    req = request({"apiVersion": "egressgateway.spidernet.io/v1beta1", "kind": "EgressGateway", "metadata": {"name": "g"},
                   "spec": {"clusterDefault": True, "ippools": {"ipv4": ["10.0.0.1"]},
                            "nodeSelector": {"selector": {"matchLabels": {"a": "b"}}}}})
    out = review(req, Broken(), WebhookConfig(), "validate")
    assert out.response["status"]["code"] == 500 and out.result == "error"


def test_unknown_kinds_are_allowed() -> None:
    req = request({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    assert review(req, MemoryView(), WebhookConfig(), "validate").response["allowed"] is True


def test_metadata_only_updates_and_deleting_objects_are_allowed() -> None:
    from tests.webhook.builders import gateway

    first = gateway("first", ["10.0.0.1"], cluster_default=True)
    second = gateway("second", ["10.0.0.1"], cluster_default=True)  # both broken by a race the cache missed
    relabelled = {**second, "metadata": {**second["metadata"], "labels": {"team": "a"}}}
    assert validate(relabelled, first, operation="UPDATE", old=second)["allowed"]
    releasing = {**second, "metadata": {**second["metadata"], "finalizers": [], "deletionTimestamp": "2026-11-22T20:00:00Z"}}
    assert validate(releasing, first, operation="UPDATE", old=second)["allowed"]
    changed = {**second, "spec": {**second["spec"], "ippools": {"ipv4": ["10.0.0.1", "10.0.0.2"]}}}
    assert "already belongs to EgressGateway first" in denial(validate(changed, first, operation="UPDATE", old=second))
