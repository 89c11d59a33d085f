"""Status documents the controller writes (pure), and the JSON merge patch that gets there.

Conditions keep their `lastTransitionTime` while their status does not change, so a steady state
produces no writes at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from egress_cni.api.meta import Condition
from egress_cni.api.model import (
    LABEL_NAMESPACE_DEFAULT_GATEWAY,
    EgressGateway,
    GatewayStatus,
    PolicyStatus,
)
from egress_cni.controller.placement import ASSIGNED, GATEWAY_NOT_FOUND, NO_ELIGIBLE_NODE, Assignment, Placement


def condition(previous: Sequence[Condition], type_: str, ready: bool, reason: str, message: str,
              generation: int, now: str) -> Condition:
    status = "True" if ready else "False"
    old = next((c for c in previous if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status and old.last_transition_time else now
    return Condition(type_, status, reason, message, since, generation)


def policy_status(assignment: Assignment, previous: PolicyStatus, generation: int, now: str) -> PolicyStatus:
    message = assignment.message or (
        f"EIP {' '.join(ip for ip in (assignment.ipv4, assignment.ipv6) if ip) or 'node IP'} on node {assignment.node}")
    ready = condition(previous.conditions, "Ready", assignment.ready, assignment.reason, message, generation, now)
    return PolicyStatus(assignment.ipv4, assignment.ipv6, assignment.node, (ready,), generation)


def gateway_not_found(name: str) -> Assignment:
    if not name:
        return Assignment(reason=GATEWAY_NOT_FOUND, message=(
            "spec.egressGatewayName is empty and no default EgressGateway applies (label the namespace "
            f"{LABEL_NAMESPACE_DEFAULT_GATEWAY}=<gateway> or set spec.clusterDefault on one gateway)"))
    return Assignment(reason=GATEWAY_NOT_FOUND, message=f"EgressGateway {name} does not exist")


def gateway_status(gw: EgressGateway, placed: Placement, now: str) -> GatewayStatus:
    eligible = sum(1 for n in placed.node_list if n.status == "Ready")
    ready = condition(gw.status.conditions, "Ready", eligible > 0, ASSIGNED if eligible else NO_ELIGIBLE_NODE,
                      f"{eligible} of {len(placed.node_list)} selected nodes can carry EIPs",
                      gw.metadata.generation, now)
    return GatewayStatus(placed.node_list, placed.ip_usage, (ready,), gw.metadata.generation)


def merge_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 patch from `current` to `desired` (maps recurse, lists and scalars replace,
    keys missing from `desired` become null)."""
    patch: dict[str, Any] = {}
    for key in current:
        if key not in desired:
            patch[key] = None
    for key, value in desired.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            sub = merge_patch(old, value)
            if sub:
                patch[key] = sub
        elif old != value:
            patch[key] = value
    return patch
