"""Builders for AdmissionRequests and egress objects used by the webhook tests."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

from egress_cni.api import API_VERSION
from webhook.config import WebhookConfig
from webhook.review import Action, review
from webhook.view import MemoryView


def gateway(name: str = "default", ipv4: list[str] | None = None, ipv6: list[str] | None = None, *,
            default4: str = "", default6: str = "", cluster_default: bool = False,
            selector: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
            eips: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    pools: dict[str, Any] = {}
    if ipv4 is not None:
        pools["ipv4"] = ipv4
    if ipv6 is not None:
        pools["ipv6"] = ipv6
    if default4:
        pools["ipv4DefaultEIP"] = default4
    if default6:
        pools["ipv6DefaultEIP"] = default6
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION, "kind": "EgressGateway",
        "metadata": {"name": name, **({"annotations": annotations} if annotations else {})},
        "spec": {"ippools": pools, "nodeSelector": {"selector": {"matchLabels": {"egressgateway": "true"}} if selector is None else selector}},
    }
    if cluster_default:
        obj["spec"]["clusterDefault"] = True
    if eips:
        obj["status"] = {"nodeList": [{"name": "node-1", "status": "Ready", "eips": eips}]}
    return obj


def policy(name: str = "test", namespace: str = "default", *, gateway_name: str = "default", cluster: bool = False,
           pod_labels: dict[str, str] | None = None, pod_subnet: list[str] | None = None,
           namespace_selector: dict[str, Any] | None = None, dest: list[str] | None = None,
           egress_ip: dict[str, Any] | None = None, priority: int | None = None,
           status_eip: dict[str, str] | None = None) -> dict[str, Any]:
    applied: dict[str, Any] = {}
    if pod_labels is not None:
        applied["podSelector"] = {"matchLabels": pod_labels}
    if pod_subnet is not None:
        applied["podSubnet"] = pod_subnet
    if namespace_selector is not None:
        applied["namespaceSelector"] = namespace_selector
    if pod_labels is None and pod_subnet is None:
        applied["podSelector"] = {"matchLabels": {"app": "test-app"}}
    spec: dict[str, Any] = {"appliedTo": applied}
    if gateway_name:
        spec["egressGatewayName"] = gateway_name
    if dest is not None:
        spec["destSubnet"] = dest
    if egress_ip is not None:
        spec["egressIP"] = egress_ip
    if priority is not None:
        spec["priority"] = priority
    meta: dict[str, Any] = {"name": name} if cluster else {"name": name, "namespace": namespace}
    obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "EgressClusterPolicy" if cluster else "EgressPolicy",
                           "metadata": meta, "spec": spec}
    if status_eip:
        obj["status"] = {"eip": status_eip}
    return obj


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Namespace", "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}}}


def request(obj: dict[str, Any] | None, operation: str = "CREATE", old: dict[str, Any] | None = None,
            kind: str | None = None, name: str | None = None) -> dict[str, Any]:
    source = obj if obj is not None else old
    assert source is not None
    meta = source.get("metadata", {})
    return {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "egressgateway.spidernet.io", "version": "v1beta1", "kind": kind or source["kind"]},
        "operation": operation,
        "name": meta.get("name", "") if name is None else name,
        "namespace": meta.get("namespace", ""),
        "object": copy.deepcopy(obj),
        "oldObject": copy.deepcopy(old),
    }


def run(action: Action, obj: dict[str, Any] | None, *objects: dict[str, Any], operation: str = "CREATE",
        old: dict[str, Any] | None = None, config: WebhookConfig | None = None, name: str | None = None) -> dict[str, Any]:
    req = request(obj, operation, old, name=name)
    response = review(req, MemoryView.of(objects), config or WebhookConfig(), action).response
    assert response["uid"] == req["uid"]
    return response


def validate(obj: dict[str, Any] | None, *objects: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return run("validate", obj, *objects, **kw)


def patch_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["allowed"] is True
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))  # type: ignore[no-any-return]


def mutate(obj: dict[str, Any], *objects: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    return patch_of(run("mutate", obj, *objects, **kw))


def denial(response: dict[str, Any]) -> str:
    assert response["allowed"] is False, response
    assert response["status"]["code"] == 403
    return str(response["status"]["message"])
