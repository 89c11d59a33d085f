"""Defaulting (/mutate): JSON Patch operations that fill in what users leave out.

- EgressGateway: `ipv4DefaultEIP` / `ipv6DefaultEIP` when empty (deterministic: see
  `choose_default_eip`), and our finalizer on CREATE, appended so user finalizers are kept.
- EgressPolicy / EgressClusterPolicy: `egressGatewayName` from the namespace label
  `spidernet.io/egressgateway-default`, else the cluster-default gateway; `egressIP` defaults.

An object that does not parse gets no patch: validation then names the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from egress_cni.api import semantics
from egress_cni.api.errors import FieldError
from egress_cni.api.model import (
    ALLOCATOR_DEFAULT,
    FINALIZER_GATEWAY,
    EgressClusterPolicy,
    EgressGateway,
    EgressPolicy,
    parse_as,
)
from egress_cni.api.pools import IPAddress, IPPool
from webhook.admission import AdmissionRequest, add
from webhook.config import WebhookConfig
from webhook.view import ClusterView

Patch = list[dict[str, Any]]


def mutate(request: AdmissionRequest, view: ClusterView, config: WebhookConfig) -> Patch:
    if request.operation not in ("CREATE", "UPDATE") or request.obj is None:
        return []
    if request.kind == EgressGateway.KIND:
        return mutate_gateway(request, config)
    if request.kind in (EgressPolicy.KIND, EgressClusterPolicy.KIND):
        return mutate_policy(request, view)
    return []


# --- EgressGateway ------------------------------------------------------------------------------


def choose_default_eip(pool: IPPool, used: IPPool, paired_index: int | None = None) -> IPAddress:
    """The default EIP: the address at `paired_index` when given and free (so a dual-stack
    gateway's v4 and v6 defaults sit at the same position of equally sized pools), else the lowest
    free address, else the lowest address. The reference picks at random; a deterministic choice
    makes `kubectl apply` reproducible and lets users predict the EIP.
    """
    if paired_index is not None and paired_index < pool.count:
        candidate = pool.nth(paired_index)
        if not used.contains(candidate):
            return candidate
    return pool.first_free(used) or pool.nth(0)


def _parse_gateway(raw: Mapping[str, Any] | None) -> EgressGateway | None:
    if raw is None:
        return None
    try:
        return parse_as(EgressGateway, raw)
    except FieldError:
        return None


def mutate_gateway(request: AdmissionRequest, config: WebhookConfig) -> Patch:
    assert request.obj is not None
    gateway, old = _parse_gateway(request.obj), _parse_gateway(request.old)
    if gateway is None:
        return []
    ops: Patch = []
    pools: dict[int, IPPool] = {}
    chosen: dict[int, IPAddress] = {}
    for version, entries, current in ((4, gateway.spec.ippools.ipv4, gateway.spec.ippools.ipv4_default_eip),
                                      (6, gateway.spec.ippools.ipv6, gateway.spec.ippools.ipv6_default_eip)):
        if not entries or not config.family_enabled(version):
            continue
        try:
            pools[version] = IPPool.parse(entries, version)
        except FieldError:
            continue
        if current:
            continue
        kept = (old.spec.ippools.ipv4_default_eip if version == 4 else old.spec.ippools.ipv6_default_eip) if old else ""
        if kept and pools[version].contains(kept):
            chosen[version] = pools[version].nth(pools[version].index_of(kept))  # `kubectl replace` keeps the old default
        else:
            paired = _paired_index(pools, gateway, version)
            chosen[version] = choose_default_eip(pools[version], semantics.allocated_eips(gateway, version), paired)
        ops.append(add(str(chosen[version]), "spec", "ippools", f"ipv{version}DefaultEIP"))
    if request.operation == "CREATE" and isinstance(request.obj.get("metadata"), Mapping):
        finalizers = gateway.metadata.finalizers
        if not finalizers:
            ops.append(add([FINALIZER_GATEWAY], "metadata", "finalizers"))
        elif FINALIZER_GATEWAY not in finalizers:
            ops.append(add(FINALIZER_GATEWAY, "metadata", "finalizers", "-"))
    return ops


def _paired_index(pools: Mapping[int, IPPool], gateway: EgressGateway, version: int) -> int | None:
    """Position of the other family's default EIP, when both pools have the same size."""
    other = 4 if version == 6 else 6
    other_default = gateway.spec.ippools.ipv4_default_eip if other == 4 else gateway.spec.ippools.ipv6_default_eip
    pool, other_pool = pools.get(version), pools.get(other)
    if pool is None or other_pool is None or pool.count != other_pool.count or not other_default:
        return None
    try:
        return other_pool.index_of(other_default)
    except ValueError:
        return None


# --- policies -----------------------------------------------------------------------------------


def default_gateway_name(policy: EgressPolicy, view: ClusterView) -> tuple[str, str]:
    """(gateway name, where it came from) for a policy without egressGatewayName, or ("", "")."""
    labels = None if isinstance(policy, EgressClusterPolicy) else view.namespace_labels(policy.metadata.namespace)
    return semantics.effective_gateway(policy, labels, view.gateways())


def mutate_policy(request: AdmissionRequest, view: ClusterView) -> Patch:
    assert request.obj is not None
    cls = EgressClusterPolicy if request.kind == EgressClusterPolicy.KIND else EgressPolicy
    try:
        policy = parse_as(cls, request.obj)
    except FieldError:
        return []
    if not isinstance(request.obj.get("spec"), Mapping):
        return []  # nothing to patch into; validation says appliedTo is required
    if request.namespace and not policy.metadata.namespace and cls is EgressPolicy:
        # objects with generateName or from `kubectl create -n` may carry the namespace only in the request
        policy = parse_as(cls, {**request.obj, "metadata": {**request.obj.get("metadata", {}), "namespace": request.namespace}})
    ops: Patch = []
    if not policy.spec.egress_gateway_name:
        old_name = ""
        if request.old is not None:
            try:
                old_name = parse_as(cls, request.old).spec.egress_gateway_name
            except FieldError:
                old_name = ""
        name = old_name or default_gateway_name(policy, view)[0]
        if name:
            ops.append(add(name, "spec", "egressGatewayName"))
    raw_eip = (request.obj.get("spec") or {}).get("egressIP")
    if not raw_eip or not any(raw_eip.get(k) for k in ("ipv4", "ipv6", "useNodeIP", "allocatorPolicy")):
        ops.append(add({"allocatorPolicy": ALLOCATOR_DEFAULT, "useNodeIP": False}, "spec", "egressIP"))
    else:
        if not raw_eip.get("allocatorPolicy"):
            ops.append(add(ALLOCATOR_DEFAULT, "spec", "egressIP", "allocatorPolicy"))
        if "useNodeIP" not in raw_eip:
            ops.append(add(False, "spec", "egressIP", "useNodeIP"))
    return ops
