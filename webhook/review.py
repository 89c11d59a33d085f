"""The admission decision: `review(request, view, config, action)` -> AdmissionResponse dict.

Pure: it reads the request and the read-only ClusterView and returns data. A malformed request
is answered (allowed: false, code 400), an unexpected exception too (code 500): the API server
always gets a well-formed response, and with failurePolicy Fail an error never admits an object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from egress_cni.api.errors import FieldError
from egress_cni.api.model import CLUSTER_INFO_NAME, EgressClusterInfo, EgressClusterPolicy, EgressGateway, EgressPolicy, parse_as
from webhook import admission
from webhook.admission import AdmissionRequest, BadRequest, Denial
from webhook.config import WebhookConfig
from webhook.gateway_rules import validate_gateway
from webhook.mutate import mutate
from webhook.policy_rules import validate_policy
from webhook.subnets import check_subnets, schema_denial
from webhook.view import ClusterView

log = logging.getLogger(__name__)

Action = Literal["mutate", "validate"]


@dataclass(frozen=True)
class Outcome:
    """A response plus what the metrics need to know about it."""

    response: dict[str, Any]
    kind: str
    result: str          # allowed | patched | denied | bad-request | error
    reason: str = ""     # the rule id of the first denial


def validate_cluster_info(request: AdmissionRequest, config: WebhookConfig) -> list[Denial]:
    if request.operation == "DELETE":
        if request.name == CLUSTER_INFO_NAME:
            return [Denial("clusterinfo-delete", "metadata.name", request.name,
                           "EgressClusterInfo 'default' is not allowed to be deleted: the agents read the cluster's own "
                           "CIDRs from it; edit its spec instead")]
        return []
    if request.obj is None:
        return []
    try:
        info = parse_as(EgressClusterInfo, request.obj)
    except FieldError as exc:
        return [schema_denial("clusterinfo-schema", exc)]
    # bare IPs are host routes here (the reference's agent silently ignored them)
    return check_subnets(info.spec.extra_cidr, "spec.extraCidr", "clusterinfo-extra-cidr", config, allow_bare_ip=True)


Validator = Callable[[AdmissionRequest, ClusterView, WebhookConfig], list[Denial]]

VALIDATORS: dict[str, Validator] = {
    EgressGateway.KIND: validate_gateway,
    EgressPolicy.KIND: validate_policy,
    EgressClusterPolicy.KIND: validate_policy,
    EgressClusterInfo.KIND: lambda request, _view, config: validate_cluster_info(request, config),
}


def review(raw_request: Any, view: ClusterView, config: WebhookConfig, action: Action) -> Outcome:
    uid = raw_request.get("uid") if isinstance(raw_request, dict) else None
    uid = uid if isinstance(uid, str) else ""
    try:
        request = AdmissionRequest.parse(raw_request)
    except BadRequest as exc:
        return Outcome(admission.error(uid, 400, f"malformed AdmissionReview: {exc}"), "", "bad-request", "bad-request")
    try:
        return _decide(request, view, config, action)
    except Exception:
        log.exception("review failed", extra={"uid": uid, "kind": request.kind, "operation": request.operation})
        return Outcome(admission.error(uid, 500, f"internal error reviewing {request.kind} {request.name!r}; see the webhook logs"),
                       request.kind, "error", "internal-error")


def metadata_only_update(request: AdmissionRequest) -> bool:
    """An UPDATE that leaves spec alone (labels, annotations, finalizers), or of an object already
    being deleted: its spec was reviewed when it was written, and a finalizer removal must never be
    blocked by a rule about other objects."""
    if request.operation != "UPDATE" or request.obj is None or request.old is None:
        return False
    meta = request.obj.get("metadata")
    deleting = isinstance(meta, dict) and bool(meta.get("deletionTimestamp"))
    return deleting or request.obj.get("spec") == request.old.get("spec")


def _decide(request: AdmissionRequest, view: ClusterView, config: WebhookConfig, action: Action) -> Outcome:
    if action == "mutate":
        ops = mutate(request, view, config)
        return Outcome(admission.patched(request.uid, ops), request.kind, "patched" if ops else "allowed")
    if metadata_only_update(request):
        return Outcome(admission.allowed(request.uid), request.kind, "allowed")
    validator = VALIDATORS.get(request.kind)
    found = validator(request, view, config) if validator else []
    denials = [d for d in found if not d.warning]
    if denials:
        return Outcome(admission.denied(request.uid, denials), request.kind, "denied", denials[0].rule)
    return Outcome(admission.allowed(request.uid, [w.text() for w in found if w.warning]), request.kind, "allowed")
