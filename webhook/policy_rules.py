"""Validation of EgressPolicy and EgressClusterPolicy (reference §2.3, with its fixes, plus the
rules between policies in `webhook.conflicts`). DELETE is always allowed."""

from __future__ import annotations

from egress_cni.api import semantics
from egress_cni.api.errors import FieldError
from egress_cni.api.model import (
    ALLOCATORS,
    LABEL_NAMESPACE_DEFAULT_GATEWAY,
    EgressClusterPolicy,
    EgressGateway,
    EgressPolicy,
    parse_as,
)
from egress_cni.api.pools import IPPool
from webhook.admission import AdmissionRequest, Denial
from webhook.config import WebhookConfig
from webhook.conflicts import check_conflicts, check_eip_sharing
from webhook.subnets import check_subnets, schema_denial
from webhook.view import ClusterView

EIP = "spec.egressIP"


def validate_policy(request: AdmissionRequest, view: ClusterView, config: WebhookConfig) -> list[Denial]:
    if request.operation not in ("CREATE", "UPDATE") or request.obj is None:
        return []
    cls = EgressClusterPolicy if request.kind == EgressClusterPolicy.KIND else EgressPolicy
    try:
        policy = _parse(cls, request.obj, request.namespace)
        old = _parse(cls, request.old, request.namespace) if request.operation == "UPDATE" and request.old is not None else None
    except FieldError as exc:
        return [schema_denial("policy-schema", exc)]

    found = _own_fields(policy, config)
    warnings = [d for d in found if d.warning]
    denials = [d for d in found if not d.warning]
    if denials:
        return denials
    if old is not None:
        denials = _immutable(old, policy)
    elif request.operation == "CREATE":
        denials = _against_gateway(policy, view, config)
    if denials:
        return denials
    return warnings + check_eip_sharing(policy, view) + check_conflicts(policy, view)


def _parse(cls: type[EgressPolicy], raw: object, namespace: str) -> EgressPolicy:
    if not isinstance(raw, dict):
        raise FieldError("", raw, "must be an object")
    found = raw.get("metadata")
    meta: dict[str, object] = found if isinstance(found, dict) else {}
    if cls is EgressPolicy and namespace and not meta.get("namespace"):
        raw = {**raw, "metadata": {**meta, "namespace": namespace}}  # the request carries it for generateName objects
    return parse_as(cls, raw)


def _own_fields(policy: EgressPolicy, config: WebhookConfig) -> list[Denial]:
    spec, eip = policy.spec, policy.spec.eip
    denials: list[Denial] = []
    if not spec.egress_gateway_name:
        hint = "" if isinstance(policy, EgressClusterPolicy) else f"label the namespace {LABEL_NAMESPACE_DEFAULT_GATEWAY}=<gateway>, or "
        denials.append(Denial("policy-gateway-name", "spec.egressGatewayName", "",
                              f"is empty and no default applies; name an EgressGateway, {hint}mark one gateway spec.clusterDefault: true"))
    if eip.allocator_policy not in ALLOCATORS:
        denials.append(Denial("policy-allocator", f"{EIP}.allocatorPolicy", eip.allocator_policy, f"must be one of {', '.join(ALLOCATORS)}"))
    if eip.use_node_ip and (eip.ipv4 or eip.ipv6):
        denials.append(Denial("policy-use-node-ip", f"{EIP}.useNodeIP", True,
                              f"cannot be combined with {EIP}.ipv4/ipv6 ({eip.ipv4 or eip.ipv6}); either leave the addresses empty "
                              "or set useNodeIP: false"))
    for version, text in ((4, eip.ipv4), (6, eip.ipv6)):  # the model checked the syntax and family
        if text and not config.family_enabled(version):
            denials.append(Denial("family-not-enabled", f"{EIP}.ipv{version}", text,
                                  f"IPv{version} is not enabled in this installation (EGRESS_ENABLE_IPV{version}=false); leave it empty"))
    denials += _applied_to(policy, config)
    denials += check_subnets(spec.dest_subnet, "spec.destSubnet", "policy-dest-subnet", config, allow_bare_ip=False)
    return denials


def _applied_to(policy: EgressPolicy, config: WebhookConfig) -> list[Denial]:
    applied = policy.spec.applied_to
    selector = applied.pod_selector
    has_selector = selector is not None and not selector.empty
    if has_selector and applied.pod_subnet:
        return [Denial("policy-applied-to", "spec.appliedTo.podSubnet", [c.given for c in applied.pod_subnet],
                       "cannot be used together with spec.appliedTo.podSelector; select pods by labels or by subnet, not both")]
    if not has_selector and not applied.pod_subnet:
        return [Denial("policy-applied-to", "spec.appliedTo", applied.to_dict(),
                       f"must select pods: set podSelector.matchLabels, podSelector.matchExpressions or podSubnet "
                       f"({policy.KIND} never applies to every pod by accident)")]
    return check_subnets(applied.pod_subnet, "spec.appliedTo.podSubnet", "policy-pod-subnet", config, allow_bare_ip=False)


def _immutable(old: EgressPolicy, new: EgressPolicy) -> list[Denial]:
    a, b = old.spec.eip, new.spec.eip
    fields = (
        ("spec.egressGatewayName", old.spec.egress_gateway_name, new.spec.egress_gateway_name),
        (f"{EIP}.useNodeIP", a.use_node_ip, b.use_node_ip),
        (f"{EIP}.ipv4", a.ipv4, b.ipv4),
        (f"{EIP}.ipv6", a.ipv6, b.ipv6),
        (f"{EIP}.allocatorPolicy", a.allocator_policy, b.allocator_policy),
    )
    return [Denial("policy-immutable", path, after, f"is immutable (was {before!r}); delete and recreate the policy to change it")
            for path, before, after in fields if before != after]


def _against_gateway(policy: EgressPolicy, view: ClusterView, config: WebhookConfig) -> list[Denial]:
    name, eip = policy.spec.egress_gateway_name, policy.spec.eip
    gateway = view.gateway(name)
    if gateway is None:
        known = ", ".join(g.metadata.name for g in view.gateways()) or "none yet"
        return [Denial("policy-gateway-missing", "spec.egressGatewayName", name,
                       f"no EgressGateway of that name exists (existing: {known}); create the gateway first")]
    refusal = semantics.gateway_refusal(gateway, policy, view.namespace_labels(policy.metadata.namespace))
    if refusal:
        return [Denial("policy-namespace-not-allowed", "spec.egressGatewayName", name,
                       f"{refusal}; use a gateway that admits this namespace, or ask the cluster admin to widen the selector")]
    pools = _gateway_pools(gateway, config)
    if not eip.use_node_ip and not any(pools.values()):
        return [Denial("policy-gateway-empty", "spec.egressGatewayName", name,
                       f"EgressGateway {name} has no addresses in spec.ippools; add some, or set {EIP}.useNodeIP: true")]
    denials = []
    for version, text in ((4, eip.ipv4), (6, eip.ipv6)):
        if text and not pools[version].contains(text):
            denials.append(Denial("policy-eip-outside-pool", f"{EIP}.ipv{version}", text,
                                  f"is not in the ippools of EgressGateway {name} ({pools[version]}); name one of those addresses"))
    return denials or _pairing(policy, gateway)


def _gateway_pools(gateway: EgressGateway, config: WebhookConfig) -> dict[int, IPPool]:
    return {v: gateway.spec.ippools.pool(v) if config.family_enabled(v) else IPPool(v) for v in (4, 6)}


def _pairing(policy: EgressPolicy, gateway: EgressGateway) -> list[Denial]:
    """A dual-stack EIP is a pair: naming one half means naming its partner too."""
    eip, name = policy.spec.eip, gateway.metadata.name
    d4, d6 = gateway.spec.ippools.ipv4_default_eip, gateway.spec.ippools.ipv6_default_eip
    if d4 and d6 and (eip.ipv4 == d4) != (eip.ipv6 == d6):
        return [Denial("policy-eip-pairing", EIP, {"ipv4": eip.ipv4, "ipv6": eip.ipv6},
                       f"EgressGateway {name}'s default EIPs {d4} and {d6} form a pair; name both or neither")]
    pairs = {(e.ipv4, e.ipv6) for n in gateway.status.node_list for e in n.eips if e.ipv4 and e.ipv6}
    for v4, v6 in pairs:
        if eip.ipv4 == v4 and eip.ipv6 and eip.ipv6 != v6:
            return [Denial("policy-eip-pairing", f"{EIP}.ipv6", eip.ipv6,
                           f"{v4} is allocated paired with {v6} on EgressGateway {name}; set ipv6 to {v6} or pick another ipv4")]
        if eip.ipv6 == v6 and eip.ipv4 and eip.ipv4 != v4:
            return [Denial("policy-eip-pairing", f"{EIP}.ipv4", eip.ipv4,
                           f"{v6} is allocated paired with {v4} on EgressGateway {name}; set ipv4 to {v4} or pick another ipv6")]
    return []
